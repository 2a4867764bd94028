"""Shared pieces of the in-process labelers (EMT, xTB, OpenMM): a best-effort time limit.

A library call cannot be killed like a process.  In the main thread of a Unix process we arm
``SIGALRM`` (``signal.setitimer``) and turn the alarm into ``TimeLimitExceeded``; the exception
is raised as soon as control returns to Python (a long C call finishes first).  Elsewhere (worker
threads, Windows) the call runs without a limit.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ubmd.labelers.errors import TimeLimitExceeded

T = TypeVar("T")


@contextlib.contextmanager
def time_limit(timeout_s: float | None, workdir: Path | None = None) -> Iterator[None]:
    """Raise ``TimeLimitExceeded`` if the block runs longer than ``timeout_s`` (best effort)."""
    usable = (
        timeout_s is not None
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _alarm(signum: int, frame: object) -> None:
        raise TimeLimitExceeded(f"in-process call exceeded {timeout_s:g} s", workdir=workdir)

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, float(timeout_s))  # type: ignore[arg-type]
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


def call_limited(fn: Callable[[], T], timeout_s: float | None, workdir: Path | None = None) -> T:
    with time_limit(timeout_s, workdir):
        return fn()
