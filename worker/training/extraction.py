"""Feature extraction over a dataset: parallel, cached, with progress.

The cache is keyed by the file's content hash and :data:`FEATURE_VERSION`, so a
renamed file is still a hit, an edited file is a miss, and a new feature layout
never reads old vectors. Entries are plain ``.npy`` arrays (no pickle).

A *perturbation* makes one copy of every clip before its features are taken: a
speed copy (:class:`Speed`), a channel-augmented copy (:class:`Channel`, see
:mod:`.augment`) or an evaluation condition (:class:`.conditions.Condition` via
:class:`.conditions.Conditioned`). Each has a ``key`` (its cache folder beside the clean
vectors) and ``apply(samples, digest)``, deterministic given the clip's content.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import soxr
from joblib import Parallel, delayed

from serq.errors import AudioError
from serq.labels import in_canonical_order
from serq.schemas import Hyperparameters
from serq.worker.engine.audio import ANALYSIS_RATE, decode
from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION, extract, waveform_speech_level
from serq.worker.training.datasets import Clip, Dataset, read_clip

#: Largest training file read when the caller names no limit (``SERQ_TRAIN_MAX_FILE_BYTES``'s default).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

#: ``progress(done, total)``, called from the parent process as results arrive.
Progress = Callable[[int, int], None]


class FeatureCache:
    """Feature vectors on disk under ``root/<version>/ab/<sha256>.npy``.

    ``version`` and ``width`` default to serq's layout; another recipe (the seed's,
    in ``bench/``) passes its own, so the two never read each other's vectors.
    """

    def __init__(self, root: str | Path, version: str = FEATURE_VERSION, width: int | None = None):
        self.root = Path(root) / version
        self.width = len(FEATURE_NAMES) if width is None else width

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        path = self._path(digest)
        try:
            vec = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return vec if vec.shape == (self.width,) else None

    def put(self, digest: str, vec: np.ndarray) -> None:
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: concurrent trainers never read a half-written file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, vec, allow_pickle=False)
        os.replace(tmp, path)


def perturb_speed(samples: np.ndarray, speed: float, rate: int = ANALYSIS_RATE) -> np.ndarray:
    """Play ``samples`` ``speed`` times faster (tempo and pitch together), shape ``(~n / speed,)``.

    Speed perturbation (Ko et al., 2015) makes training speakers sound like other
    vocal tracts: a cheap way to generalise to speakers the model never heard.
    """
    if speed == 1.0:
        return samples
    return soxr.resample(samples, int(round(rate * speed)), rate, quality="HQ").astype(np.float32, copy=False)


class Perturbation(Protocol):
    """One copy of every clip: ``key`` names its cache folder, ``apply`` makes it (picklable: it goes to workers)."""

    @property
    def key(self) -> str: ...

    def apply(self, samples: np.ndarray, digest: str) -> np.ndarray: ...


@dataclass(frozen=True)
class Speed:
    """The clip played ``factor`` times faster (:func:`perturb_speed`)."""

    factor: float

    @property
    def key(self) -> str:
        return f"speed{self.factor:g}"

    def apply(self, samples: np.ndarray, digest: str) -> np.ndarray:
        return perturb_speed(samples, self.factor)


@dataclass(frozen=True)
class Channel:
    """Channel-augmented copy ``index`` (:func:`.augment.channel_copy`), rooms simulated into ``rooms``.

    With ``speaker``, the copy of that speaker's clips, all through one channel
    (:func:`.augment.speaker_channel_copy`): the speaker-profile path's channel copies,
    cached apart per speaker copy.
    """

    index: int
    rooms: str
    speaker: str | None = None

    @property
    def key(self) -> str:
        from .augment import AUGMENT_VERSION  # lazy: audiomentations is the train extra

        if self.speaker is None:
            return f"{AUGMENT_VERSION}-{self.index}"
        return f"{AUGMENT_VERSION}-speaker{self.index}-{hashlib.sha256(self.speaker.encode()).hexdigest()[:12]}"

    def apply(self, samples: np.ndarray, digest: str) -> np.ndarray:
        from .augment import channel_copy, speaker_channel_copy  # lazy: the train extra

        if self.speaker is None:
            return channel_copy(samples, digest, self.index, Path(self.rooms))
        return speaker_channel_copy(samples, self.speaker, self.index, Path(self.rooms))


def rooms_folder(cache_dir: str | Path | None) -> Path:
    """Where the training chain's simulated rooms live (built once; under the cache, else the temp dir)."""

    from .augment import AUGMENT_VERSION, room_impulse_responses  # lazy: the train extra

    root = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "serq"
    return room_impulse_responses(root / f"rooms-{AUGMENT_VERSION}")


def perturbations_for(*recipes: Hyperparameters, cache_dir: str | Path | None = None) -> list[Perturbation]:
    """The copies the ``recipes`` train on (their union, in order): speed copies, then channel copies."""
    speeds: list[float] = []
    for hp in recipes:
        speeds += [s for s in hp.augment_speeds if s not in speeds]
    channel = max((hp.channel_copies for hp in recipes), default=0)
    out: list[Perturbation] = [Speed(s) for s in speeds]
    if channel:
        rooms = str(rooms_folder(cache_dir))
        out += [Channel(i, rooms) for i in range(channel)]
    return out


def recipe_keys(hp: Hyperparameters) -> list[str]:
    """Keys of the copies recipe ``hp`` trains on (what :meth:`TrainingSet.copies` picks)."""
    from .augment import AUGMENT_VERSION  # lazy: the train extra

    return [Speed(s).key for s in hp.augment_speeds] + [f"{AUGMENT_VERSION}-{i}" for i in range(hp.channel_copies)]


def _extract_one(path: Path, max_seconds: float | None, perturbation: Perturbation | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str | None, np.ndarray | None, str | None]:
    """``(content sha256, features, None)``, or ``(digest or None, None, why)`` for an unusable file."""
    try:
        data = read_clip(path, max_bytes)  # regular files only, at most max_bytes: never blocks, never floods
    except AudioError as exc:
        return None, None, f"{exc.code}: {exc}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        audio = decode(data, max_bytes=max(len(data), 1), max_seconds=max_seconds)
        samples = audio.samples if perturbation is None else perturbation.apply(audio.samples, digest)
        return digest, extract(samples, audio.sample_rate), None
    except AudioError as exc:
        return digest, None, f"{exc.code}: {exc}"


def extract_clips(
    clips: Sequence[Clip],
    cache_dir: str | Path | None,
    *,
    n_jobs: int = -1,
    max_seconds: float | None = 60.0,
    progress: Progress | None = None,
    perturbation: Perturbation | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Feature matrix for ``clips`` (each first through ``perturbation``, when given).

    A file over ``max_bytes`` or ``max_seconds``, or not a regular file, is left out with
    its reason. ``progress`` is called after every file: a job's time limit and
    cancellation are checked there (it may raise, which stops the extraction).

    Returns:
        ``(X, ok, errors)``: ``X`` shape ``(n_ok, len(FEATURE_NAMES))`` for the clips
        where ``ok`` (bool, shape ``(len(clips),)``) is true; ``errors`` maps the
        path of each unusable clip to why.
    """
    version = FEATURE_VERSION if perturbation is None else f"{FEATURE_VERSION}-{perturbation.key}"
    cache = FeatureCache(cache_dir, version=version) if cache_dir else None
    total = len(clips)
    vectors: list[np.ndarray | None] = [None] * total
    errors: dict[str, str] = {}
    todo: list[int] = []
    for i, clip in enumerate(clips):
        digest = file_digest(clip.path, max_bytes) if cache else None
        hit = cache.get(digest) if digest else None
        if hit is not None:
            vectors[i] = hit
        else:
            todo.append(i)
    done = total - len(todo)
    if progress:
        progress(done, total)
    if todo:
        jobs = 1 if len(todo) < 16 else n_jobs
        results = Parallel(n_jobs=jobs, return_as="generator", batch_size=8)(
            delayed(_extract_one)(clips[i].path, max_seconds, perturbation, max_bytes) for i in todo
        )
        for i, (digest, vec, error) in zip(todo, results):
            if vec is not None:
                vectors[i] = vec
                if cache and digest:
                    cache.put(digest, vec)
            else:
                errors[str(clips[i].path)] = error or "unknown error"
            done += 1
            if progress:
                progress(done, total)
    ok = np.array([v is not None for v in vectors], dtype=bool)
    matrix = np.stack([v for v in vectors if v is not None]) if ok.any() else np.zeros((0, len(FEATURE_NAMES)), np.float32)
    return matrix, ok, errors


def _level_one(path: Path, max_seconds: float | None, perturbation: Perturbation | None,
               max_bytes: int) -> tuple[str | None, float]:
    """``(content sha256, speech level in dB)``; NaN for a silent or unusable file."""
    try:
        data = read_clip(path, max_bytes)
        digest = hashlib.sha256(data).hexdigest()
        audio = decode(data, max_bytes=max(len(data), 1), max_seconds=max_seconds)
    except AudioError:
        return None, float("nan")
    samples = audio.samples if perturbation is None else perturbation.apply(audio.samples, digest)
    level = waveform_speech_level(samples)
    return digest, float("nan") if level is None else level


def extract_levels(clips: Sequence[Clip], cache_dir: str | Path | None, *, perturbation: Perturbation | None = None,
                   n_jobs: int = -1, max_seconds: float | None = 60.0, max_bytes: int = DEFAULT_MAX_BYTES
                   ) -> np.ndarray:
    """Each clip's speech level in dB (:func:`serq.worker.engine.features.speech_level`), after
    ``perturbation`` when given: shape ``(len(clips),)``, NaN for a silent or unreadable clip.

    Only the speaker-profile path reads it (relative to the speaker's level); cached beside the
    feature vectors under ``<version>[-<perturbation>]-level``.
    """
    version = FEATURE_VERSION if perturbation is None else f"{FEATURE_VERSION}-{perturbation.key}"
    cache = FeatureCache(cache_dir, version=f"{version}-level", width=1) if cache_dir else None
    out = np.full(len(clips), np.nan)
    todo = []
    for i, clip in enumerate(clips):
        digest = file_digest(clip.path, max_bytes) if cache else None
        hit = cache.get(digest) if digest else None
        if hit is not None:
            out[i] = float(hit[0])
        else:
            todo.append(i)
    if todo:
        jobs = 1 if len(todo) < 16 else n_jobs
        results = Parallel(n_jobs=jobs, return_as="generator", batch_size=16)(
            delayed(_level_one)(clips[i].path, max_seconds, perturbation, max_bytes) for i in todo)
        for i, (digest, level) in zip(todo, results):
            out[i] = level
            if cache and digest:
                cache.put(digest, np.array([level]))
    return out


def extract_training_set(
    clips: Sequence[Clip],
    cache_dir: str | Path | None,
    perturbations: Sequence[Perturbation] = (),
    *,
    n_jobs: int = -1,
    max_seconds: float | None = 60.0,
    progress: Progress | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[np.ndarray, np.ndarray, dict[str, str], list[np.ndarray]]:
    """:func:`extract_clips` plus one perturbed copy of the matrix per entry of ``perturbations``.

    Returns ``(X, ok, errors, augmented)``; each ``augmented[i]`` has the rows of ``X``
    (same clips, same order). Progress counts every copy.
    """
    total = len(clips) * (len(perturbations) + 1)

    def stage(offset: int) -> Progress | None:
        return (lambda done, _n: progress(offset + done, total)) if progress else None

    X, ok, errors = extract_clips(clips, cache_dir, n_jobs=n_jobs, max_seconds=max_seconds, progress=stage(0),
                                  max_bytes=max_bytes)
    original = np.zeros((len(clips), X.shape[1]), np.float32)
    original[ok] = X
    augmented = []
    for i, perturbation in enumerate(perturbations, start=1):
        A, ok_a, _ = extract_clips(clips, cache_dir, n_jobs=n_jobs, max_seconds=max_seconds,
                                   progress=stage(i * len(clips)), perturbation=perturbation, max_bytes=max_bytes)
        # Align with X's rows; a clip that fails only when perturbed keeps its original row.
        full = original.copy()
        full[ok_a] = A
        augmented.append(full[ok])
    return X, ok, errors, augmented


@dataclass(frozen=True)
class TrainingSet:
    """A dataset's readable clips as training data: row ``i`` of ``X``, ``y`` and ``groups`` is ``clips[i]``.

    ``augmented`` maps a perturbation's key (``speed0.9``, ``chan-1-0``...) to that copy
    of ``X`` (same rows); ``skipped`` counts files left out, by reason (the dataset's,
    plus unreadable audio).
    """

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    clips: list[Clip]
    augmented: dict[str, np.ndarray]
    skipped: dict[str, int]
    #: Speech level per row in dB (NaN: silent), and per copy: only when asked for (the speaker path reads it).
    levels: np.ndarray | None = None
    augmented_levels: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The labels present, in serq's canonical order."""
        return in_canonical_order(sorted(set(self.y)))

    def copies(self, hp: Hyperparameters) -> list[np.ndarray]:
        """The perturbed copies recipe ``hp`` trains on (speed, then channel copies), those that were extracted."""
        return [self.augmented[k] for k in recipe_keys(hp) if k in self.augmented]

    def copy_levels(self, hp: Hyperparameters) -> list[np.ndarray] | None:
        """The speech levels of :meth:`copies` (same order), or ``None`` when levels were not extracted."""
        if self.levels is None:
            return None
        return [self.augmented_levels[k] for k in recipe_keys(hp) if k in self.augmented]


def training_set(
    dataset: Dataset,
    cache_dir: str | Path | None,
    recipes: Sequence[Hyperparameters] = (),
    *,
    n_jobs: int = -1,
    max_seconds: float | None = 60.0,
    progress: Progress | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    levels: bool = False,
    per_speaker_channels: bool = False,
) -> TrainingSet:
    """Extract (cached) ``dataset`` and the perturbed copies the ``recipes`` train on into a :class:`TrainingSet`
    (``levels``: also every clip's and copy's speech level, for the speaker-profile path;
    ``per_speaker_channels``: channel copies drawn per speaker (:class:`Channel` with ``speaker``), the speaker
    path's, under the same keys as the per-clip ones)."""
    perturbations = perturbations_for(*recipes, cache_dir=cache_dir)
    channels = [p for p in perturbations if isinstance(p, Channel)] if per_speaker_channels else []
    per_clip = [p for p in perturbations if p not in channels]
    X, ok, errors, copies = extract_training_set(dataset.clips, cache_dir, per_clip, n_jobs=n_jobs,
                                                 max_seconds=max_seconds, progress=progress, max_bytes=max_bytes)
    clips = [c for c, good in zip(dataset.clips, ok) if good]
    for channel in channels:
        copies.append(_per_speaker(clips, X, channel, cache_dir, n_jobs=n_jobs, max_seconds=max_seconds,
                                   max_bytes=max_bytes))
    perturbations = per_clip + channels
    skipped = dict(dataset.skipped)
    for reason in errors.values():  # by code: "unreadable audio (too_large)", "... (too_long)", "... (bad_audio)"
        key = f"unreadable audio ({reason.split(':', 1)[0]})"
        skipped[key] = skipped.get(key, 0) + 1
    level, copy_levels = None, {}
    if levels:
        kw = {"n_jobs": n_jobs, "max_seconds": max_seconds, "max_bytes": max_bytes}
        level = extract_levels(clips, cache_dir, **kw)
        copy_levels = {p.key: extract_levels(clips, cache_dir, perturbation=p, **kw) for p in per_clip}
        for channel in channels:
            copy_levels[channel.key] = _per_speaker(clips, level, channel, cache_dir, levels=True, **kw)
    return TrainingSet(X=X, y=np.array([c.label for c in clips]), groups=np.array([c.speaker for c in clips]),
                       clips=clips, augmented={p.key: A for p, A in zip(perturbations, copies)}, skipped=skipped,
                       levels=level, augmented_levels=copy_levels)


def _per_speaker(clips: list[Clip], original: np.ndarray, channel: Channel, cache_dir, *, levels: bool = False,
                 **kw) -> np.ndarray:
    """Channel copy ``channel.index`` of ``clips``, each speaker's clips through one channel
    (:class:`Channel` with ``speaker``): feature rows, or speech levels with ``levels``; aligned with ``original``,
    whose row a clip keeps when its copy fails."""
    out = original.copy()
    speakers = np.array([c.speaker for c in clips])
    for speaker in sorted(set(speakers.tolist())):
        rows = np.flatnonzero(speakers == speaker)
        mine = [clips[i] for i in rows]
        perturbation = Channel(channel.index, channel.rooms, speaker)
        if levels:
            out[rows] = extract_levels(mine, cache_dir, perturbation=perturbation, **kw)
        else:
            A, ok, _ = extract_clips(mine, cache_dir, perturbation=perturbation, **kw)
            out[rows[ok]] = A
    return out


_digest_memo: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> str | None:
    """sha256 of a regular file's content, memoised per (path, size, mtime) within this process;
    ``None`` for a file :func:`read_clip` refuses (its extraction then says why)."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digest_memo:
        try:
            _digest_memo[key] = hashlib.sha256(read_clip(path, max_bytes)).hexdigest()
        except AudioError:
            return None
    return _digest_memo[key]
