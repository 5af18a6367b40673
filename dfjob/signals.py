"""SIGTERM and SIGINT for the daemons: caught from the moment `dfjob` starts, handed to the
daemon's stop callback once it runs.

A handler only counts and calls `on_stop(count)`, which must only set flags (and may write a byte
to a wake-up pipe). A stop that arrives before a daemon runs, while it imports or waits for its
database, is kept and delivered the moment it does, so a daemon stopped at any moment exits 0.
Commands that are not daemons get the default handling back (`release`) as soon as they are known.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received = 0
_last_signal: int | None = None
_callback: Callable[[int], None] | None = None
# Set on the first stop signal: a daemon waiting for its database wakes on it.
stopped = threading.Event()


def _handler(signum: int, frame: FrameType | None) -> None:
    global _received, _last_signal
    _received += 1
    _last_signal = signum
    stopped.set()
    if _callback is not None:
        _callback(_received)


def catch_early() -> None:
    """From now on, stop signals are counted rather than acted on (the entry point's first step)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)


def release() -> None:
    """Back to the default handling (commands that are not daemons); a signal already caught is
    delivered again, now with its default effect."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if _last_signal is not None:
        os.kill(os.getpid(), _last_signal)


@contextmanager
def on_stop(callback: Callable[[int], None]) -> Iterator[None]:
    """Call `callback(n)` on the n-th stop signal while inside the block, counting any that came
    before it (they are delivered at once)."""
    global _callback
    previous = {sig: signal.signal(sig, _handler) for sig in STOP_SIGNALS}
    _callback = callback
    try:
        if _received:
            callback(_received)
        yield
    finally:
        _callback = None
        for sig, old in previous.items():
            signal.signal(sig, old)
