"""Recordings made of RAVDESS clips of known emotion: trimmed to their speech, joined by quiet room noise,
so the joins are where timeline segments should start and end."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from serq.schemas import Timeline
from serq.worker.engine.timeline import RATE

#: (actor, emotion) of the clips joined in the main recording: every emotion, eight speakers.
CLIPS = [(1, 5), (2, 4), (3, 3), (4, 6), (5, 1), (6, 8), (7, 7), (8, 2)]


def trimmed(path) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32")
    assert sr == RATE
    n = len(x) // 160
    level = 10 * np.log10((x[: n * 160].reshape(n, 160).astype(np.float64) ** 2).mean(axis=1) + 1e-10)
    active = np.flatnonzero(level > level.max() - 25)
    return x[active[0] * 160 : (active[-1] + 1) * 160]


def gap(seconds: float, seed: int) -> np.ndarray:
    """Room noise at about -75 dBFS (RAVDESS's own background is quieter)."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 10 ** (-75 / 20)).astype(np.float32)


def join(clips: list[np.ndarray], pause: float, lead: float = 1.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    parts, spans, t = [gap(lead, 0)], [], lead
    for i, clip in enumerate(clips):
        spans.append((t, t + len(clip) / RATE))
        parts += [clip, gap(pause, i + 1)]
        t += len(clip) / RATE + pause
    return np.concatenate(parts), spans


def stretches(timeline: Timeline) -> list[tuple[float, float, dict[str, float]]]:
    """Speech stretches: segments that touch (a change of label inside speech) merged, with time per label."""
    out: list[tuple[float, float, dict[str, float]]] = []
    for seg in timeline.segments:
        if out and abs(out[-1][1] - seg.start) < 1e-6:
            start, _, labels = out[-1]
            out[-1] = (start, seg.end, labels)
        else:
            out.append((seg.start, seg.end, {}))
        labels = out[-1][2]
        labels[seg.label] = labels.get(seg.label, 0.0) + seg.duration
    return out


def write_recording(folder, clips: list[np.ndarray], pause: float = 2.0):
    """``clips`` joined ``pause`` s apart as ``folder/call.flac``, and each clip alone as a WAV:
    ``(path, spans, files)``."""
    audio, spans = join(clips, pause=pause)
    path = folder / "call.flac"
    sf.write(path, audio, RATE)
    files = []
    for i, clip in enumerate(clips):
        files.append(folder / f"clip{i}.wav")
        sf.write(files[-1], clip, RATE, subtype="FLOAT")
    return path, spans, files
