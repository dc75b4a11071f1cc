"""Acoustic features: one STFT per clip, everything derived from it.

The core is :func:`analyse` (waveform -> frame-level descriptors, computed once)
and two pure views of its result: :func:`feature_vector` (the model's input, a
named, versioned layout) and :func:`spectral_summary` (what a person or a client
plots). :func:`extract` is the one-call ``(audio, sample_rate) -> vector`` form.

Frames are 32 ms (512 samples at 16 kHz) every 10 ms. Statistics are taken over
*active* frames only (leading/trailing silence trimmed, pauses excluded): RAVDESS
clips are ~60 % silence, and averaging over it dilutes every descriptor.

Level-free by construction: which frames are active is decided relative to the
clip itself (its loudest frame and its noise floor), and the waveform is scaled
to one active-speech level (:data:`LEVEL_TARGET_DBFS`) before any descriptor is
computed, so the recording gain (a volume knob, peak normalisation) cannot reach
the model. Only :attr:`Analysis.silent` and the spectral summary a person reads
still see the absolute level.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soxr
from scipy import fft as sfft

#: Bump whenever the vector's layout or meaning changes; models store it and refuse a mismatch.
FEATURE_VERSION = "serq-fe-3"

SAMPLE_RATE = 16_000  # Hz; audio is resampled to this before analysis
N_FFT = 512  # samples per frame (32 ms)
HOP = 160  # samples between frames (10 ms)
N_MELS = 64
N_MFCC = 40
N_CHROMA = 12
CONTRAST_BANDS = 6  # octave bands from 100 Hz; +1 row for the residual
FMIN_PITCH, FMAX_PITCH = 65.0, 600.0  # Hz; YIN's search range
YIN_THRESHOLD = 0.2  # cumulative-mean-normalised difference below this = voiced
ACTIVE_DB = 35.0  # frames within this many dB of the loudest frame are "active" ...
NOISE_PERCENTILE = 10.0  # ... and above the noise floor: this percentile of the frame levels ...
NOISE_RANGE_DB = 50.0  # ... of the frames within this of the loudest (digital silence is no noise floor) ...
NOISE_MARGIN_DB = 3.0  # ... plus this margin (steady noise frames vary by well under 1 dB)
HEADROOM_DB = 3.0  # the frames within this of the loudest always count (a clip is never all inactive) ...
DIGITAL_SILENCE_DB = -200.0  # ... unless they are digital silence (zeros): never speech, whatever the gain
#: A clip whose loudest frame is below this is "silent" (the only absolute level that decides anything):
#: 20 dB under the quietest RAVDESS clip turned down 18 dB, 25 dB over 16-bit dither.
SILENCE_DBFS = -75.0
LEVEL_TARGET_DBFS = -26.0  # active-speech level every clip is scaled to before analysis (ITU-T P.56's usual)
N_SPECTRUM_BANDS = N_MELS  # bands in the summary spectrum (the mel bands)
AMIN = 1e-10


@dataclass(frozen=True)
class Analysis:
    """Frame-level descriptors of one clip: ``T`` frames, 10 ms apart, from the first
    to the last active frame (leading/trailing silence trimmed).

    Attributes:
        power: power spectrogram, shape ``(T, N_FFT // 2 + 1)``.
        logmel: log-mel power in dB, shape ``(T, N_MELS)``.
        frame: named 1-D descriptors, each shape ``(T,)`` (``rms_db`` in dB after the
            level normalisation, ``centroid``/``bandwidth``/``rolloff`` in Hz, ``flatness``
            in [0, 1], ``zcr`` crossings per sample, ``alpha_ratio``/``hammarberg`` in dB,
            ``f0`` in Hz with 0 where unvoiced).
        matrices: named 2-D descriptors, each shape ``(T, k)`` (mfcc, mfcc_delta, chroma, contrast).
        active: bool mask ``(T,)`` of frames that carry speech energy (:func:`active_frames`).
        n_frames: frames in the whole clip, trimmed silence included.
        voiced: bool mask ``(T,)``: active frames where YIN found a pitch.
        duration: clip length in seconds.
        peak_dbfs, rms_dbfs: the clip's sample peak and overall RMS, as recorded.
        loudest_dbfs: the loudest frame's RMS as recorded (what :attr:`silent` reads).
        gain_db: the gain that brought the active speech to :data:`LEVEL_TARGET_DBFS`;
            ``power``, ``logmel``, ``rms_db`` and everything derived are after it.
    """

    power: np.ndarray
    logmel: np.ndarray
    frame: dict[str, np.ndarray]
    matrices: dict[str, np.ndarray]
    active: np.ndarray
    voiced: np.ndarray
    n_frames: int
    duration: float
    peak_dbfs: float
    rms_dbfs: float
    loudest_dbfs: float
    gain_db: float

    @property
    def silent(self) -> bool:
        """No frame reaches :data:`SILENCE_DBFS`: decided on the clip's absolute level."""
        return self.loudest_dbfs < SILENCE_DBFS

    @property
    def logmel_dbfs(self) -> np.ndarray:
        """:attr:`logmel` at the clip's own level (dB re full scale), for people and plots."""
        return self.logmel - np.float32(self.gain_db)


#: librosa's filterbanks for this layout, stored: importing librosa costs about a second at every
#: process start (a one-off `serq predict`, each worker). tests/test_features.py checks they are
#: still librosa's; :func:`write_filterbanks` rebuilds the file after a layout change.
FILTERBANKS = Path(__file__).with_name("filterbanks.npz")


def librosa_filterbanks() -> dict[str, np.ndarray]:
    """The mel (``(N_MELS, N_FFT // 2 + 1)``, Slaney) and chroma (``(N_CHROMA, N_FFT // 2 + 1)``)
    filterbanks and the mel band centres in Hz (``(N_MELS,)``), computed by librosa."""
    import librosa  # lazy: about a second of import, only to check or rebuild filterbanks.npz

    return {
        "mel": librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0,
                                   fmax=SAMPLE_RATE / 2).astype(np.float32),
        "chroma": librosa.filters.chroma(sr=SAMPLE_RATE, n_fft=N_FFT, n_chroma=N_CHROMA).astype(np.float32),
        "centres": librosa.mel_frequencies(n_mels=N_MELS + 2, fmin=0.0, fmax=SAMPLE_RATE / 2)[1:-1],
    }


def write_filterbanks(path: Path = FILTERBANKS) -> None:
    """Store :func:`librosa_filterbanks` where :func:`_filterbanks` reads them."""
    np.savez_compressed(path, **librosa_filterbanks())


@lru_cache(maxsize=1)
def _filterbanks() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mel and chroma filterbanks, FFT bin frequencies (Hz), mel centre frequencies (Hz); cached."""
    with np.load(FILTERBANKS) as stored:
        mel, chroma, centres = stored["mel"], stored["chroma"], stored["centres"]
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE).astype(np.float32)
    return mel, chroma, freqs, centres


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    """Periodic Hann window of :data:`N_FFT` samples, float32 (cached)."""
    return np.hanning(N_FFT + 1)[:-1].astype(np.float32)


@lru_cache(maxsize=4)
def _dct_matrix(n_in: int = N_MELS, n_out: int = N_MFCC) -> np.ndarray:
    """Orthonormal DCT-II as a matrix (what librosa's mfcc applies to log-mel)."""
    return sfft.dct(np.eye(n_in), type=2, norm="ortho", axis=0)[:n_out].T.astype(np.float32)


def frame_signal(samples: np.ndarray, frame_length: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """Centred frames, shape ``(T, frame_length)``; zero-padded by half a frame at each end."""
    pad = frame_length // 2
    padded = np.zeros(len(samples) + 2 * pad, np.float32)
    padded[pad : pad + len(samples)] = samples
    n = 1 + (len(padded) - frame_length) // hop
    step = padded.strides[0]
    return np.lib.stride_tricks.as_strided(padded, (n, frame_length), (hop * step, step), writeable=False)


def delta(matrix: np.ndarray, width: int = 2) -> np.ndarray:
    """Regression deltas over +-``width`` frames along axis 0 (edges repeated), shape kept."""
    padded = np.pad(matrix, ((width, width), (0, 0)), mode="edge")
    t = len(matrix)
    num = sum(n * (padded[width + n : width + n + t] - padded[width - n : width - n + t]) for n in range(1, width + 1))
    return num / (2 * sum(n * n for n in range(1, width + 1)))


def yin(frames: np.ndarray, sr: int = SAMPLE_RATE, fmin: float = FMIN_PITCH, fmax: float = FMAX_PITCH,
        threshold: float = YIN_THRESHOLD) -> np.ndarray:
    """YIN fundamental frequency per frame (de Cheveigné & Kawahara, 2002).

    Args:
        frames: raw (unwindowed) frames, shape ``(T, L)``; ``L`` must exceed ``2 * sr / fmin``.
    Returns:
        f0 in Hz, shape ``(T,)``, 0 where no period passes ``threshold`` (unvoiced).
    """
    t, length = frames.shape
    tau_min, tau_max = int(sr / fmax), int(np.ceil(sr / fmin))
    win = length - tau_max - 1
    if win < tau_max // 2:
        raise ValueError(f"frames of {length} samples are too short for fmin={fmin} Hz")
    if t == 0:
        return np.zeros(0)
    # Lags up to tau_max + 1 of a length-`win` template: a circular correlation of this
    # length never wraps into them (far shorter than the full length + win).
    n = sfft.next_fast_len(max(length, win + tau_max + 2), real=True)
    frames = frames.astype(np.float32, copy=False)
    acf = sfft.irfft(sfft.rfft(frames, n) * np.conj(sfft.rfft(frames[:, :win], n)), n)[:, : tau_max + 2]
    cs = np.zeros((t, length + 1), np.float32)  # running energy; float32 is ample over 256 samples
    np.cumsum(frames * frames, axis=1, out=cs[:, 1:])
    taus = np.arange(tau_max + 2)
    energy = cs[:, taus + win] - cs[:, taus]
    diff = np.maximum(energy[:, :1] + energy - 2 * acf, 0.0)
    cum = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * taus[1:] / np.maximum(cum, AMIN)
    inner = cmnd[:, tau_min : tau_max + 1]
    trough = (inner[:, 1:-1] <= inner[:, :-2]) & (inner[:, 1:-1] <= inner[:, 2:]) & (inner[:, 1:-1] < threshold)
    has = trough.any(axis=1)
    idx = trough.argmax(axis=1) + 1  # index within `inner`
    rows = np.arange(t)
    a, b, c = inner[rows, idx - 1], inner[rows, idx], inner[rows, idx + 1]
    denom = a - 2 * b + c
    shift = np.where(np.abs(denom) > AMIN, 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0.0)
    period = tau_min + idx + np.clip(shift, -1, 1)
    return np.where(has, sr / period, 0.0)


def pitch_track(samples: np.ndarray, active: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """f0 in Hz on the analysis frame grid, shape ``active.shape``, 0 where unvoiced.

    YIN runs at half the analysis rate (speech f0 < 600 Hz needs no more) on every
    other active frame (20 ms): a quarter of the work, the same statistics.
    """
    half = soxr.resample(samples, sr, sr // 2, quality="LQ").astype(np.float32, copy=False)
    frames = frame_signal(half, N_FFT // 2, HOP)  # 32 ms frames, every 20 ms at sr/2
    # Coarse frame k is centred on analysis frame 2k and stands for frames 2k and 2k+1.
    pairs = np.pad(active, (0, max(0, 2 * len(frames) - len(active))))[: 2 * len(frames)].reshape(-1, 2)
    pick = pairs.any(axis=1)
    coarse = np.zeros(len(frames))
    coarse[pick] = yin(frames[pick], sr // 2)
    return np.where(active, np.repeat(coarse, 2)[: len(active)], 0.0)


def active_frames(level_db: np.ndarray) -> np.ndarray:
    """Frames that carry speech, from frame levels in dB, shape kept; relative to the clip only.

    Active = within :data:`ACTIVE_DB` of the loudest frame *and* :data:`NOISE_MARGIN_DB`
    above the noise floor (the :data:`NOISE_PERCENTILE` th percentile of the levels of
    frames within :data:`NOISE_RANGE_DB` of the loudest, so zero padding does not hide
    the noise). In a quiet recording the first rule decides; in noise (10 dB SNR puts
    every frame within 35 dB of the loudest) the second keeps the noise-only pauses
    out. Adding a constant to ``level_db`` (a gain) changes nothing.
    """
    if not len(level_db):
        return np.zeros(0, dtype=bool)
    loudest = float(level_db.max())
    floor = float(percentiles(level_db[level_db > loudest - NOISE_RANGE_DB], (NOISE_PERCENTILE,))[0])
    threshold = min(max(loudest - ACTIVE_DB, floor + NOISE_MARGIN_DB), loudest - HEADROOM_DB)
    return (level_db > threshold) & (level_db > DIGITAL_SILENCE_DB)


def speech_level_db(frame_power: np.ndarray, active: np.ndarray) -> float:
    """Active-speech level in dB: the mean power of the active frames (``-inf`` if there is none)."""
    mean = float(frame_power[active].mean()) if active.any() else 0.0
    return 10 * np.log10(mean) if mean > 0 else -np.inf


def _levels(recorded: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(frame levels in dB, active frames, active-speech level in dB)`` of a float32 waveform."""
    frames = frame_signal(recorded)
    frame_power = np.einsum("ij,ij->i", frames, frames).astype(np.float64) / N_FFT
    # Levels down to 1e-30 (-300 dB): no floor that a gain of -30 dB could reach.
    level_db = 10 * np.log10(frame_power + 1e-30)
    active_all = active_frames(level_db)
    return level_db, active_all, speech_level_db(frame_power, active_all)


def waveform_speech_level(samples: np.ndarray) -> float | None:
    """:func:`speech_level` of ``samples`` (mono float at :data:`SAMPLE_RATE`) without the rest of
    :func:`analyse` (training takes it for every clip); ``None`` where :func:`analyse` says silent."""
    recorded = np.asarray(samples, dtype=np.float32)
    level_db, _, level = _levels(recorded)
    if not np.isfinite(level) or float(level_db.max(initial=-300.0)) < SILENCE_DBFS:
        return None
    return LEVEL_TARGET_DBFS - float(np.clip(LEVEL_TARGET_DBFS - level, -150.0, 150.0))


def speech_level(analysis: Analysis) -> float | None:
    """The clip's active-speech level in dB re full scale (what :func:`analyse` scaled away), ``None`` if silent.

    Level-free features cannot see it; only the speaker-profile path reads it, relative to
    the speaker's own level (docs/profiles.md).
    """
    return None if analysis.silent else LEVEL_TARGET_DBFS - analysis.gain_db


def analyse(samples: np.ndarray, sr: int = SAMPLE_RATE) -> Analysis:
    """Compute every frame-level descriptor from one STFT.

    Args:
        samples: mono float waveform, shape ``(n,)``, at ``sr`` (must be :data:`SAMPLE_RATE`).
    """
    if sr != SAMPLE_RATE:
        raise ValueError(f"features are defined at {SAMPLE_RATE} Hz, got {sr} Hz: resample first")
    recorded = np.asarray(samples, dtype=np.float32)
    level_db, active_all, level = _levels(recorded)
    # Level invariance: scale to one active-speech level, then derive everything from that.
    gain_db = float(np.clip(LEVEL_TARGET_DBFS - level, -150.0, 150.0)) if np.isfinite(level) else 0.0
    samples = recorded * np.float32(10 ** (gain_db / 20))
    described = _describe(samples, frame_signal(samples), level_db + gain_db, active_all)
    _, _, freqs, _ = _filterbanks()
    described["frame"]["alpha_ratio"], described["frame"]["hammarberg"] = _effort(described["power"], freqs)

    peak = float(np.abs(recorded).max(initial=0.0))
    total_rms = float(np.sqrt(np.dot(recorded, recorded) / len(recorded))) if len(recorded) else 0.0
    return Analysis(
        **described,
        peak_dbfs=20 * np.log10(peak + AMIN),
        rms_dbfs=20 * np.log10(total_rms + AMIN),
        loudest_dbfs=float(level_db.max(initial=-300.0)),
        gain_db=gain_db,
    )


def _describe(samples: np.ndarray, frames: np.ndarray, rms_db_all: np.ndarray, active_all: np.ndarray) -> dict:
    """The descriptors of :class:`Analysis` that follow from the waveform, its frames and
    which of them are active (all but the level fields and the vocal effort), as a dict
    of its fields. ``bench/fe2.py`` feeds it the previous recipe's activity rule.
    """
    mel_fb, chroma_fb, freqs, _ = _filterbanks()
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
    f0 = pitch_track(samples[first * HOP : (last + 1) * HOP + N_FFT], active, SAMPLE_RATE)
    return {
        "power": power,
        "logmel": logmel.astype(np.float32),
        "frame": {
            "rms_db": rms_db, "centroid": centroid, "bandwidth": bandwidth, "rolloff": rolloff,
            "flatness": flatness, "zcr": zcr, "f0": f0,
        },
        "matrices": {"mfcc": mfcc, "mfcc_delta": delta(mfcc), "chroma": chroma, "contrast": contrast},
        "active": active,
        "voiced": f0 > 0,
        "n_frames": len(frames),
        "duration": len(samples) / SAMPLE_RATE,
    }


def _effort(power: np.ndarray, freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vocal effort without level (eGeMAPS, Eyben et al. 2016), per frame, in dB:
    the alpha ratio (energy 50-1000 Hz over 1-5 kHz) and the Hammarberg index
    (strongest bin below 2 kHz over the strongest in 2-5 kHz). A raised voice tilts
    energy upwards whatever the microphone gain: these carry what loudness did.
    """
    low, high = (freqs >= 50) & (freqs < 1000), (freqs >= 1000) & (freqs < 5000)
    alpha = 10 * np.log10((power[:, low].sum(axis=1) + AMIN) / (power[:, high].sum(axis=1) + AMIN))
    below, above = freqs < 2000, (freqs >= 2000) & (freqs < 5000)
    hammarberg = 10 * np.log10((power[:, below].max(axis=1) + AMIN) / (power[:, above].max(axis=1) + AMIN))
    return alpha, hammarberg


def _spectral_contrast(power: np.ndarray, freqs: np.ndarray, fmin: float = 100.0) -> np.ndarray:
    """Octave-band spectral contrast, shape ``(T, CONTRAST_BANDS + 1)``, in dB.

    Bands are [0, fmin), then octaves from ``fmin``, the last running to Nyquist;
    contrast is the band's peak over its valley (max/min bin: at 31 Hz bins
    librosa's 2 % quantiles are single bins in all but the top bands).
    """
    starts = np.searchsorted(freqs, np.concatenate([[0.0], fmin * 2.0 ** np.arange(CONTRAST_BANDS)]))
    peak = np.maximum.reduceat(power, starts, axis=1)
    valley = np.minimum.reduceat(power, starts, axis=1)
    return 10 * np.log10((peak + AMIN) / (valley + AMIN))


# ---------------------------------------------------------------- the model's input

_FRAME_SCALARS = ("rms_db", "centroid", "bandwidth", "rolloff", "flatness", "zcr", "alpha_ratio", "hammarberg")


def _layout(frame_scalars: tuple[str, ...] = _FRAME_SCALARS) -> tuple[str, ...]:
    names: list[str] = []
    blocks = [("mfcc", N_MFCC), ("mfcc_delta", N_MFCC), ("chroma", N_CHROMA),
              ("contrast", CONTRAST_BANDS + 1), ("logmel", N_MELS)]
    for block, width in blocks:
        for stat in ("mean", "std"):
            names += [f"{block}_{i:02d}_{stat}" for i in range(width)]
    for name in frame_scalars:
        names += [f"{name}_{stat}" for stat in ("mean", "std", "p10", "p90")]
    names += [f"f0_{stat}" for stat in ("mean", "std", "p10", "p50", "p90", "slope")]
    names += ["voiced_fraction", "active_fraction", "active_seconds"]
    return tuple(names)


#: Names of the :func:`feature_vector` entries, in order (stored with every model).
FEATURE_NAMES: tuple[str, ...] = _layout()


def percentiles(x: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Percentiles ``qs`` (0-100) along the last axis, shape ``(len(qs), *x.shape[:-1])``.

    The same values as ``np.percentile`` (linear interpolation) from one sort, without
    its per-call overhead, which dominated on arrays of a few hundred frames.
    """
    v = np.sort(x, axis=-1)
    pos = np.asarray(qs, dtype=np.float64) / 100.0 * (v.shape[-1] - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, v.shape[-1] - 1)
    frac = pos - lo
    below, above = v[..., lo], v[..., hi]
    return np.moveaxis(below + (above - below) * frac, -1, 0)


def feature_vector(analysis: Analysis) -> np.ndarray:
    """Summary statistics over active frames, shape ``(len(FEATURE_NAMES),)``, float32.

    Pitch statistics are over voiced frames, in semitones relative to 100 Hz
    (so a speaker's register and its range are on a perceptual scale).
    """
    return _statistics(analysis, _FRAME_SCALARS)


def _statistics(a: Analysis, frame_scalars: tuple[str, ...]) -> np.ndarray:
    """:func:`feature_vector` over the named frame descriptors (``bench/fe2.py`` names fewer)."""
    sel = a.active if a.active.any() else np.ones_like(a.active)
    parts: list[np.ndarray] = []
    # All matrix blocks side by side: one mean and one std pass instead of one per block.
    blocks = [a.matrices["mfcc"], a.matrices["mfcc_delta"], a.matrices["chroma"], a.matrices["contrast"], a.logmel]
    stacked = np.concatenate(blocks, axis=1)[sel]
    means, stds = stacked.mean(axis=0), stacked.std(axis=0)
    edges = np.cumsum([0] + [b.shape[1] for b in blocks])
    for lo, hi in zip(edges[:-1], edges[1:]):
        parts += [means[lo:hi], stds[lo:hi]]
    scalars = np.stack([a.frame[name][sel] for name in frame_scalars])
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


def extract(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``(audio, sample_rate) -> vector``: the pure function a model consumes.

    ``audio`` is mono float at :data:`SAMPLE_RATE`; the layout is :data:`FEATURE_NAMES`,
    versioned by :data:`FEATURE_VERSION`.
    """
    return feature_vector(analyse(audio, sample_rate))


# ---------------------------------------------------------------- the summary a person reads


def mean_db(db: np.ndarray) -> np.ndarray:
    """Power mean of dB values over axis 0, in dB: ``(T, B) -> (B,)``; ``10·log10(mean(10^(db/10)))``."""
    peak = db.max(axis=0)  # factored out: no overflow, no underflow to -inf
    return peak + 10 * np.log10(np.mean(10 ** ((db - peak) / 10), axis=0))


def spectral_summary(analysis: Analysis, original_rate: int) -> dict:
    """What the clip sounds like, in numbers (the ``spectral`` field of every reply).

    Levels are dBFS, frequencies Hz, pitch statistics over voiced frames, spectral
    shape averaged over active frames; ``spectrum`` is the mean mel power of active
    frames in dB re full scale, as recorded, in :data:`N_SPECTRUM_BANDS` bands with their
    centre frequencies. Power is averaged before the log, as for ``dominant_hz``, so the
    spectrum's peak and the dominant frequency are the same energy peak (a mean of dB would
    favour the quiet frames and put the peak elsewhere).
    """
    a = analysis
    _, _, freqs, centres = _filterbanks()
    sel = a.active if a.active.any() else np.ones_like(a.active)
    f0 = a.frame["f0"][a.voiced]
    mean_power = a.power[sel].mean(axis=0)
    k = int(np.argmax(mean_power[1:])) + 1  # skip DC
    if 1 <= k < len(mean_power) - 1:  # parabolic interpolation on the log spectrum
        l, c, r = np.log(mean_power[k - 1 : k + 2] + AMIN)
        den = l - 2 * c + r
        k_f = k + (0.5 * (l - r) / den if den != 0 else 0.0)
    else:
        k_f = float(k)

    def mean(name: str) -> float:
        return round(float(a.frame[name][sel].mean()), 4)

    def pitch(fn) -> float | None:
        return round(float(fn(f0)), 2) if len(f0) else None

    return {
        "duration_s": round(a.duration, 4),
        "sample_rate": int(original_rate),
        "rms_dbfs": round(max(a.rms_dbfs, -200.0), 2),
        "peak_dbfs": round(max(a.peak_dbfs, -200.0), 2),
        "active_fraction": round(float(a.active.sum() / a.n_frames), 4),
        "pitch": {
            "median_hz": pitch(np.median), "mean_hz": pitch(np.mean), "min_hz": pitch(np.min),
            "max_hz": pitch(np.max), "std_hz": pitch(np.std),
            "voiced_fraction": round(float(a.voiced.sum() / max(int(sel.sum()), 1)), 4),
        },
        "centroid_hz": mean("centroid"),
        "bandwidth_hz": mean("bandwidth"),
        "rolloff_hz": mean("rolloff"),
        "flatness": mean("flatness"),
        "zcr": mean("zcr"),
        "dominant_hz": round(float(k_f * (freqs[1] - freqs[0])), 2),
        "spectrum": {
            "freqs_hz": [round(float(f), 1) for f in centres],
            "db": [round(float(v), 2) for v in mean_db(a.logmel_dbfs[sel])],
        },
    }
