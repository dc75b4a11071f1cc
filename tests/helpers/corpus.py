"""Subsets of the corpora for tests: RAVDESS directories of per-file symlinks, TurEV clips and CSV manifests."""

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


#: TurEV-DB's speakers (Turkish, 4 emotions; 1157 has only angry and sad). Evaluation and tests only: a test may
#: adapt or train a throwaway model on it in a temp dir; never commit one, never copy the clips into the repo.
TUREV_SPEAKERS = ("1157", "1234", "1358", "1984", "6783", "7895")


def turev_clips(turev: Path, speakers, per_emotion: int | None = None,
                emotions=("angry", "calm", "happy", "sad")) -> list[tuple[Path, str, str]]:
    """``(path, emotion, speaker)`` of TurEV clips (``<Emotion>/<speaker>_<code>_<word>.flac``), sorted;
    at most ``per_emotion`` per speaker and emotion."""
    out = []
    for speaker in speakers:
        for emotion in emotions:
            paths = sorted((turev / emotion.capitalize()).glob(f"{speaker}_*.flac"))
            out += [(p, emotion, speaker) for p in paths[:per_emotion]]
    return out


def write_manifest(path: Path, clips: list[tuple[Path, str, str]]) -> Path:
    """A CSV manifest ``path,label,speaker`` (absolute clip paths) for ``clips``."""
    lines = ["path,label,speaker"] + [f"{p},{label},{speaker}" for p, label, speaker in clips]
    path.write_text("\n".join(lines) + "\n")
    return path
