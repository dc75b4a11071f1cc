"""Reading audio files in blocks: the timeline's file reader, shared by the light client.

Only numpy and soundfile at module level, so the base install streams files
(soxr, from the ``worker`` extra, is needed only to resample files that are not 16 kHz).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import soundfile as sf

from serq.errors import BadAudio, EmptyAudio, TooLong, UnsupportedFormat


def read_blocks(path: str | os.PathLike, rate_out: int, *, block_s: float = 1.0,
                max_seconds: float | None = None) -> Iterator[np.ndarray]:
    """Yield a file's audio as mono float32 blocks at ``rate_out`` Hz, never holding more than a block.

    Reads ``block_s`` seconds at a time with soundfile and resamples with a
    streaming soxr resampler when the file is not at :data:`RATE`.

    Raises:
        UnsupportedFormat, BadAudio, EmptyAudio, TooLong (beyond ``max_seconds``);
        OSError when the file cannot be opened.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", str(path))
    try:
        handle = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise UnsupportedFormat(f"not a readable WAV, FLAC, OGG/Vorbis or MP3 file ({exc})") from None
    with handle:
        rate = int(handle.samplerate)
        if rate <= 0 or handle.channels <= 0:
            raise BadAudio(f"implausible header: {rate} Hz, {handle.channels} channels")
        if max_seconds is not None and 0 < handle.frames < 2**62 and handle.frames / rate > max_seconds:
            raise TooLong(f"{handle.frames / rate:.1f} s exceeds the limit of {max_seconds:g} s (SERQ_MAX_RECORDING_SECONDS)")
        resampler = None
        if rate != rate_out:
            import soxr

            resampler = soxr.ResampleStream(rate, rate_out, 1, dtype="float32", quality="HQ")
        seen = 0
        blocksize = max(1, int(block_s * rate))
        while True:
            try:
                block = handle.read(blocksize, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
                raise BadAudio(f"the {handle.format} data is corrupt ({exc})") from None
            last = len(block) < blocksize
            seen += len(block)
            if max_seconds is not None and seen / rate > max_seconds:
                raise TooLong(f"more than {max_seconds:g} s of audio (SERQ_MAX_RECORDING_SECONDS)")
            if not np.all(np.isfinite(block)):
                raise BadAudio("the audio contains NaN or infinite samples")
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            if len(mono):
                yield np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)
            if last:
                break
        if seen == 0:
            raise EmptyAudio(f"the {handle.format} file holds no samples")
