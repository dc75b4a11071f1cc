"""Channel augmentation: training copies of a clip as other microphones, lines, codecs and rooms would deliver it.

The model only ever heard RAVDESS's studio. Each training clip gets
:data:`CHANNEL_COPIES` extra copies through a random chain (:func:`channel_chain`)
built from audiomentations (noise colours, band-pass, pitch, gain, impulse
responses) with three channels audiomentations has no codec-free form of, as its
own transforms: a phone line (8 kHz, band-limited, mu-law or A-law), lossy codecs
(MP3, Opus, Vorbis) and rooms, whose impulse responses pyroomacoustics simulates
(:func:`room_impulse_responses`). Copies only ever join training folds, and like
the speed copies they are cached (:mod:`.extraction`), keyed by
:data:`AUGMENT_VERSION`.

Every random draw comes from a seed derived from the clip's content and the copy's
index (:func:`copy_seed`), so the same clip always gets the same copies. The speaker
model's copies are drawn per speaker instead (:func:`speaker_channel_copy`): every clip
of a speaker's copy goes through the same channel, as a profile sees one caller on one line.

The same building blocks (:func:`phone_line`, :func:`codec_roundtrip`,
:func:`add_noise`, :func:`reverberate`) with fixed parameters are the evaluation
conditions of :mod:`.conditions`.
"""

from __future__ import annotations

import io
import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy import signal

from serq.worker.engine.audio import ANALYSIS_RATE
from serq.worker.engine.features import N_FFT, active_frames, frame_signal, speech_level_db

#: Bump whenever the chain or its parameters change: cached copies are keyed by it.
AUGMENT_VERSION = "chan-1"
#: Channel-augmented copies per training clip in the shipped recipe (beside the speed copies).
CHANNEL_COPIES = 3
#: Rooms simulated for the training chain (RT60 0.2-1.0 s); the evaluation room is not among them.
N_ROOMS = 24
ROOM_SEED = 1234

RATE = ANALYSIS_RATE
PHONE_RATE = 8_000


# ---------------------------------------------------------------- building blocks (pure, seeded by argument)


def fit_length(samples: np.ndarray, n: int) -> np.ndarray:
    """``samples`` cut or zero-padded to ``n``, float32."""
    out = np.zeros(n, np.float32)
    m = min(n, len(samples))
    out[:m] = samples[:m]
    return out


def codec_roundtrip(samples: np.ndarray, fmt: str, subtype: str, rate: int = RATE, *,
                    compression_level: float | None = None) -> np.ndarray:
    """Encode and decode through libsndfile (soundfile): ``("MP3", "MPEG_LAYER_III")``, ``("OGG", "OPUS")``,
    ``("WAV", "ULAW")``...; ``compression_level`` 0 (best) .. <1 (smallest). Same length out, float32."""
    buf = io.BytesIO()
    extra = {} if compression_level is None else {"compression_level": compression_level}
    if fmt == "MP3":
        extra["bitrate_mode"] = "CONSTANT"
    sf.write(buf, np.clip(samples, -1.0, 1.0), rate, format=fmt, subtype=subtype, **extra)
    buf.seek(0)
    decoded, _ = sf.read(buf, dtype="float32", always_2d=True)
    return fit_length(decoded.mean(axis=1), len(samples))


def mp3_level(kbps: float) -> float:
    """libsndfile's MP3 ``compression_level`` for a constant bitrate at 16 kHz (MPEG-2 layer III:
    8..160 kbit/s, mapped linearly from level 0 to 1 and rounded to the nearest allowed rate)."""
    return float(np.clip((160.0 - kbps) / 152.0, 0.0, 0.99))


def phone_line(samples: np.ndarray, *, law: str = "ULAW", low_hz: float = 300.0, high_hz: float = 3400.0,
               rate: int = RATE) -> np.ndarray:
    """A telephone channel: down to 8 kHz, band-passed (4th-order Butterworth), G.711 companding
    (``ULAW``/``ALAW``, or ``PCM_16`` for a linear line) through libsndfile, and back to ``rate``."""
    narrow = soxr.resample(samples, rate, PHONE_RATE, quality="HQ")
    sos = signal.butter(4, [low_hz, high_hz], btype="bandpass", fs=PHONE_RATE, output="sos")
    line = codec_roundtrip(signal.sosfilt(sos, narrow).astype(np.float32), "WAV", law, PHONE_RATE)
    return fit_length(soxr.resample(line, PHONE_RATE, rate, quality="HQ"), len(samples))


def speech_level(samples: np.ndarray) -> float:
    """Active-speech level in dB (the engine's own measure, so "SNR" means the same everywhere)."""
    frames = frame_signal(np.asarray(samples, np.float32))
    power = np.einsum("ij,ij->i", frames, frames).astype(np.float64) / N_FFT
    return speech_level_db(power, active_frames(10 * np.log10(power + 1e-30)))


def add_noise(samples: np.ndarray, snr_db: float, rng: np.random.Generator, colour: float = 0.0) -> np.ndarray:
    """Gaussian noise at ``snr_db`` below the active-speech level (not the whole clip's: RAVDESS clips
    are half silence, so that would flatter the SNR by ~3 dB); ``colour`` is the power spectrum's slope
    exponent (0 white, -1 pink, -2 brown). Not clipped."""
    noise = rng.standard_normal(len(samples))
    if colour:
        f = np.fft.rfftfreq(len(samples))
        f[0] = f[1]
        noise = np.fft.irfft(np.fft.rfft(noise) * f ** (colour / 2), len(samples))
    level = speech_level(samples)
    if not np.isfinite(level):
        return samples.astype(np.float32)
    noise *= 10 ** ((level - snr_db) / 20) / max(float(np.sqrt(np.mean(noise**2))), 1e-12)
    return (samples + noise).astype(np.float32)


def room_impulse_response(rt60: float, seed: int, rate: int = RATE) -> np.ndarray:
    """One shoebox room's impulse response (pyroomacoustics image source method), peak 1, float32.

    Room size (4-8 x 3-6 x 2.5-3.5 m), source and microphone positions are drawn
    from ``seed``; wall absorption comes from Sabine's formula for ``rt60`` seconds.
    """
    import pyroomacoustics as pra  # lazy: the train extra's heaviest import, only when a room is built

    rng = np.random.default_rng(seed)
    dims = np.array([rng.uniform(4, 8), rng.uniform(3, 6), rng.uniform(2.5, 3.5)])
    absorption, max_order = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(dims, fs=rate, materials=pra.Material(absorption), max_order=min(max_order, 17))
    room.add_source(dims * rng.uniform(0.2, 0.8, 3))
    room.add_microphone(dims * rng.uniform(0.2, 0.8, 3))
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], np.float64)
    return (rir / np.abs(rir).max()).astype(np.float32)


def reverberate(samples: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``samples`` convolved with ``rir``, same length and peak as the dry clip, float32."""
    wet = signal.fftconvolve(samples, rir)[: len(samples)]
    peak_wet, peak_dry = float(np.abs(wet).max(initial=0.0)), float(np.abs(samples).max(initial=0.0))
    return (wet * (peak_dry / peak_wet) if peak_wet > 0 else wet).astype(np.float32)


# ---------------------------------------------------------------- the training chain (audiomentations)


def room_impulse_responses(folder: Path, n: int = N_ROOMS, seed: int = ROOM_SEED) -> Path:
    """Write ``n`` simulated rooms (RT60 0.2-1.0 s, seeded) as WAV files under ``folder`` once; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        rt60 = float(rng.uniform(0.2, 1.0))
        path = folder / f"room{i:02d}.wav"
        if not path.exists():
            tmp = path.with_suffix(".tmp.wav")
            sf.write(tmp, room_impulse_response(rt60, seed + 1 + i), RATE, subtype="FLOAT")
            tmp.replace(path)
    return folder


def _transforms():
    """The audiomentations transform classes serq adds (imported only where a chain is built)."""
    # lazy: the train extra; the evaluation conditions (.conditions) import this module without needing it
    from audiomentations.core.transforms_interface import BaseWaveformTransform

    class PhoneLine(BaseWaveformTransform):
        """:func:`phone_line` with a random pass band (200-400 Hz to 3-3.7 kHz) and companding law."""

        supports_multichannel = False

        def randomize_parameters(self, samples, sample_rate):
            super().randomize_parameters(samples, sample_rate)
            if self.parameters["should_apply"]:
                self.parameters["law"] = random.choice(["ULAW", "ALAW", "PCM_16"])
                self.parameters["low_hz"] = random.uniform(200.0, 400.0)
                self.parameters["high_hz"] = random.uniform(3000.0, 3700.0)

        def apply(self, samples, sample_rate):
            p = self.parameters
            return phone_line(samples, law=p["law"], low_hz=p["low_hz"], high_hz=p["high_hz"], rate=sample_rate)

    class LossyCodec(BaseWaveformTransform):
        """:func:`codec_roundtrip` through MP3, Opus or Vorbis at a random compression level."""

        supports_multichannel = False

        def randomize_parameters(self, samples, sample_rate):
            super().randomize_parameters(samples, sample_rate)
            if self.parameters["should_apply"]:
                self.parameters["codec"] = random.choice([("MP3", "MPEG_LAYER_III"), ("OGG", "OPUS"),
                                                          ("OGG", "VORBIS")])
                self.parameters["level"] = random.uniform(0.3, 0.95)

        def apply(self, samples, sample_rate):
            fmt, subtype = self.parameters["codec"]
            return codec_roundtrip(samples, fmt, subtype, sample_rate, compression_level=self.parameters["level"])

    return PhoneLine, LossyCodec


def channel_chain(rooms: Path):
    """The random chain a training copy goes through (audiomentations ``Compose``).

    One channel at most (phone line, a simulated room, or a band-pass microphone)
    with probability 0.7; coloured noise at 0-30 dB SNR with 0.6; a lossy codec with
    0.3; a pitch shift of up to 1.5 semitones with 0.3; a gain of -12..+6 dB with 0.5.
    """
    import audiomentations as A  # lazy: the train extra (see _transforms)

    PhoneLine, LossyCodec = _transforms()
    return A.Compose([
        A.OneOf([
            PhoneLine(p=1.0),
            A.ApplyImpulseResponse(ir_path=str(rooms), p=1.0, leave_length_unchanged=True),
            A.BandPassFilter(min_center_freq=800.0, max_center_freq=2000.0, min_bandwidth_fraction=1.0,
                             max_bandwidth_fraction=1.9, p=1.0),
        ], p=0.7),
        A.AddColorNoise(min_snr_db=0.0, max_snr_db=30.0, p=0.6),
        LossyCodec(p=0.3),
        A.PitchShift(min_semitones=-1.5, max_semitones=1.5, p=0.3),
        A.Gain(min_gain_db=-12.0, max_gain_db=6.0, p=0.5),
    ])


def copy_seed(digest: str, index: int) -> int:
    """The seed of copy ``index`` of the clip whose content hash is ``digest`` (hex)."""
    return (int(digest[:15], 16) * 31 + index) % (2**32)


@lru_cache(maxsize=4)
def _chain(rooms: str):
    return channel_chain(Path(rooms))


def speaker_seed(speaker: str, index: int) -> int:
    """The seed of channel copy ``index`` of every clip of ``speaker`` (:func:`speaker_channel_copy`)."""
    import hashlib

    return copy_seed(hashlib.sha256(f"speaker:{speaker}".encode()).hexdigest(), index)


def channel_copy(samples: np.ndarray, digest: str, index: int, rooms: Path) -> np.ndarray:
    """Copy ``index`` of a clip through :func:`channel_chain`, seeded by :func:`copy_seed`; float32 in [-1, 1]."""
    return seeded_channel_copy(samples, copy_seed(digest, index), rooms)


def speaker_channel_copy(samples: np.ndarray, speaker: str, index: int, rooms: Path) -> np.ndarray:
    """Copy ``index`` of a clip of ``speaker`` with the channel every clip of that speaker's copy gets.

    The chain's draws (which channel, room, noise colour and SNR, codec, pitch, gain) come from
    :func:`speaker_seed`: a speaker copy is one speaker on one line, as a profile sees a real
    caller, so the speaker model can learn what a profile enrolled on that line makes of it.
    """
    return seeded_channel_copy(samples, speaker_seed(speaker, index), rooms)


def seeded_channel_copy(samples: np.ndarray, seed: int, rooms: Path) -> np.ndarray:
    """``samples`` through :func:`channel_chain` with every draw from ``seed``; float32 in [-1, 1].

    audiomentations draws from Python's and numpy's global generators: both are
    seeded here, immediately before the chain runs, so a copy never depends on what ran before.
    """
    chain = _chain(str(rooms))
    random.seed(seed)
    np.random.seed(seed)
    out = chain(samples=np.asarray(samples, np.float32), sample_rate=RATE)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0).astype(np.float32)
