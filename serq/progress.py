"""Progress for long work: a one-line bar on a terminal, with an ETA."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def eta(started: float, done: int, total: int) -> float | None:
    """Seconds left in a stage, by linear extrapolation; ``None`` until there is a rate."""
    elapsed = time.monotonic() - started
    if done <= 0 or total <= 0 or done >= total:
        return None if done < total else 0.0
    return elapsed / done * (total - done)


def progress_printer(stage: str, stream=None) -> Callable[[int, int], None]:
    """``(done, total) -> None`` that redraws ``stage [####....] done/total ETA`` on stderr."""
    stream = stream or sys.stderr
    started = time.monotonic()
    tty = stream.isatty()
    last = [-1.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.2:
            return
        last[0] = now
        width = 28
        fill = int(width * done / total) if total else width
        left = eta(started, done, total)
        line = f"{stage:<17} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}" + (f"  ETA {left:4.0f}s" if left else "")
        if tty:
            stream.write("\r" + line + ("\n" if done >= total else ""))
        elif done >= total:
            stream.write(line + "\n")
        stream.flush()

    return report
