"""The previous feature layout, ``serq-fe-2`` (the models shipped before issue 16), frozen for comparison.

``bench/conditions.py`` puts the previous recipe beside the current one under the same
conditions, and times both in the same run. This is ``serq-fe-2``'s ``analyse`` and
``feature_vector`` as they were (active frames within 35 dB of the loudest, no level
normalisation, no vocal-effort descriptors), over the engine's unchanged building blocks.
Not used by serq itself.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from scipy import fft as sfft

from serq.worker.engine.features import (
    AMIN, HOP, N_CHROMA, N_FFT, N_MELS, N_MFCC, CONTRAST_BANDS, SAMPLE_RATE, _dct_matrix, _filterbanks,
    _spectral_contrast, _window, delta, frame_signal, percentiles, pitch_track,
)

VERSION = "serq-fe-2"
ACTIVE_DB = 35.0
SILENCE_DBFS = -55.0


def analyse(samples: np.ndarray, sr: int = SAMPLE_RATE) -> SimpleNamespace:
    """Compute every frame-level descriptor from one STFT.

    Args:
        samples: mono float waveform, shape ``(n,)``, at ``sr`` (must be :data:`SAMPLE_RATE`).
    """
    if sr != SAMPLE_RATE:
        raise ValueError(f"features are defined at {SAMPLE_RATE} Hz, got {sr} Hz: resample first")
    samples = np.asarray(samples, dtype=np.float32)
    mel_fb, chroma_fb, freqs, _ = _filterbanks()
    frames = frame_signal(samples)
    rms_db_all = 20 * np.log10(np.sqrt(np.einsum("ij,ij->i", frames, frames) / N_FFT) + AMIN)
    active_all = rms_db_all > max(rms_db_all.max(initial=-200.0) - ACTIVE_DB, SILENCE_DBFS - 20)
    # Trim leading/trailing silence: everything below is computed on the span from the
    # first to the last active frame (about half of a RAVDESS clip); `active` then also
    # excludes the pauses inside it.
    first, last = np.flatnonzero(active_all)[[0, -1]] if active_all.any() else (0, len(frames) - 1)
    raw, rms_db, active = frames[first : last + 1], rms_db_all[first : last + 1], active_all[first : last + 1]

    spec = sfft.rfft(raw * _window(), axis=1)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    mag = np.sqrt(power)

    mel = power @ mel_fb.T
    logmel = 10 * np.log10(np.maximum(mel, AMIN))
    mfcc = logmel @ _dct_matrix()
    chroma = power @ chroma_fb.T
    chroma /= np.maximum(chroma.max(axis=1, keepdims=True), AMIN)
    contrast = _spectral_contrast(power, freqs)

    mag_sum = np.maximum(mag.sum(axis=1), AMIN)
    centroid = mag @ freqs / mag_sum
    bandwidth = np.sqrt(np.maximum((mag * (freqs[None, :] - centroid[:, None]) ** 2).sum(axis=1) / mag_sum, 0))
    # The first bin whose cumulative magnitude reaches 85 % (cumsum is non-decreasing, so
    # argmax of the mask finds it without counting every bin below).
    reached = np.cumsum(mag, axis=1) >= 0.85 * mag_sum[:, None]
    rolloff = freqs[np.where(reached.any(axis=1), reached.argmax(axis=1), len(freqs) - 1)]
    flatness = np.exp(np.mean(np.log(power + AMIN), axis=1)) / (np.mean(power, axis=1) + AMIN)
    signs = np.signbit(raw)
    zcr = np.mean(signs[:, 1:] != signs[:, :-1], axis=1)
    f0 = pitch_track(samples[first * HOP : (last + 1) * HOP + N_FFT], active, sr)
    voiced = f0 > 0

    peak = float(np.abs(samples).max(initial=0.0))
    total_rms = float(np.sqrt(np.dot(samples, samples) / len(samples))) if len(samples) else 0.0
    return SimpleNamespace(
        power=power,
        logmel=logmel.astype(np.float32),
        frame={
            "rms_db": rms_db, "centroid": centroid, "bandwidth": bandwidth, "rolloff": rolloff,
            "flatness": flatness, "zcr": zcr, "f0": f0,
        },
        matrices={"mfcc": mfcc, "mfcc_delta": delta(mfcc), "chroma": chroma, "contrast": contrast},
        active=active,
        voiced=voiced,
        n_frames=len(frames),
        duration=len(samples) / sr,
        peak_dbfs=20 * np.log10(peak + AMIN),
        rms_dbfs=20 * np.log10(total_rms + AMIN),
    )


_FRAME_SCALARS = ("rms_db", "centroid", "bandwidth", "rolloff", "flatness", "zcr")


def _layout() -> tuple[str, ...]:
    names: list[str] = []
    blocks = [("mfcc", N_MFCC), ("mfcc_delta", N_MFCC), ("chroma", N_CHROMA),
              ("contrast", CONTRAST_BANDS + 1), ("logmel", N_MELS)]
    for block, width in blocks:
        for stat in ("mean", "std"):
            names += [f"{block}_{i:02d}_{stat}" for i in range(width)]
    for name in _FRAME_SCALARS:
        names += [f"{name}_{stat}" for stat in ("mean", "std", "p10", "p90")]
    names += [f"f0_{stat}" for stat in ("mean", "std", "p10", "p50", "p90", "slope")]
    names += ["voiced_fraction", "active_fraction", "active_seconds"]
    return tuple(names)


#: Names of the :func:`feature_vector` entries, in order (stored with every model).
FEATURE_NAMES: tuple[str, ...] = _layout()


def feature_vector(analysis: SimpleNamespace) -> np.ndarray:
    """Summary statistics over active frames, shape ``(len(FEATURE_NAMES),)``, float32.

    Pitch statistics are over voiced frames, in semitones relative to 100 Hz
    (so a speaker's register and its range are on a perceptual scale).
    """
    a = analysis
    sel = a.active if a.active.any() else np.ones_like(a.active)
    parts: list[np.ndarray] = []
    # All matrix blocks side by side: one mean and one std pass instead of one per block.
    blocks = [a.matrices["mfcc"], a.matrices["mfcc_delta"], a.matrices["chroma"], a.matrices["contrast"], a.logmel]
    stacked = np.concatenate(blocks, axis=1)[sel]
    means, stds = stacked.mean(axis=0), stacked.std(axis=0)
    edges = np.cumsum([0] + [b.shape[1] for b in blocks])
    for lo, hi in zip(edges[:-1], edges[1:]):
        parts += [means[lo:hi], stds[lo:hi]]
    scalars = np.stack([a.frame[name][sel] for name in _FRAME_SCALARS])
    p10, p90 = percentiles(scalars, (10, 90))
    parts.append(np.stack([scalars.mean(axis=1), scalars.std(axis=1), p10, p90], axis=1).ravel())
    f0 = a.frame["f0"][a.voiced]
    if len(f0) >= 2:
        st = 12 * np.log2(f0 / 100.0)
        t = np.flatnonzero(a.voiced) * (HOP / SAMPLE_RATE)
        tc = t - t.mean()
        slope = float(tc @ (st - st.mean()) / (tc @ tc)) if tc.any() else 0.0  # least-squares semitones/s
        parts.append(np.array([st.mean(), st.std(), *percentiles(st, (10, 50, 90)), slope]))
    else:
        parts.append(np.zeros(6))
    n = max(int(a.active.sum()), 1)
    parts.append(np.array([a.voiced.sum() / n, a.active.sum() / a.n_frames, a.active.sum() * HOP / SAMPLE_RATE]))
    vec = np.concatenate(parts).astype(np.float32)
    return np.nan_to_num(vec, nan=0.0, posinf=0.0, neginf=0.0)


def extract(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``serq-fe-2``'s vector of a mono 16 kHz waveform (359 values)."""
    return feature_vector(analyse(samples, sample_rate))
