"""Subsets of the RAVDESS corpus for training tests: directories of per-file symlinks."""

from __future__ import annotations

from pathlib import Path


def link_actors(ravdess: Path, dest: Path, actors: list[int]) -> Path:
    """``dest/Actor_XX/*.flac`` as per-file symlinks into the corpus (directory scans do not follow linked
    folders); returns ``dest``."""
    for actor in actors:
        folder = dest / f"Actor_{actor:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for clip in sorted((ravdess / folder.name).glob("*.flac")):
            (folder / clip.name).symlink_to(clip)
    return dest


def make_subset(root: Path, ravdess: Path, actors: list[int], name: str) -> str:
    """:func:`link_actors` into ``root/name`` (a dataset under a data root); returns ``name``."""
    link_actors(ravdess, root / name, actors)
    return name
