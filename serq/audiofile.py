"""Audio files in: the checks every decoder shares, and the block reader the light client streams with.

One set of guards (:func:`open_sound`, :func:`check_header`, :func:`read_frames`,
:func:`mix_down`) serves both :func:`serq.worker.engine.audio.decode` (a whole clip)
and :func:`read_blocks` (a file as blocks, for timelines). Only numpy and soundfile
here, so the base install streams files (soxr, from the ``worker`` extra, is needed
only to resample files that are not at the requested rate).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import IO

import numpy as np
import soundfile as sf

from serq.errors import BadAudio, EmptyAudio, TooLong, UnsupportedFormat

#: Beyond this many channels a file is refused (libsndfile allows up to 1024).
MAX_CHANNELS = 64
#: Beyond this sample rate (Hz) a header is forged: resampling from it costs seconds of CPU for nothing.
MAX_RATE = 768_000
#: A header's frame count at or beyond this is "unknown" (libsndfile's sentinel for streams).
_UNKNOWN_FRAMES = 2**62
#: Most samples (all channels) one block of :func:`read_blocks` holds: 16 MB, whatever a header claims.
MAX_BLOCK_SAMPLES = 2**22


def open_sound(source: str | os.PathLike | IO[bytes]) -> sf.SoundFile:
    """``source`` opened by libsndfile; :class:`UnsupportedFormat` if it is no audio file it reads."""
    try:
        return sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise UnsupportedFormat(f"not a readable WAV, FLAC, OGG/Vorbis or MP3 file ({_reason(exc)})") from None


def check_header(handle: sf.SoundFile, max_seconds: float | None, setting: str) -> None:
    """Refuse an implausible rate or channel count, and a declared length over ``max_seconds`` (named ``setting``)."""
    rate, channels = int(handle.samplerate), int(handle.channels)
    if not 0 < rate <= MAX_RATE or channels <= 0 or channels > MAX_CHANNELS:
        raise BadAudio(f"implausible header: {rate} Hz, {channels} channels")
    if max_seconds is not None and declared_frames(handle) and handle.frames / rate > max_seconds:
        raise TooLong(f"{handle.frames / rate:.1f} s exceeds the limit of {max_seconds:g} s ({setting})")


def declared_frames(handle: sf.SoundFile) -> int | None:
    """The header's frame count, or ``None`` where it does not say (never trusted beyond a first check)."""
    return handle.frames if 0 < handle.frames < _UNKNOWN_FRAMES else None


def read_frames(handle: sf.SoundFile, frames: int) -> np.ndarray:
    """Up to ``frames`` frames (``-1``: all) as float32 ``(n, channels)``; :class:`BadAudio` if the data is corrupt."""
    try:
        return handle.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, MemoryError) as exc:
        raise BadAudio(f"the {handle.format} data is corrupt ({_reason(exc)})") from None


def mix_down(frames: np.ndarray) -> np.ndarray:
    """Finite float32 ``(n, channels)`` frames -> mono in [-1, 1]; :class:`BadAudio` on NaN or infinity.

    Each channel is clipped before mixing: float files may hold values up to 3.4e38, and
    mixing two such channels overflows to inf, which resampling turns into NaN.
    """
    if not np.all(np.isfinite(frames)):
        raise BadAudio("the audio contains NaN or infinite samples")
    np.clip(frames, -1.0, 1.0, out=frames)
    return frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]


def read_blocks(path: str | os.PathLike, rate_out: int, *, block_s: float = 1.0,
                max_seconds: float | None = None) -> Iterator[np.ndarray]:
    """Yield a file's audio as mono float32 blocks at ``rate_out`` Hz, never holding more than a block.

    Reads ``block_s`` seconds at a time with soundfile and resamples with a
    streaming soxr resampler when the file is not at ``rate_out``.

    Raises:
        UnsupportedFormat, BadAudio, EmptyAudio, TooLong (beyond ``max_seconds``);
        OSError when the file cannot be opened.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", str(path))
    with open_sound(path) as handle:
        check_header(handle, max_seconds, "SERQ_MAX_RECORDING_SECONDS")
        rate = int(handle.samplerate)
        resampler = None
        if rate != rate_out:
            import soxr  # lazy: the worker extra, needed only for files at another rate

            resampler = soxr.ResampleStream(rate, rate_out, 1, dtype="float32", quality="HQ")
        seen = 0
        blocksize = max(1, min(int(block_s * rate), MAX_BLOCK_SAMPLES // int(handle.channels)))
        while True:
            block = read_frames(handle, blocksize)
            last = len(block) < blocksize
            seen += len(block)
            if max_seconds is not None and seen / rate > max_seconds:
                raise TooLong(f"more than {max_seconds:g} s of audio (SERQ_MAX_RECORDING_SECONDS)")
            mono = mix_down(block)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            if len(mono):
                yield np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)
            if last:
                break
        if seen == 0:
            raise EmptyAudio(f"the {handle.format} file holds no samples")


def _reason(exc: Exception) -> str:
    text = str(exc)
    # libsndfile prefixes "Error opening <_io.BytesIO object at 0x...>: "; keep only the reason.
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text
