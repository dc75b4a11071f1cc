"""Labelled datasets: file names (or a CSV manifest) -> clips with emotion and speaker.

A reader is chosen per file from its name. Labels map onto serq's 8 emotions; a
label with no counterpart (EmoDB's boredom, say) is skipped and counted, never
mislabelled.

Only regular files are ever opened (:func:`read_clip`): a FIFO or a device named
``x.wav`` never blocks or floods the trainer. A manifest row naming a missing or
non-regular file is a :class:`DatasetError`; a scanned directory lists regular files
only (:func:`serq.files.audio_files`).
"""

from __future__ import annotations

import csv
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from serq.errors import AudioError, DatasetError, TooLarge
from serq.files import FileRefused, audio_files, read_regular
from serq.labels import EMOTIONS
from serq.text import counts


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    speaker: str
    corpus: str


@dataclass
class Dataset:
    clips: list[Clip]
    #: reason -> count of files left out (``"unmapped label: boredom"``, ``"unrecognised name"``...).
    skipped: Counter = field(default_factory=Counter)

    @property
    def speakers(self) -> list[str]:
        return sorted({c.speaker for c in self.clips})

    def summary(self) -> dict:
        return {
            "clips": len(self.clips),
            "speakers": len(self.speakers),
            "labels": dict(sorted(Counter(c.label for c in self.clips).items())),
            "corpora": dict(Counter(c.corpus for c in self.clips)),
            "skipped": dict(self.skipped),
        }

    def training_summary(self, used: list[Clip], path: str) -> dict:
        """What a model was fitted on (``ModelMetadata.training_data``): this dataset's summary, with
        the clips actually ``used`` and their speaker ids, recorded so `serq evaluate` can leave
        those speakers out (honest by default)."""
        speakers = sorted({c.speaker for c in used})
        return self.summary() | {"path": path, "clips": len(used), "speakers": len(speakers), "speaker_ids": speakers}

    def only_speakers(self, speakers: list[str]) -> "Dataset":
        """Only clips of ``speakers``: full ids (``ravdess:03``) or the part after the colon (``03``)."""
        wanted = {s.strip() for s in speakers if s.strip()}
        keep = [c for c in self.clips if c.speaker in wanted or c.speaker.split(":", 1)[-1] in wanted]
        skipped = Counter(self.skipped)
        if len(keep) < len(self.clips):
            skipped["speaker not selected"] += len(self.clips) - len(keep)
        return Dataset(keep, skipped)

    def restrict(self, emotions: tuple[str, ...]) -> "Dataset":
        """Only clips whose label is in ``emotions`` (the rest counted as skipped)."""
        keep = [c for c in self.clips if c.label in emotions]
        skipped = Counter(self.skipped)
        dropped = len(self.clips) - len(keep)
        if dropped:
            skipped["emotion not selected"] += dropped
        return Dataset(keep, skipped)


# RAVDESS: 03-01-EE-II-SS-RR-AA (modality, channel, emotion, intensity, statement, repetition, actor)
_RAVDESS = re.compile(r"^(\d\d)-(\d\d)-(0[1-8])-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
# CREMA-D: 1001_DFA_ANG_XX
_CREMA = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_CREMA_LABELS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
# TESS: OAF_back_angry, YAF_dog_ps
_TESS = re.compile(r"^([OY]AF)_([A-Za-z]+)_([A-Za-z]+)$")
_TESS_LABELS = {"angry": "angry", "disgust": "disgust", "fear": "fearful", "happy": "happy",
                "neutral": "neutral", "ps": "surprised", "sad": "sad", "surprised": "surprised"}
# EmoDB: 03a01Fa (speaker 2 digits, text 3, emotion letter, version)
_EMODB = re.compile(r"^(\d\d)([a-z]\d\d)([WLEAFTN])([a-z])$")
_EMODB_LABELS = {"W": "angry", "L": None, "E": "disgust", "A": "fearful", "F": "happy", "T": "sad", "N": "neutral"}
_EMODB_NAMES = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness", "N": "neutral"}


# TurEV-DB: <Emotion>/<speaker>_<code>_<word>, e.g. Angry/1157_kz_acik (the folder carries the label)
_TUREV = re.compile(r"^(\d{4})_[a-z]+_[^_]+$")
_TUREV_LABELS = {"Angry": "angry", "Calm": "calm", "Happy": "happy", "Sad": "sad"}


def parse_name(path: Path) -> tuple[str | None, str, str] | None:
    """``(label or None if unmapped, speaker, corpus)`` from a file name, or ``None`` if no scheme fits.

    >>> parse_name(Path("03-01-05-02-01-01-12.flac"))
    ('angry', 'ravdess:12', 'ravdess')
    """
    stem = path.stem
    if m := _RAVDESS.match(stem):
        return EMOTIONS[int(m.group(3)) - 1], f"ravdess:{m.group(7)}", "ravdess"
    if m := _CREMA.match(stem):
        return _CREMA_LABELS.get(m.group(3)), f"crema-d:{m.group(1)}", "crema-d"
    if m := _EMODB.match(stem):
        return _EMODB_LABELS[m.group(3)], f"emodb:{m.group(1)}", "emodb"
    if (m := _TUREV.match(stem)) and path.parent.name in _TUREV_LABELS:
        return _TUREV_LABELS[path.parent.name], f"turev:{m.group(1)}", "turev"
    if m := _TESS.match(stem):
        return _TESS_LABELS.get(m.group(3).lower()), f"tess:{m.group(1)}", "tess"
    return None


def _unmapped_name(path: Path) -> str:
    stem = path.stem
    if m := _EMODB.match(stem):
        return _EMODB_NAMES[m.group(3)]
    parts = re.split(r"[_-]", stem)
    return parts[2] if len(parts) > 2 else stem


# --- reading files: regular ones only, bounded ------------------------------------------------------


class NotRegular(AudioError):
    """The path is a FIFO, a device, a socket or a directory: never opened as audio."""

    code = "bad_audio"


def shown(path: Path, roots: list[Path] | None) -> str:
    """``path`` as messages, results, cards and events show it: relative to the data root holding it
    (a trainer never publishes where its roots are), else as it is."""
    for root in roots or ():
        if path == root:
            return "."
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


def regular_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable regular file (``"missing"``, ``"not a regular file"``...), or ``None``."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks: what an open would reach
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc.__class__.__name__})"
    return None if stat.S_ISREG(mode) else "not a regular file"


def read_clip(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, at most ``max_bytes``: :class:`TooLarge` beyond, :class:`NotRegular` for
    a FIFO/device/directory (opened non-blocking and checked on the open descriptor, so a file
    swapped for a FIFO after the scan cannot block either), :class:`AudioError` if unreadable."""
    try:
        return read_regular(path, max_bytes)
    except FileRefused as exc:
        if exc.reason == "not regular":
            raise NotRegular(f"{path.name}: not a regular file") from None
        if exc.reason == "too large":
            raise TooLarge(f"{path.name}: {exc.size} bytes exceeds {max_bytes} (SERQ_TRAIN_MAX_FILE_BYTES)"
                           if exc.size is not None else
                           f"{path.name}: more than {max_bytes} bytes (SERQ_TRAIN_MAX_FILE_BYTES)") from None
        raise AudioError(f"{path.name}: cannot be opened ({exc.detail})") from None


def inside(real: Path, roots: list[Path]) -> bool:
    """Whether the resolved path ``real`` is one of ``roots`` or lies under one."""
    return any(real == root or real.is_relative_to(root) for root in roots)


def scan(source: str | Path, *, shown_as: str | None = None, roots: list[Path] | None = None) -> Dataset:
    """Read a directory (recursively, names parsed) or a CSV manifest ``path,label[,speaker]``.

    Raises :class:`DatasetError` if the source is missing or yields no usable clip, or if a
    manifest row names a missing or non-regular file, or one outside ``roots`` (when given).
    Messages name the dataset as ``shown_as`` (default: the path), so a trainer can keep
    its data roots out of them.
    """
    source = Path(source)
    name = shown_as or str(source)
    if not source.exists():
        raise DatasetError(f"dataset not found: {name}")
    if source.is_file():
        dataset = read_manifest(source, shown_as=name, roots=roots)
    elif source.is_dir():
        dataset = _scan_dir(source)
    else:
        raise DatasetError(f"dataset {name}: neither a directory nor a manifest file")
    if not dataset.clips:
        raise DatasetError(f"no labelled audio clips in {name} (skipped: {counts(dataset.skipped)})")
    return dataset


def _scan_dir(root: Path) -> Dataset:
    clips: list[Clip] = []
    skipped: Counter = Counter()
    for path in audio_files(root):  # regular files only (is_file): FIFOs and devices are not even listed
        parsed = parse_name(path)
        if parsed is None:
            skipped["unrecognised file name"] += 1
        elif parsed[0] is None:
            skipped[f"unmapped label: {_unmapped_name(path)}"] += 1
        else:
            clips.append(Clip(path, *parsed))
    return Dataset(clips, skipped)


#: Largest manifest read (a CSV row is ~100 bytes: a million rows).
MAX_MANIFEST_BYTES = 100 * 1024 * 1024


def read_manifest(path: Path, *, shown_as: str | None = None, roots: list[Path] | None = None) -> Dataset:
    """CSV with a header ``path,label[,speaker]``; paths relative to the manifest's folder.

    Every row with a known label must name an existing regular file inside ``roots`` (when
    given; checked first, so nothing outside them is even looked at): a :class:`DatasetError`
    naming the row otherwise, since a manifest that points nowhere is a broken dataset.
    """
    name = shown_as or str(path)
    clips: list[Clip] = []
    skipped: Counter = Counter()
    try:
        text = read_clip(path, MAX_MANIFEST_BYTES).decode("utf-8-sig")
    except (AudioError, UnicodeDecodeError) as exc:
        raise DatasetError(f"manifest {name}: {exc.__class__.__name__}: not a readable UTF-8 CSV file") from None
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
        raise DatasetError(f"{name}: a manifest needs a header with 'path' and 'label' (and optionally 'speaker')")
    for line, row in enumerate(reader, start=2):
        label = (row.get("label") or "").strip().lower()
        if label not in EMOTIONS:
            skipped[f"unmapped label: {label or '(empty)'}"] += 1
            continue
        try:
            clip_path = (path.parent / (row.get("path") or "")).resolve()
        except (OSError, ValueError, RuntimeError) as exc:
            raise DatasetError(f"{name}, line {line}: not a usable path ({exc.__class__.__name__})") from None
        if roots is not None and not inside(clip_path, roots):
            raise DatasetError(f"{name}, line {line}: the path {str(row.get('path'))[:200]!r} lies outside the "
                               "data roots")
        problem = regular_problem(clip_path) if row.get("path") else "empty"
        if problem:
            raise DatasetError(f"{name}, line {line}: the path {str(row.get('path'))[:200]!r} is {problem}")
        speaker = (row.get("speaker") or "").strip() or f"file:{clip_path.name}"
        clips.append(Clip(clip_path, label, f"manifest:{speaker}", "manifest"))
    return Dataset(clips, skipped)
