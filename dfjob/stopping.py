"""Where a worker's stop stands: not asked, graceful (no new claims; running attempts get
`worker.shutdown_grace`), or forced (interrupt them now). Requests only set flags and poke a
pipe, so a signal handler may make them."""

from __future__ import annotations

import contextlib
import os
import time


class StopState:
    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.requested = False
        self.forced = False
        self._grace_deadline: float | None = None
        # The worker's loop waits on this pipe's read end: a request wakes it at once.
        self.wake_fd, self._poke_fd = os.pipe()
        for fd in (self.wake_fd, self._poke_fd):
            os.set_blocking(fd, False)

    def request(self, force: bool = False) -> None:
        """Stop claiming; with `force`, or on a second request, interrupt running attempts too."""
        self.forced = self.forced or force or self.requested
        self.requested = True
        with contextlib.suppress(OSError):
            os.write(self._poke_fd, b"\0")

    def drain(self) -> None:
        """Empty the wake-up pipe after the loop woke on it."""
        with contextlib.suppress(OSError):
            while os.read(self.wake_fd, 512):
                pass

    def grace_deadline(self) -> float | None:
        """The monotonic time running attempts must have ended by, once a stop was asked."""
        if self.requested and self._grace_deadline is None:
            self._grace_deadline = time.monotonic() + self.grace_seconds
        return self._grace_deadline

    def must_interrupt(self, now: float) -> bool:
        deadline = self.grace_deadline()
        return self.forced or (deadline is not None and now >= deadline)

    def close(self) -> None:
        for fd in (self.wake_fd, self._poke_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
