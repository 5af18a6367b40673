"""Wiring SIGTERM/SIGINT to a stop callback, for the daemons only (called from `cli`).

The handler does nothing but call `on_stop(count)`, which must only set flags (and may write a
byte to a wake-up pipe). The old handlers are restored on exit.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def on_stop(callback: Callable[[int], None]) -> Iterator[None]:
    """Call `callback(n)` on the n-th SIGTERM or SIGINT while inside the block."""
    received = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        callback(received)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
