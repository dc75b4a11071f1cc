"""Recording conditions for evaluation: the same test clips as another chain would deliver them.

``serq evaluate --conditions clean,gain:-18,peak,phone,noise:20,noise:10,reverb:0.5,mp3:32``
applies each condition to every test clip and scores the model on the result
(:func:`serq.worker.training.evaluation.evaluate_conditions`). Conditions are
deterministic: their random parts (the noise, which room) are seeded by the clip's
content and the evaluation's seed, and the rooms are not among the training rooms.

| condition | what it does |
|---|---|
| ``clean`` | the clip as stored |
| ``gain:DB`` | scaled by DB decibels (clipped at full scale, as a recorder would) |
| ``peak`` | peak-normalised to -1 dBFS (what many recorders and codecs do) |
| ``phone`` | 8 kHz, 300-3400 Hz, G.711 mu-law (``phone:alaw`` for A-law) |
| ``noise:SNR`` | white Gaussian noise SNR dB below the active-speech level |
| ``reverb:RT60`` | a simulated shoebox room (pyroomacoustics) with that reverberation time in s |
| ``mp3:KBPS`` | an MP3 round trip at a constant KBPS kbit/s (libsndfile) |
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from serq.errors import InvalidRequest

from .augment import add_noise, codec_roundtrip, copy_seed, mp3_level, phone_line, reverberate, room_impulse_response

DEFAULT_CONDITIONS = "clean,gain:-18,peak,phone,noise:20,noise:10,reverb:0.5,mp3:32"
#: Evaluation rooms per reverberation time; their seeds are disjoint from the training rooms'.
EVAL_ROOMS = 8
EVAL_ROOM_SEED = 90_000

_RANGES = {"gain": (-60.0, 20.0), "noise": (-10.0, 60.0), "reverb": (0.1, 3.0), "mp3": (8.0, 160.0)}


@dataclass(frozen=True)
class Condition:
    """One recording condition; :meth:`apply` is pure given ``seed``. Picklable (it travels to joblib workers)."""

    name: str
    kind: str
    value: float | None = None
    law: str = "ULAW"

    @property
    def key(self) -> str:
        """Cache key of this condition's features."""
        return "cond-" + self.name.replace(":", "_")

    def apply(self, samples: np.ndarray, seed: int) -> np.ndarray:
        samples = np.asarray(samples, np.float32)
        if self.kind == "clean":
            return samples
        if self.kind == "gain":
            return np.clip(samples * np.float32(10 ** (self.value / 20)), -1.0, 1.0)
        if self.kind == "peak":
            peak = float(np.abs(samples).max(initial=0.0))
            return samples * np.float32(10 ** (-1 / 20) / peak) if peak > 0 else samples
        if self.kind == "phone":
            return phone_line(samples, law=self.law)
        if self.kind == "noise":
            return np.clip(add_noise(samples, self.value, np.random.default_rng(seed)), -1.0, 1.0)
        if self.kind == "reverb":
            return reverberate(samples, _eval_room(self.value, seed % EVAL_ROOMS))
        if self.kind == "mp3":
            return codec_roundtrip(samples, "MP3", "MPEG_LAYER_III", compression_level=mp3_level(self.value))
        raise ValueError(self.kind)


@lru_cache(maxsize=32)
def _eval_room(rt60: float, index: int) -> np.ndarray:
    return room_impulse_response(rt60, EVAL_ROOM_SEED + int(round(rt60 * 1000)) * 100 + index)


def parse_condition(text: str) -> Condition:
    """``"noise:10" -> Condition("noise:10", "noise", 10.0)``; :class:`InvalidRequest` with the grammar otherwise."""
    name = text.strip().lower()
    kind, sep, arg = name.partition(":")
    if kind in ("clean", "peak") and not sep:
        return Condition(name, kind)
    if kind == "phone" and (not sep or arg in ("ulaw", "alaw")):
        return Condition(name, kind, law=(arg or "ulaw").upper())
    if kind in _RANGES and sep:
        try:
            value = float(arg)
        except ValueError:
            value = None
        lo, hi = _RANGES[kind]
        if value is not None and lo <= value <= hi:
            return Condition(name, kind, value)
        raise InvalidRequest(f"condition {text!r}: {kind}:X needs a number X in {lo:g}..{hi:g}")
    raise InvalidRequest(f"unknown condition {text!r}: use clean, gain:DB, peak, phone[:ulaw|alaw], noise:SNR_DB, "
                         "reverb:RT60_S or mp3:KBPS, comma-separated")


def parse_conditions(text: str) -> list[Condition]:
    """A comma-separated list (``clean`` is added first when missing: agreement is measured against it)."""
    conditions = [parse_condition(part) for part in text.split(",") if part.strip()]
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise InvalidRequest(f"conditions repeat: {text!r}")
    if "clean" not in names:
        conditions.insert(0, Condition("clean", "clean"))
    return conditions


@dataclass(frozen=True)
class Conditioned:
    """A :class:`Condition` as an extraction perturbation: seeded by the clip's content and ``seed``."""

    condition: Condition
    seed: int = 0

    @property
    def key(self) -> str:
        return f"{self.condition.key}-seed{self.seed}"

    def apply(self, samples: np.ndarray, digest: str) -> np.ndarray:
        return self.condition.apply(samples, copy_seed(digest, self.seed))
