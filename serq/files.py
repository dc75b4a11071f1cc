"""Files on disk: one walk for the command line and the dataset scanner, one bounded read for the
registry and the trainer."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


def audio_files(root: Path) -> list[Path]:
    """The audio files (by suffix) under ``root``, recursively, sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


class FileRefused(Exception):
    """Why :func:`read_regular` read nothing. ``reason``: ``"missing"``, ``"not regular"``, ``"too large"``
    or ``"unreadable"``; ``detail``: the system's words; ``size``: the size of a file too large (``None``
    when it grew past the limit while read)."""

    def __init__(self, reason: str, detail: str = "", size: int | None = None):
        super().__init__(f"{reason}{f' ({detail})' if detail else ''}")
        self.reason, self.detail, self.size = reason, detail, size


def read_regular(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit``; :class:`FileRefused` otherwise.

    Opened non-blocking (a FIFO must not block the open) and checked on the open descriptor, so a
    file swapped for a FIFO, a device or a directory after a check cannot block or flood either;
    the size is refused before reading, and again if the file grew while read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO without a writer, opened non-blocking for reading on some systems
            raise FileRefused("not regular") from None
        reason = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
        raise FileRefused(reason, exc.strerror or exc.__class__.__name__) from None
    try:
        info = os.fstat(fd)  # before any file object: opening one on a directory raises
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused("not regular")
        if info.st_size > limit:
            raise FileRefused("too large", size=info.st_size)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # grew since the fstat
        raise FileRefused("too large")
    return data
