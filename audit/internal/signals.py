"""SIGTERM handled as SIGINT: CI runners cancel a job with SIGTERM, and Python's
default for it ends the process at once, skipping every ``finally`` and
``except BaseException`` that removes a temporary file or folder.  Turned into
KeyboardInterrupt, it unwinds as Ctrl-C does."""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signum} (SIGTERM)")


def terminate_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM raise KeyboardInterrupt in the main thread; returns the function
    that restores the previous handler.  Nothing changes outside the main thread
    (signals are delivered there only) or when a handler other than the default
    is already installed (the host program decided)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous != signal.SIG_DFL:
        return lambda: None
    signal.signal(signal.SIGTERM, _interrupt)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is _interrupt:
            signal.signal(signal.SIGTERM, previous)

    return restore
