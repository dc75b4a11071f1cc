"""Labelled datasets: file names (or a CSV manifest) -> clips with emotion and speaker.

A reader is chosen per file from its name. Labels map onto serq's 8 emotions; a
label with no counterpart (EmoDB's boredom, say) is skipped and counted, never
mislabelled.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from serq.errors import DatasetError
from serq.files import audio_files
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
    if m := _TESS.match(stem):
        return _TESS_LABELS.get(m.group(3).lower()), f"tess:{m.group(1)}", "tess"
    return None


def _unmapped_name(path: Path) -> str:
    stem = path.stem
    if m := _EMODB.match(stem):
        return _EMODB_NAMES[m.group(3)]
    parts = re.split(r"[_-]", stem)
    return parts[2] if len(parts) > 2 else stem


def scan(source: str | Path) -> Dataset:
    """Read a directory (recursively, names parsed) or a CSV manifest ``path,label[,speaker]``.

    Raises :class:`DatasetError` if the source is missing or yields no usable clip.
    """
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"dataset not found: {source}")
    dataset = read_manifest(source) if source.is_file() else _scan_dir(source)
    if not dataset.clips:
        raise DatasetError(f"no labelled audio clips in {source} (skipped: {counts(dataset.skipped)})")
    return dataset


def _scan_dir(root: Path) -> Dataset:
    clips: list[Clip] = []
    skipped: Counter = Counter()
    for path in audio_files(root):
        parsed = parse_name(path)
        if parsed is None:
            skipped["unrecognised file name"] += 1
        elif parsed[0] is None:
            skipped[f"unmapped label: {_unmapped_name(path)}"] += 1
        else:
            clips.append(Clip(path, *parsed))
    return Dataset(clips, skipped)


def read_manifest(path: Path) -> Dataset:
    """CSV with a header ``path,label[,speaker]``; paths relative to the manifest's folder."""
    clips: list[Clip] = []
    skipped: Counter = Counter()
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: a manifest needs a header with 'path' and 'label' (and optionally 'speaker')")
        for row in reader:
            label = (row.get("label") or "").strip().lower()
            if label not in EMOTIONS:
                skipped[f"unmapped label: {label or '(empty)'}"] += 1
                continue
            clip_path = (path.parent / row["path"]).resolve()
            speaker = (row.get("speaker") or "").strip() or f"file:{clip_path.name}"
            clips.append(Clip(clip_path, label, f"manifest:{speaker}", "manifest"))
    return Dataset(clips, skipped)
