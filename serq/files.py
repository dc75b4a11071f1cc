"""Finding audio files on disk: one walk for the command line and the dataset scanner."""

from __future__ import annotations

from pathlib import Path

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


def audio_files(root: Path) -> list[Path]:
    """The audio files (by suffix) under ``root``, recursively, sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


