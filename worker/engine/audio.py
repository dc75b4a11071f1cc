"""Audio in: bytes or a path -> validated mono float32 at the analysis rate.

Everything that can be wrong with a clip is caught here, before the expensive
work, and raised as a typed :class:`serq.errors.AudioError`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from serq.audiofile import MAX_CHANNELS, MAX_RATE, check_header, declared_frames, mix_down, open_sound, read_frames
from serq.errors import EmptyAudio, TooLarge, TooLong, TooShort

__all__ = ["ANALYSIS_RATE", "MAX_CHANNELS", "MAX_RATE", "MAX_SAMPLES_PER_SECOND", "MIN_SAMPLES", "Audio", "decode",
           "read_source", "resample"]

#: The one rate every feature is computed at, in Hz.
ANALYSIS_RATE = 16_000
#: The shortest clip we analyse: one STFT window (see :mod:`.features`), in samples.
MIN_SAMPLES = 512
#: Decoded samples (all channels) allowed per second of SERQ_MAX_SECONDS: 8 channels at 48 kHz.
#: A few MB of FLAC silence can declare 8 channels at 655 kHz: gigabytes once decoded.
MAX_SAMPLES_PER_SECOND = 384_000


@dataclass(frozen=True)
class Audio:
    """A decoded clip.

    Attributes:
        samples: mono float32 waveform at :data:`ANALYSIS_RATE`, shape ``(n,)``, in [-1, 1].
        original_rate: the file's own sample rate, in Hz.
        channels: the file's channel count (mixed down to mono here).
        format: libsndfile's format name (``WAV``, ``FLAC``, ``OGG``, ``MP3``...).
    """

    samples: np.ndarray
    original_rate: int
    channels: int
    format: str

    @property
    def sample_rate(self) -> int:
        return ANALYSIS_RATE

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / ANALYSIS_RATE


def read_source(source: bytes | bytearray | memoryview | str | os.PathLike, *, max_bytes: int) -> bytes:
    """Bytes of ``source`` (a path or bytes), refusing empty or oversized input before reading it all."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        size = path.stat().st_size
        if size > max_bytes:
            raise TooLarge(f"{path.name}: {size} bytes exceeds the limit of {max_bytes} bytes (SERQ_MAX_BYTES)")
        data = path.read_bytes()
    if not data:
        raise EmptyAudio("the audio is empty (0 bytes)")
    if len(data) > max_bytes:
        raise TooLarge(f"{len(data)} bytes exceeds the limit of {max_bytes} bytes (SERQ_MAX_BYTES)")
    return data


def decode(
    source: bytes | bytearray | memoryview | str | os.PathLike,
    *,
    max_bytes: int = 32 * 1024 * 1024,
    max_seconds: float | None = 60.0,
    target_rate: int = ANALYSIS_RATE,
) -> Audio:
    """Decode WAV, FLAC, OGG/Vorbis or MP3 into mono float32 at ``target_rate``.

    Args:
        source: the file's bytes, or a path to it.
        max_bytes: refuse larger input (:class:`TooLarge`) before decoding.
        max_seconds: refuse longer audio (:class:`TooLong`), judged from the header
            before decoding and again after; ``None`` disables.
        target_rate: output rate in Hz; resampling uses soxr (high quality).

    Raises:
        EmptyAudio, TooLarge, TooLong, TooShort, UnsupportedFormat, BadAudio.
    """
    data = read_source(source, max_bytes=max_bytes)
    with open_sound(io.BytesIO(data)) as handle:
        check_header(handle, max_seconds, "SERQ_MAX_SECONDS")
        rate, channels, fmt = int(handle.samplerate), int(handle.channels), handle.format
        # Never trust a header's length: read at most what the limit allows, plus one frame.
        limit = -1 if max_seconds is None else int(max_seconds * rate) + 1
        if max_seconds is not None:  # what reading would allocate (soundfile stops at the declared length)
            declared = declared_frames(handle)
            frames_out = limit if declared is None else min(limit, declared)
            if frames_out * channels > max_seconds * MAX_SAMPLES_PER_SECOND:
                raise TooLarge(f"{channels} channels at {rate} Hz decode to {frames_out * channels} samples, over "
                               f"the limit of {MAX_SAMPLES_PER_SECOND} per second of SERQ_MAX_SECONDS")
        frames = read_frames(handle, limit)
    if max_seconds is not None and len(frames) / rate > max_seconds:
        raise TooLong(f"more than {max_seconds:g} s of audio (SERQ_MAX_SECONDS)")
    if frames.size == 0:
        raise EmptyAudio(f"the {fmt} file holds no samples")
    mono = mix_down(frames)
    samples = resample(mono, rate, target_rate)
    np.clip(samples, -1.0, 1.0, out=samples)
    if len(samples) < MIN_SAMPLES:
        raise TooShort(
            f"{len(samples) / target_rate * 1000:.1f} ms of audio is shorter than one analysis window "
            f"({MIN_SAMPLES / target_rate * 1000:.0f} ms)"
        )
    return Audio(samples=samples, original_rate=rate, channels=channels, format=fmt)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono float32 signal with soxr (HQ); a copy is returned either way."""
    if rate == target_rate:
        return np.array(samples, dtype=np.float32, copy=True)
    return soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32, copy=False)

