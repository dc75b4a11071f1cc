"""A per-request time limit on the compute thread (dramatiq's ``time_limit`` middleware idea).

A watchdog raises :class:`serq.errors.TimeLimitExceeded` asynchronously in a thread whose
request has run past its limit (``PyThreadState_SetAsyncExc``, as dramatiq does). The
exception lands at the next Python bytecode: a long numpy call finishes first, a Python
loop (a forged timeline state, say) is interrupted at once. The request is answered
``time_limit``; ``/healthz`` reports 503 while anything is in flight past the limit.

An asynchronous exception can be swallowed where it lands: soundfile decodes bytes through
cffi callbacks into Python, and an exception raised inside one is printed ("Exception
ignored from cffi callback") and dropped, the read callback returning nothing. So the
watchdog does not fire once and trust it: it fires again at every poll while the request
is past its deadline, and a request it fired at is answered ``time_limit`` even when the
handler returns (its result may come from a decode cut short by a swallowed interruption).

The bookkeeping survives an interruption landing anywhere, even in :meth:`TimeLimit.call`'s
own ``finally``: the watchdog fires only at a thread whose ``call`` frame is on its stack,
and forgets a request whose frame has left it, so nothing ever lands after the call or in
the next request's place.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from serq.errors import TimeLimitExceeded

T = TypeVar("T")


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Set (or, with ``None``, clear) the pending asynchronous exception of ``thread_id``."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


def _on_stack(frame: FrameType, top: FrameType | None) -> bool:
    """Whether ``frame`` is ``top`` or one of its callers."""
    while top is not None:
        if top is frame:
            return True
        top = top.f_back
    return False


class _Request:
    __slots__ = ("deadline", "fired", "frame")

    def __init__(self, deadline: float, frame: FrameType):
        self.deadline, self.frame, self.fired = deadline, frame, False


class TimeLimit:
    """``limit.call(fn, *args)`` runs ``fn`` and interrupts it if it outlives ``seconds``."""

    def __init__(self, seconds: float, poll_s: float = 0.25):
        self.seconds, self.poll_s = seconds, poll_s
        self._lock = threading.Lock()
        self._running: dict[int, _Request] = {}  # thread id -> its request in flight
        self.exceeded = 0  # how many requests were interrupted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="serq-time-limit", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)``, or :class:`TimeLimitExceeded` once it has run past the limit."""
        tid = threading.get_ident()
        request = _Request(time.monotonic() + self.seconds, sys._getframe())
        with self._lock:
            self._running[tid] = request  # replaces whatever an earlier call left behind
        try:
            result = fn(*args)
        finally:
            with self._lock:  # the watchdog fires only under this lock: nothing is set after it
                if self._running.get(tid) is request:
                    del self._running[tid]
                _raise_in(tid, None)  # an interruption set as the call ended never lands elsewhere
            request.frame = None  # no cycle (frame -> request -> frame) keeps the request's body alive
        if request.fired:  # interrupted, but something swallowed it (a cffi callback): the result is suspect
            raise TimeLimitExceeded()
        return result

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            now = time.monotonic()
            with self._lock:
                frames = sys._current_frames()
                for tid, request in list(self._running.items()):
                    if not _on_stack(request.frame, frames.get(tid)):
                        del self._running[tid]  # its call ended without clearing (interrupted in its finally)
                    elif now > request.deadline:
                        if not request.fired:
                            request.fired = True
                            self.exceeded += 1
                        _raise_in(tid, TimeLimitExceeded)  # again at every poll, until it lands
                del frames

    def close(self) -> None:
        self._stop.set()
