"""Forged client-held state, shared by the unit tests and the reliability tests: real speech to start a
stream with, forged stream states (:data:`SEALED_FORGERIES`: what a worker's re-check must refuse even when
sealed with the right key) and forged speaker profiles (:data:`FORGED_PROFILES`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from serq.schemas import TimelineParams, TimelineStreamState
from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION
from serq.worker.engine.timeline import RATE

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
N = len(FEATURE_NAMES)


def real_speech() -> np.ndarray:
    """Real speech with no pause: the eight shipped samples trimmed to their speech, back to back, 16 kHz."""
    import soxr

    parts = []
    for path in sorted(SAMPLES.glob("*.flac")):
        x, rate = sf.read(path, dtype="float32")
        x = soxr.resample(x, rate, RATE).astype(np.float32) if rate != RATE else x
        n = len(x) // 160
        level = 10 * np.log10((x[: n * 160].reshape(n, 160).astype(np.float64) ** 2).mean(axis=1) + 1e-10)
        active = np.flatnonzero(level > level.max() - 25)
        parts.append(x[active[0] * 160 : (active[-1] + 1) * 160])
    return np.concatenate(parts)


def forged(state: TimelineStreamState, vad: dict | None = None, run: dict | None = None,
           **fields) -> TimelineStreamState:
    """``state`` with fields replaced (unvalidated, as a forger would write them), unsealed."""
    update = dict(fields, seal=None)
    if vad:
        update["vad"] = state.vad.model_copy(update=vad)
    if run:
        update["run"] = state.run.model_copy(update=run)
    return state.model_copy(update=update)


#: Forgeries sealed with the deployment's key (a leaked key): the re-check refuses each.
SEALED_FORGERIES = {
    "keep_from > received": lambda s: forged(s, keep_from=s.received + 16_000, position=s.received + 16_000),
    "position beyond received": lambda s: forged(s, position=s.received + 160_000),
    "a tail of 10**9 samples": lambda s: forged(s, keep_from=0, received=10**9, position=10**9 - 10**9 % 160),
    "the loop: seg_start 0, last_active 10**12, next_window 0": lambda s: forged(
        s, vad={"seg_start": 0, "last_active": 10**12}, next_window=0),
    "the loop within the audio held": lambda s: forged(s, vad={"seg_start": 0}, next_window=0),
    "windows_seen 10**12": lambda s: forged(s, windows_seen=10**12),
    "decided beyond windows_seen": lambda s: forged(s, decided=s.windows_seen + 5),
    "short label list": lambda s: forged(s, labels=s.labels[:2]),
    "labels of another model, same length": lambda s: forged(s, labels=list(reversed(s.labels))),
    "duplicate labels": lambda s: forged(s, labels=[s.labels[0]] * len(s.labels)),
    "window probabilities of the wrong length": lambda s: forged(
        s, windows=[w.model_copy(update={"probs": w.probs[:3]}) for w in s.windows]),
    "run sums of the wrong length": lambda s: forged(s, run={"prob_sum": s.run.prob_sum[:3]}),
    "run label unknown": lambda s: forged(s, run={"label": "bored"}),
    "run sums beyond its weight": lambda s: forged(s, run={"prob_sum": [1e300] * len(s.labels)}),
    "last_boundary missing in a segment": lambda s: forged(s, last_boundary=None),
    "last_boundary far ahead": lambda s: forged(s, last_boundary=1e12),
    "window far outside the segment": lambda s: forged(
        s, windows=[w.model_copy(update={"start": 10**9, "end": 10**9 + 300}) for w in s.windows]),
    "window_s 30 with hop_s 0.1": lambda s: forged(
        s, params=TimelineParams.model_construct(window_s=30.0, hop_s=0.1, max_pause_s=1.0, min_speech_s=0.3)),
}


def profile_json(**fields) -> str:
    return json.dumps({"speaker_key": "caller-1", "feature_version": FEATURE_VERSION, "count": 10,
                       "mean": [1.0] * N, "m2": [1.0] * N} | fields)


#: Forged profiles (as JSON text, as they travel) and words of the refusal.
FORGED_PROFILES = {
    "count 10**400": (profile_json().replace('"count": 10', '"count": 1' + "0" * 400), "count"),
    "count 10**18": (profile_json(count=10**18), "count"),
    "count -1": (profile_json(count=-1), "count"),
    "means 1.7e308": (profile_json(mean=[1.7e308] * N), "finite numbers within"),
    "means -1.7e308": (profile_json(mean=[-1.7e308] * N), "finite numbers within"),
    "m2 1.7e308": (profile_json(m2=[1.7e308] * N), "finite numbers within"),
    "means Infinity": (profile_json().replace('"mean": [1.0', '"mean": [Infinity'), "finite"),
    "means NaN": (profile_json().replace('"mean": [1.0', '"mean": [NaN'), "finite"),
    "mean and m2 of other lengths": (profile_json(m2=[1.0] * (N - 1)), "features"),
    "negative m2": (profile_json(m2=[-1.0] * N), "negative"),
    "level 1.7e308 dB": (profile_json(level_db=1.7e308), "level_db"),
    "level -1e4 dB": (profile_json(level_db=-1e4), "level_db"),
    "level NaN": (profile_json(level_db=-20.0).replace('"level_db": -20.0', '"level_db": NaN'), "level_db"),
    "level Infinity": (profile_json(level_db=-20.0).replace('"level_db": -20.0', '"level_db": Infinity'), "level_db"),
    "level of an empty profile": (profile_json(count=0, mean=[0.0] * N, m2=[0.0] * N, level_db=-20.0), "no level"),
}


