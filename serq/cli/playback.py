"""Local playback of a clip for the demo bot (simpleaudio, the ``bot`` extra).

The clip is played as the file holds it (its own rate and channels, 16-bit), so what
you hear is the file, not serq's 16 kHz analysis copy. Playback blocks until the
clip ends and stops at once on Ctrl-C. Without a sound device (a server, a
container, CI) :func:`play` raises :class:`PlaybackUnavailable`, a one-line reason,
and the caller carries on.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from serq.errors import SerqError, UnsupportedFormat

#: Rates simpleaudio accepts; anything else is resampled to 48 kHz first.
SUPPORTED_RATES = frozenset({8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 192000})
FALLBACK_RATE = 48_000


class PlaybackUnavailable(SerqError):
    """No audio output: simpleaudio missing, or no sound device could be opened."""

    code = "no_sound_device"


@dataclass(frozen=True)
class Played:
    """What was sent to the sound device."""

    path: Path
    sample_rate: int  # Hz, as sent to the device
    channels: int
    frames: int
    interrupted: bool = False

    @property
    def duration(self) -> float:
        """Seconds of audio sent (not wall time: a null device takes none)."""
        return self.frames / self.sample_rate


def pcm16(path: str | Path) -> tuple[np.ndarray, int]:
    """The file's samples as int16, shape ``(frames, channels)`` with 1 or 2 channels, and a rate simpleaudio plays.

    More than 2 channels are mixed to mono; an unusual rate is linearly resampled to 48 kHz.
    Raises :class:`SerqError` (``not_found``, ``unsupported_format``) for unreadable files.
    """
    path = Path(path)
    if not path.is_file():
        raise SerqError(f"no such file: {path}", code="not_found")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise UnsupportedFormat(f"{path.name}: not a playable WAV, FLAC, OGG or MP3 file ({exc})") from None
    if data.shape[1] > 2:
        data = data.mean(axis=1, keepdims=True)
    if rate not in SUPPORTED_RATES and len(data):
        n_out = int(round(len(data) * FALLBACK_RATE / rate))
        t_in, t_out = np.arange(len(data)) / rate, np.arange(n_out) / FALLBACK_RATE
        data = np.stack([np.interp(t_out, t_in, ch) for ch in data.T], axis=1)
        rate = FALLBACK_RATE
    pcm = (np.clip(data, -1.0, 1.0) * 32767.0).round().astype("<i2")
    return np.ascontiguousarray(pcm), int(rate)


@contextlib.contextmanager
def _quiet_stderr():
    """Hide what libasound prints on fd 2 while a device is opened (a dozen lines per failure)."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def play(path: str | Path, *, poll: float = 0.02) -> Played:
    """Play ``path`` on the default sound device and wait until it ends (Ctrl-C stops it).

    Raises :class:`PlaybackUnavailable` when there is no way to play sound, and the
    errors of :func:`pcm16` for files that cannot be read.
    """
    pcm, rate = pcm16(path)
    try:
        import simpleaudio  # lazy: the bot extra, optional
    except ImportError:
        raise PlaybackUnavailable("playback needs simpleaudio: pip install 'serq[bot]'") from None
    try:
        with _quiet_stderr():
            handle = simpleaudio.play_buffer(pcm.tobytes(), pcm.shape[1], 2, rate)
    except Exception as exc:  # _simpleaudio.SimpleaudioError: no device, busy device
        reason = str(exc).split(" -- MSG: ")[-1].strip() or exc.__class__.__name__
        raise PlaybackUnavailable(f"no sound device could be opened ({reason}); playback skipped") from None
    interrupted = False
    try:
        while handle.is_playing():
            time.sleep(poll)
    except KeyboardInterrupt:
        handle.stop()
        interrupted = True
    return Played(Path(path), rate, pcm.shape[1], len(pcm), interrupted)
