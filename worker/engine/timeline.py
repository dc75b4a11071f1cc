"""Emotion timelines of long recordings, in bounded memory, locally or chunk by chunk.

The pipeline, all at :data:`RATE` and on a 10 ms frame grid:

1. **Voice activity** (:meth:`TimelineProcessor._vad`): frame energy against a
   tracked noise floor, with hysteresis (a segment opens above the *on* threshold
   and stays open while frames exceed the lower *off* threshold); a pause of up to
   ``max_pause_s`` stays inside a segment, a longer one closes it.
2. **Windows** of ``window_s`` every ``hop_s`` over each segment (the last one
   aligned to the segment's end), classified with the engine
   (:func:`window_probabilities`: the same features and model as ``serq predict``).
3. **Smoothing**: a window's label is the majority label of the three windows
   nearest it (:func:`decide`), so one noisy window never flips the label; its
   probabilities are the per-class median of it and its neighbours (:func:`smooth`).
4. **Merging** runs of one label into :class:`~serq.schemas.TimelineSegment`.

:class:`TimelineProcessor` does all of it incrementally: ``feed(samples)``
returns the segments that became final, and its whole state between two calls
is a small :class:`~serq.schemas.TimelineStreamState` plus the audio tail from
``state.keep_from`` (at most a window, a hop and a pause). The local command
feeds it file blocks (:func:`serq.audiofile.read_blocks`); over the broker a client carries the
state between chunks (``worker/handlers/timeline.py``), so a stream can hop
between workers and still give exactly the local result. A state that comes back
from a client is trusted only once its seal verifies (:func:`seal_state`,
:func:`sealed_by`) and its fields fit together (:func:`check_state`); even then a
chunk classifies only windows that lie inside the audio it holds, so the work of a
chunk is bounded by its audio whatever the state says.

Files are read in blocks by :func:`serq.audiofile.read_blocks`, which the light
client shares.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from serq.audiofile import read_blocks
from serq.errors import InvalidRequest
from serq.schemas.timeline import (
    MAX_STATE_WINDOWS,
    TIMELINE_RATE,
    Moment,
    RunState,
    Timeline,
    TimelineParams,
    TimelineSegment,
    TimelineStreamState,
    VadState,
    WindowState,
)
from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION, analyse, feature_vector, speech_level
from serq.worker.engine.inference import probabilities
from serq.worker.engine.profiles import digest, model_input, usable
from serq.worker.engine.sealing import mac, verify

if TYPE_CHECKING:
    from serq.schemas.profiles import SpeakerProfile
    from serq.settings import Settings
    from serq.worker.engine.model import LoadedModel

RATE = TIMELINE_RATE  # Hz
FRAME = RATE // 100  # samples per 10 ms frame
FPS = RATE // FRAME  # frames per second

# Voice activity. Levels are frame RMS in dBFS. The noise floor is the quietest
# frame of the last few seconds (minimum statistics over 0.5 s buckets): speech
# dips between words every few hundred ms, steady noise never does, so the floor
# follows a change of background within NOISE_MEMORY_S. Absolute minima keep a
# near-digital-silence floor from making breath and hiss "speech".
ON_MARGIN_DB = 12.0  # a segment opens this far above the noise floor ...
OFF_MARGIN_DB = 6.0  # ... and stays open while frames are this far above it
ABS_ON_DBFS = -55.0
ABS_OFF_DBFS = -61.0
NOISE_MIN_DBFS = -90.0
NOISE_BUCKET = FPS // 2  # frames per bucket of the floor's memory
NOISE_MEMORY_S = 3.0  # the floor is the minimum over this many seconds of complete buckets (+ the current one)
NOISE_BUCKETS = int(NOISE_MEMORY_S * FPS) // NOISE_BUCKET
BACKDATE_FRAMES = 20  # a segment starts at the rise above `off`, at most 0.2 s before `on`
TAIL_TOLERANCE_FRAMES = 25  # a segment end this close after the last regular window needs no extra window


def params_from_settings(settings: "Settings") -> TimelineParams:
    """The window, hop and pause of ``SERQ_TIMELINE_*``."""
    return TimelineParams(window_s=settings.timeline_window_s, hop_s=settings.timeline_hop_s,
                          max_pause_s=settings.timeline_max_pause_s)


def frame_db(samples: np.ndarray) -> np.ndarray:
    """RMS level of consecutive 10 ms frames in dBFS, shape ``(len(samples) // FRAME,)``."""
    n = len(samples) // FRAME
    frames = samples[: n * FRAME].reshape(n, FRAME).astype(np.float64)
    return 10.0 * np.log10(np.einsum("ij,ij->i", frames, frames) / FRAME + 1e-10)


def window_probabilities(samples: np.ndarray, model: "LoadedModel",
                         profile: "SpeakerProfile | None" = None) -> np.ndarray:
    """Class probabilities of one window, shape ``(len(model.meta.labels),)``, via the engine's features.

    With ``profile``, ``model`` is a speaker-normalised one and reads the window relative
    to that speaker (see :func:`choose_model`). A window without speech energy (the
    engine's ``silent``) gets uniform probabilities.
    """
    analysis = analyse(np.ascontiguousarray(samples, dtype=np.float32), RATE)
    n = len(model.meta.labels)
    if analysis.silent:
        return np.full(n, 1.0 / n)
    vector = feature_vector(analysis)
    if profile is not None:
        vector = model_input(vector, profile, model.meta.speaker_prior, speech_level(analysis))
    return probabilities(model, vector)[0].astype(np.float64)


def choose_model(plain: "LoadedModel", profile: "SpeakerProfile | None", speaker_model: "LoadedModel | None"
                 ) -> tuple["LoadedModel", "SpeakerProfile | None", str | None]:
    """The model for a whole timeline: ``(model, profile to apply or None, profile status)``.

    The same rule as a classify request (:func:`serq.worker.engine.profiles.route`): a usable
    profile selects the speaker-normalised model, anything else the plain one.
    """
    status = usable(profile, speaker_model, FEATURE_VERSION, len(FEATURE_NAMES))
    return (speaker_model, profile, status) if status == "used" else (plain, None, status)


def smooth(probs: list[np.ndarray], i: int) -> np.ndarray:
    """Median over windows ``i-1 .. i+1`` (those that exist) per class, renormalised to sum 1."""
    lo, hi = max(0, i - 1), min(len(probs), i + 2)
    med = np.median(np.stack(probs[lo:hi]), axis=0)
    total = med.sum()
    return med / total if total > 0 else np.full(len(med), 1.0 / len(med))


def decide(labels: list[int], i: int) -> int:
    """Window ``i``'s final label: the majority of the three windows nearest it, else its own.

    ``labels`` are the windows' own (argmax) labels. A single window that disagrees
    with two agreeing neighbours (or, at a segment's edge, with the next two) takes
    their label, and changes nobody else's: one noisy window never flips a label,
    while a change that lasts two windows or more is kept.
    """
    n = len(labels)
    if n < 3:
        return labels[i]
    lo = min(max(i - 1, 0), n - 3)
    trio = labels[lo : lo + 3]
    return next((x for x in trio if trio.count(x) >= 2), labels[i])


class TimelineProcessor:
    """Incremental timeline of one recording (see the module docstring).

    Args:
        model: the loaded model that classifies windows.
        state: where the stream stands (:meth:`new` makes a fresh one).
        tail: the samples ``[state.keep_from, state.received)``, float32.
        profile: the speaker profile ``model`` (speaker-normalised) applies, if any;
            it must be the one ``state.profile_sha256`` names.
    """

    def __init__(self, model: "LoadedModel", state: TimelineStreamState, tail: np.ndarray | None = None,
                 profile: "SpeakerProfile | None" = None):
        if (digest(profile) if profile is not None else None) != state.profile_sha256:
            raise ValueError("the profile is not the one the stream started with")
        self.model = model
        self.profile = profile
        self.state = state
        self.labels = list(state.labels)
        self.params = state.params
        self.buf = np.asarray(tail if tail is not None else np.zeros(0, np.float32), dtype=np.float32)
        if len(self.buf) != state.received - state.keep_from:
            raise ValueError("the tail does not cover [keep_from, received)")
        p = self.params
        self.win = int(round(p.window_s * FPS))
        self.hop = int(round(p.hop_s * FPS))
        self.pause = int(round(p.max_pause_s * FPS))
        self.min_speech = int(round(p.min_speech_s * FPS))
        self._out: list[TimelineSegment] = []

    @classmethod
    def new(cls, model: "LoadedModel", params: TimelineParams | None = None, stream_id: str = "local", *,
            profile: "SpeakerProfile | None" = None, profile_status: str | None = None) -> "TimelineProcessor":
        """A fresh stream; ``profile``/``profile_status`` as :func:`choose_model` returned them."""
        state = TimelineStreamState(
            stream_id=stream_id, next_seq=0, model_version=model.version, labels=list(model.meta.labels),
            params=params or TimelineParams(), position=0, received=0, keep_from=0, vad=VadState(),
            profile_status=profile_status, profile_sha256=digest(profile) if profile is not None else None,
        )
        return cls(model, state, profile=profile)

    # --- the public steps -----------------------------------------------------------------

    def feed(self, samples: np.ndarray) -> list[TimelineSegment]:
        """Append mono float32 samples at :data:`RATE`; return the segments that became final."""
        samples = np.asarray(samples, dtype=np.float32)
        if len(samples):
            self.buf = np.concatenate([self.buf, samples])
            self.state.received += len(samples)
        s = self.state
        n_frames = s.received // FRAME - s.position // FRAME
        if n_frames > 0:
            start = s.position - s.keep_from
            levels = frame_db(self.buf[start : start + n_frames * FRAME])
            self._vad(levels, s.position // FRAME)
            s.position += n_frames * FRAME
        self._trim()
        return self._take()

    def finish(self) -> list[TimelineSegment]:
        """The recording ended: close the open segment; return the last segments."""
        if self.state.vad.seg_start is not None:
            self._close(self.state.vad.last_active)
        self._trim()
        return self._take()

    @property
    def duration_s(self) -> float:
        return self.state.received / RATE

    @property
    def buffered_samples(self) -> int:
        """Audio held in memory: bounded by a window, a hop and a pause (plus one fed block)."""
        return len(self.buf)

    def tail(self) -> np.ndarray:
        """The samples ``[state.keep_from, state.received)`` a stream's next chunk re-sends."""
        return self.buf

    def pending(self) -> Moment | None:
        """Provisional label of the open, undecided speech (``None`` in silence or before its first window)."""
        s, v = self.state, self.state.vad
        if v.seg_start is None:
            return None
        if s.run is not None:
            label = s.run.label
            probs = np.asarray(s.run.prob_sum) / max(s.run.weight_s, 1e-9)
            start = s.run.start
        elif s.windows:
            probs = np.asarray(s.windows[-1].probs)
            label = self.labels[int(np.argmax(probs))]
            start = v.seg_start / FPS
        else:
            return None
        conf = float(probs[self.labels.index(label)])
        return Moment(start=round(start, 3), end=round(v.last_active / FPS, 3), label=label,
                      confidence=round(min(max(conf, 0.0), 1.0), 6))

    # --- voice activity ---------------------------------------------------------------------

    def _noise_floor(self, levels: np.ndarray, first_frame: int) -> np.ndarray:
        """The noise floor at each frame (dBFS), updating the floor's memory in the state.

        The floor at frame ``f`` is the minimum over the last :data:`NOISE_BUCKETS`
        complete buckets and the frames of ``f``'s own bucket up to ``f``. Buckets
        are counted from the recording's start, so chunking never changes it.
        """
        v = self.state.vad
        floor = np.empty(len(levels))
        current = v.noise_db if v.noise_db is not None else np.inf
        k = 0
        while k < len(levels):
            f = first_frame + k
            if f % NOISE_BUCKET == 0 and current < np.inf:  # a bucket is complete: remember its minimum
                v.noise_buckets = (v.noise_buckets + [float(current)])[-NOISE_BUCKETS:]
                current = np.inf
            end = min(len(levels), k + NOISE_BUCKET - f % NOISE_BUCKET)
            running = np.minimum.accumulate(np.minimum(levels[k:end], current))
            floor[k:end] = np.minimum(running, min(v.noise_buckets, default=np.inf))
            current = float(running[-1])
            k = end
        v.noise_db = current if current < np.inf else None
        return np.maximum(floor, NOISE_MIN_DBFS)

    def _vad(self, levels: np.ndarray, first_frame: int) -> None:
        """Run the detector over frame levels (dBFS) starting at absolute frame ``first_frame``."""
        v = self.state.vad
        floor = self._noise_floor(levels, first_frame)
        above_off = (levels > np.maximum(floor + OFF_MARGIN_DB, ABS_OFF_DBFS)).tolist()
        above_on = (levels > np.maximum(floor + ON_MARGIN_DB, ABS_ON_DBFS)).tolist()
        for k, active in enumerate(above_off):
            f = first_frame + k
            if active:
                if v.seg_start is None:
                    if v.run_start is None:
                        v.run_start = f
                    if above_on[k]:
                        self._open(max(v.run_start, f - BACKDATE_FRAMES))
                        v.last_active = f + 1
                        self._windows()
                else:
                    v.last_active = f + 1
                    if v.last_active >= self.state.next_window + self.win:
                        self._windows()
            else:
                v.run_start = None
                if v.seg_start is not None and f + 1 - v.last_active > self.pause:
                    self._close(v.last_active)

    def _open(self, frame: int) -> None:
        s = self.state
        s.vad.seg_start = frame
        s.next_window, s.windows_seen, s.decided, s.window_base = frame, 0, 0, 0
        s.windows, s.run, s.last_boundary = [], None, frame / FPS

    def _close(self, end: int) -> None:
        """Close the open segment at frame ``end`` (exclusive): last windows, final decisions, last run."""
        s, v = self.state, self.state.vad
        start = v.seg_start
        if end - start >= self.min_speech:
            self._windows(end)
            last_end = s.next_window - self.hop + self.win if s.windows_seen else start
            if s.windows_seen == 0:
                self._classify(start, end)
            elif end - last_end > TAIL_TOLERANCE_FRAMES:
                self._classify(max(start, end - self.win), end)
            self._decide(closed_at=end)
            self._emit(end / FPS)
        v.seg_start, v.run_start = None, None
        s.windows, s.run, s.last_boundary = [], None, None
        s.windows_seen = s.decided = s.window_base = 0

    # --- windows, smoothing, runs -----------------------------------------------------------

    def _windows(self, until: int | None = None) -> None:
        """Classify every regular window that ends by ``until`` (default: the last active frame)."""
        s = self.state
        until = s.vad.last_active if until is None else until
        while s.next_window + self.win <= until:
            self._classify(s.next_window, s.next_window + self.win)
            s.next_window += self.hop
        self._decide()

    def _classify(self, start: int, end: int) -> None:
        s = self.state
        lo = start * FRAME - s.keep_from
        if lo < 0 or end <= start or lo + (end - start) * FRAME > len(self.buf):
            # Only a state that does not fit its audio gets here (check_state refuses those first);
            # stopping makes a chunk's work bounded by the audio it holds, whatever the state says.
            raise InvalidRequest(f"the stream state asks for window [{start}, {end}) frames, outside the audio "
                                 "it holds: start a new stream")
        probs = window_probabilities(self.buf[lo : lo + (end - start) * FRAME], self.model, self.profile)
        s.windows.append(WindowState(start=start, end=end, probs=[float(x) for x in probs]))
        s.windows_seen += 1

    def _decide(self, closed_at: int | None = None) -> None:
        """Make final every window whose smoothing context is complete (all of them once closed)."""
        s = self.state
        while s.decided < s.windows_seen and (closed_at is not None or s.decided + 2 < s.windows_seen):
            j = s.decided
            base = s.window_base
            probs = [np.asarray(w.probs) for w in s.windows]  # windows base .. windows_seen-1
            local = j - base
            label = decide([int(np.argmax(p)) for p in probs], local)
            smoothed = smooth(probs, local)
            window = s.windows[local]
            nxt = s.windows[local + 1] if local + 1 < len(s.windows) else None
            end = (nxt.start + window.end) / 2 / FPS if nxt is not None else closed_at / FPS
            self._accumulate(label, smoothed, window, float(s.last_boundary), end)
            s.last_boundary = end
            s.decided += 1
            drop = max(0, s.decided - 2 - s.window_base)  # keep two decided windows as context
            if drop:
                del s.windows[:drop]
                s.window_base += drop

    def _accumulate(self, label_index: int, smoothed: np.ndarray, window: WindowState, start: float, end: float) -> None:
        s = self.state
        label = self.labels[label_index]
        if s.run is not None and s.run.label != label:
            self._emit(start)
        if s.run is None:
            s.run = RunState(label=label, start=start, weight_s=0.0, prob_sum=[0.0] * len(self.labels), windows=0)
        run = s.run
        weight = end - start
        run.prob_sum = [a + weight * float(b) for a, b in zip(run.prob_sum, smoothed)]
        run.weight_s += weight
        run.windows += 1
        conf = float(smoothed[label_index])
        if run.peak is None or conf > run.peak.confidence:
            run.peak = Moment(start=round(window.start / FPS, 3), end=round(window.end / FPS, 3), label=label,
                              confidence=round(conf, 6))

    def _emit(self, end: float) -> None:
        """Turn the open run into a final segment ending at ``end`` seconds."""
        run = self.state.run
        if run is None:
            return
        mean = np.asarray(run.prob_sum) / max(run.weight_s, 1e-12)
        probs = {label: round(float(p), 6) for label, p in zip(self.labels, mean)}
        self._out.append(TimelineSegment(
            start=round(run.start, 3), end=round(end, 3), label=run.label, confidence=probs[run.label],
            probabilities=probs, windows=run.windows, peak=run.peak,
        ))
        self.state.run = None

    # --- memory -----------------------------------------------------------------------------

    def _trim(self) -> None:
        """Drop audio no future window needs; record where the next chunk must start."""
        s, v = self.state, self.state.vad
        if v.seg_start is None:
            keep = max(0, s.position // FRAME - BACKDATE_FRAMES)
        else:
            keep = min(s.next_window, max(v.seg_start, v.last_active - self.win))
        keep = min(keep * FRAME, s.position)
        if keep > s.keep_from:
            self.buf = self.buf[keep - s.keep_from :].copy()
            s.keep_from = keep
        s.tail_crc32 = tail_crc32(self.buf)

    def _take(self) -> list[TimelineSegment]:
        out, self._out = self._out, []
        return out


# --- a state that comes back from a client ---------------------------------------------------------

#: Purpose label of a stream state's MAC (see :mod:`serq.worker.engine.sealing`).
STATE_PURPOSE = "serq.timeline.state"


def _canonical(state: TimelineStreamState) -> bytes:
    return state.model_dump_json(exclude={"seal"}).encode()


def seal_state(state: TimelineStreamState, key: bytes) -> TimelineStreamState:
    """A copy of ``state`` with its seal: the MAC of every other field under ``key``."""
    return state.model_copy(update={"seal": mac(key, STATE_PURPOSE, _canonical(state))})


def sealed_by(state: TimelineStreamState, keys: bytes | list[bytes]) -> bool:
    """Whether ``state.seal`` is the MAC of its fields under ``keys`` (one of them): a worker of this
    deployment wrote it."""
    payload = _canonical(state)
    candidates = [keys] if isinstance(keys, bytes) else keys
    return any(verify(key, STATE_PURPOSE, payload, state.seal) for key in candidates)


def max_tail_frames(params: TimelineParams) -> int:
    """Most 10 ms frames a state's tail ``[keep_from, received)`` ever spans: a window, a pause, the
    back-dating of a segment's start and a frame each of rounding and of a partial frame."""
    return round(params.window_s * FPS) + round(params.max_pause_s * FPS) + BACKDATE_FRAMES + 3


def check_state(state: TimelineStreamState) -> None:
    """Refuse a state whose fields do not fit together (:class:`InvalidRequest`, naming the first misfit).

    These are the invariants :class:`TimelineProcessor` keeps between two chunks; every
    loop of the processor is bounded by the audio of the chunk once they hold (a window
    loop by the frames between ``next_window`` and ``last_active``, the decisions by
    the windows held). A sealed state always passes: this is the second line, for a
    leaked key or a worker of another version.
    """
    problem = _state_problem(state)
    if problem:
        raise InvalidRequest(f"the stream state does not fit together ({problem}): send back the previous "
                             "reply's state unchanged, or start a new stream")


def _state_problem(s: TimelineStreamState) -> str | None:  # noqa: C901 - one flat list of invariants
    v, n_labels = s.vad, len(s.labels)
    frames = s.position // FRAME
    if not (s.keep_from <= s.position <= s.received) or s.received - s.position >= FRAME:
        return "keep_from <= position <= received, within a frame of received"
    if s.position % FRAME or s.keep_from % FRAME:
        return "position and keep_from on the 10 ms frame grid"
    if s.received - s.keep_from > max_tail_frames(s.params) * FRAME:
        return "the re-sent tail spans more than a window and a pause"
    if n_labels == 0 or len(set(s.labels)) != n_labels:
        return "distinct labels"
    if v.run_start is not None and v.run_start > frames:
        return "vad.run_start within the audio analysed"
    if v.seg_start is None:
        if s.windows or s.run is not None or s.last_boundary is not None or s.windows_seen or s.decided \
                or s.window_base:
            return "no windows, run or boundary outside a speech segment"
        return None
    lo = s.keep_from // FRAME
    if not (v.seg_start <= s.next_window <= v.last_active <= frames):
        return "vad.seg_start <= next_window <= vad.last_active <= position"
    if s.next_window < lo or max(v.seg_start, v.last_active - round(s.params.window_s * FPS)) < lo:
        return "the open segment's next windows inside the re-sent tail"
    if frames - v.last_active > round(s.params.max_pause_s * FPS) + 1:
        return "an open segment ends after a pause of max_pause_s at most"
    if s.last_boundary is None or not (v.seg_start / FPS - 1e-6 <= s.last_boundary <= frames / FPS + 1e-6):
        return "last_boundary inside the open segment"
    if not (s.window_base <= s.decided <= s.windows_seen) or s.windows_seen - s.window_base != len(s.windows):
        return "window_base <= decided <= windows_seen, and windows_seen - window_base windows held"
    if len(s.windows) > MAX_STATE_WINDOWS:
        return f"at most {MAX_STATE_WINDOWS} windows"
    for w in s.windows:
        if len(w.probs) != n_labels or not (v.seg_start <= w.start < w.end <= v.last_active) \
                or any(p < 0 or p > 1 for p in w.probs):
            return "every window inside the segment, with one probability in [0, 1] per label"
    if s.run is not None:
        r = s.run
        if r.label not in s.labels or len(r.prob_sum) != n_labels or r.windows < 1 or r.windows > s.decided \
                or not (v.seg_start / FPS - 1e-6 <= r.start <= s.last_boundary + 1e-6):
            return "the open run: a known label, one sum per label, inside the segment"
        if r.weight_s > s.last_boundary - r.start + 1e-6 or any(p < 0 or p > r.weight_s + 1e-6 for p in r.prob_sum):
            return "the open run's sums within its duration"
    return None


def tail_crc32(samples: np.ndarray) -> int:
    """CRC-32 of float32 samples' bytes: checks that a stream's client re-sent the right tail."""
    return zlib.crc32(np.ascontiguousarray(samples, dtype="<f4").tobytes())


# --- files in bounded memory ------------------------------------------------------------------------


def timeline_of_blocks(blocks: Iterable[np.ndarray], model: "LoadedModel", params: TimelineParams | None = None, *,
                       file: str | None = None, on_segment=None, profile: "SpeakerProfile | None" = None,
                       speaker_model: "LoadedModel | None" = None) -> Timeline:
    """A whole timeline from 16 kHz blocks; ``on_segment(segment)`` is called as each becomes final.

    ``profile`` and ``speaker_model``: the speaker's profile and the speaker-normalised
    model, used for every window when the profile is usable (:func:`choose_model`).
    """
    model, profile, status = choose_model(model, profile, speaker_model)
    proc = TimelineProcessor.new(model, params, profile=profile, profile_status=status)
    segments: list[TimelineSegment] = []

    def take(new: list[TimelineSegment]) -> None:
        for seg in new:
            segments.append(seg)
            if on_segment is not None:
                on_segment(seg)

    for block in blocks:
        take(proc.feed(block))
    take(proc.finish())
    return Timeline.build(segments, duration_s=proc.duration_s, labels=proc.labels, model_version=model.version,
                          params=proc.params, file=file, profile_status=status)


def timeline_file(path: str | os.PathLike, model: "LoadedModel", *, params: TimelineParams | None = None,
                  max_seconds: float | None = None, block_s: float = 1.0, file: str | None = None,
                  on_segment=None, profile: "SpeakerProfile | None" = None,
                  speaker_model: "LoadedModel | None" = None) -> Timeline:
    """The timeline of an audio file, read block by block (memory bounded by the window, not the file)."""
    return timeline_of_blocks(read_blocks(path, RATE, block_s=block_s, max_seconds=max_seconds), model, params,
                              file=file, on_segment=on_segment, profile=profile, speaker_model=speaker_model)
