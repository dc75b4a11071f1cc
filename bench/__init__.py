"""serq's benchmarks: speed and accuracy measured as ratios within one run, never asserted in tests.

Every module in this package that defines ``main(argv=None)`` is a benchmark;
``python -m bench`` (or ``./run bench``) runs them all, ``python -m bench NAME...``
some of them, and ``python -m bench.NAME --help`` shows one's own options. Finding them
imports every module, so each imports what it measures inside its functions (lazily: one
benchmark does not pay for the others' stacks).
Results and the commands that produced them are kept in ``bench/README.md``.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def ravdess_dir() -> Path:
    """The RAVDESS corpus (``SERQ_RAVDESS_DIR``, relative paths from the repository root)."""
    from serq.settings import get_settings  # lazy: pydantic, for the benchmarks that read the corpus

    path = Path(get_settings().ravdess_dir).expanduser()
    return path if path.is_absolute() else (Path(__file__).resolve().parents[1] / path).resolve()


def corpus_files(n: int | None = None, root: Path | None = None) -> list[Path]:
    """``n`` RAVDESS clips spread evenly over actors and emotions (all of them if ``n`` is None)."""
    root = root or ravdess_dir()
    files = sorted(root.glob("Actor_*/*.*"))
    if not files:
        raise SystemExit(f"no RAVDESS clips under {root} (set SERQ_RAVDESS_DIR)")
    if n is None or n >= len(files):
        return files
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


def machine() -> dict:
    """What the figures were measured on: a ratio travels, an absolute time needs this."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(load[0], 2),
    }
