"""A deadline for a whole call to a server: connect, every read, every retry, however slowly it drips.

Socket timeouts bound each read; a server that sends a byte a second never trips one. `deadline(seconds)`
interrupts the call when its time is up (a real-time interval timer, SIGALRM, in the main thread, where
canary's commands run) by raising `DeadlineExceeded`, a BaseException so no library's `except Exception`
can swallow it; the caller turns it into canary's own timeout error. In another thread it is a no-op and
the socket timeouts are what bounds the call.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class DeadlineExceeded(BaseException):
    """The call ran out of time (raised inside it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return
    outer, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer and outer <= seconds:  # an enclosing deadline comes sooner: it alone bounds this call
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise DeadlineExceeded

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
