"""A per-request time limit on the compute thread (dramatiq's ``time_limit`` middleware idea).

A watchdog raises :class:`serq.errors.TimeLimitExceeded` asynchronously in a thread whose
request has run past its limit (``PyThreadState_SetAsyncExc``, as dramatiq does). The
exception lands at the next Python bytecode: a long numpy call finishes first, a Python
loop (a forged timeline state, say) is interrupted at once. The request is answered
``time_limit``; ``/healthz`` reports 503 while anything is in flight past the limit.
"""

from __future__ import annotations

import ctypes
import threading
import time
from contextlib import contextmanager

from serq.errors import TimeLimitExceeded


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Set (or, with ``None``, clear) the pending asynchronous exception of ``thread_id``."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


class TimeLimit:
    """``with limit.running(): ...`` interrupts the block if it outlives ``seconds``."""

    def __init__(self, seconds: float, poll_s: float = 0.25):
        self.seconds, self.poll_s = seconds, poll_s
        self._lock = threading.Lock()
        self._running: dict[int, float] = {}  # thread id -> monotonic deadline
        self._fired: set[int] = set()
        self.exceeded = 0  # how many requests were interrupted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="serq-time-limit", daemon=True)
        self._thread.start()

    @contextmanager
    def running(self):
        tid = threading.get_ident()
        with self._lock:
            self._running[tid] = time.monotonic() + self.seconds
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(tid, None)
                if tid in self._fired:  # fired as the block ended: clear it, never let it land elsewhere
                    self._fired.discard(tid)
                    _raise_in(tid, None)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            now = time.monotonic()
            with self._lock:
                for tid, deadline in self._running.items():
                    if now > deadline and tid not in self._fired:
                        self._fired.add(tid)
                        self.exceeded += 1
                        _raise_in(tid, TimeLimitExceeded)

    def close(self) -> None:
        self._stop.set()
