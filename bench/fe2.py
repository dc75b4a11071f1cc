"""The previous feature layout, ``serq-fe-2`` (the models shipped before issue 16), kept for comparison.

``bench/conditions.py`` puts the previous recipe beside the current one under the same
conditions, and times both in the same run. Only what ``serq-fe-2`` did differently is
here; everything else is the engine's own code, unchanged since (the STFT and every
descriptor derived from it, pitch, the summary statistics). Not used by serq itself.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from serq.worker.engine.features import AMIN, N_FFT, SAMPLE_RATE, _describe, _layout, _statistics, frame_signal

VERSION = "serq-fe-2"
ACTIVE_DB = 35.0
SILENCE_DBFS = -55.0

# Differs: no vocal-effort descriptors (alpha ratio, Hammarberg index) among the frame scalars.
_FRAME_SCALARS = ("rms_db", "centroid", "bandwidth", "rolloff", "flatness", "zcr")

#: Names of the :func:`feature_vector` entries, in order (359).
FEATURE_NAMES: tuple[str, ...] = _layout(_FRAME_SCALARS)


def analyse(samples: np.ndarray, sr: int = SAMPLE_RATE) -> SimpleNamespace:
    """``serq-fe-2``'s frame-level descriptors of a mono waveform at :data:`SAMPLE_RATE`.

    Differs from today's ``analyse``: active frames are those within :data:`ACTIVE_DB` of
    the loudest (no noise floor), the level is left as recorded (no normalisation), and no
    vocal-effort descriptors are computed.
    """
    if sr != SAMPLE_RATE:
        raise ValueError(f"features are defined at {SAMPLE_RATE} Hz, got {sr} Hz: resample first")
    samples = np.asarray(samples, dtype=np.float32)
    frames = frame_signal(samples)
    rms_db_all = 20 * np.log10(np.sqrt(np.einsum("ij,ij->i", frames, frames) / N_FFT) + AMIN)
    active_all = rms_db_all > max(rms_db_all.max(initial=-200.0) - ACTIVE_DB, SILENCE_DBFS - 20)
    peak = float(np.abs(samples).max(initial=0.0))
    total_rms = float(np.sqrt(np.dot(samples, samples) / len(samples))) if len(samples) else 0.0
    return SimpleNamespace(
        **_describe(samples, frames, rms_db_all, active_all),
        peak_dbfs=20 * np.log10(peak + AMIN),
        rms_dbfs=20 * np.log10(total_rms + AMIN),
    )


def feature_vector(analysis: SimpleNamespace) -> np.ndarray:
    """Today's summary statistics over ``serq-fe-2``'s frame scalars, shape ``(359,)``, float32."""
    return _statistics(analysis, _FRAME_SCALARS)


def extract(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``serq-fe-2``'s vector of a mono 16 kHz waveform (359 values)."""
    return feature_vector(analyse(samples, sample_rate))
