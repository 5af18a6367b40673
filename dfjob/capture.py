"""What an attempt prints and logs, kept with its run: the runner's side.

The runner's stdout and stderr are pipes it reads itself (whatever the flow or a program it
starts writes to them), and the flow's `self.log` events are written here as JSON lines. Lines
are numbered, stamped with when they were written, and sent to the supervisor in chunks about
every half second, so a long run's output can be followed while it runs.

What is kept is bounded by `runs.log_max_bytes`: the first half of it (the head) and the last
half (the tail), with the count of what was cut in between. Tail lines already sent that fall out
of the window are deleted by sequence number (`drop_tail_before`), so a flow that prints 50 MB
costs the database its limit, not 50 MB.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import select
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from dfjob import protocol
from dfjob.text import decode, storable

FLUSH_SECONDS = 0.5
# A line waiting for its newline is sent as it is after this long (a progress bar, a prompt).
PARTIAL_SECONDS = 1.0
MAX_LINE_BYTES = 64 * 1024


@dataclass
class Line:
    seq: int
    at: float
    stream: str
    text: str
    size: int
    part: str
    sent: bool = False


@dataclass
class Capture:
    """The lines of the attempt in progress, and what is left to send of them."""

    max_bytes: int
    run_id: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _seq: int = 0
    _head_bytes: int = 0
    _tail: deque[Line] = field(default_factory=deque)
    _tail_bytes: int = 0
    _dropped: int = 0
    _drop_before: int | None = None
    _unsent: list[Line] = field(default_factory=list)
    _in_tail: bool = False

    def begin(self, run_id: int) -> None:
        with self._lock:
            self.run_id, self._seq, self._head_bytes, self._tail_bytes, self._dropped = run_id, 0, 0, 0, 0
            self._tail.clear()
            self._unsent.clear()
            self._drop_before, self._in_tail = None, False

    def add(self, stream: str, text: str, at: float | None = None) -> None:
        """One line the attempt wrote (no trailing newline)."""
        text = storable(text)
        if len(text.encode()) > MAX_LINE_BYTES:
            text = text.encode()[:MAX_LINE_BYTES].decode(errors="ignore") + " …"
        size = len(text.encode()) + 1
        with self._lock:
            if self.run_id is None:
                return
            self._seq += 1
            line = Line(self._seq, time.monotonic() if at is None else at, stream, text, size, "head")
            head_budget = self.max_bytes // 2
            if not self._in_tail and self._head_bytes + size <= head_budget:
                self._head_bytes += size
                self._unsent.append(line)
                return
            self._in_tail = True
            line.part = "tail"
            self._tail.append(line)
            self._tail_bytes += size
            self._unsent.append(line)
            while self._tail_bytes > self.max_bytes - head_budget and len(self._tail) > 1:
                old = self._tail.popleft()
                self._tail_bytes -= old.size
                self._dropped += old.size
                if old.sent:
                    self._drop_before = old.seq + 1
                else:
                    old.part = "gone"

    def take(self) -> protocol.Log | None:
        """The lines to send now (None when there are none and nothing to delete)."""
        with self._lock:
            if self.run_id is None:
                return None
            lines = [line for line in self._unsent if line.part != "gone"]
            if not lines and self._drop_before is None:
                return None
            for line in lines:
                line.sent = True
            self._unsent.clear()
            message = protocol.Log(
                run_id=self.run_id,
                lines=[[line.seq, line.at, line.stream, line.text, line.part] for line in lines],
                drop_tail_before=self._drop_before,
                log_bytes=self._head_bytes + self._tail_bytes,
                dropped_bytes=self._dropped,
            )
            self._drop_before = None
            return message

    def end(self) -> protocol.Log | None:
        """The last lines of the attempt; later output belongs to nothing."""
        message = self.take()
        with self._lock:
            self.run_id = None
        return message


class LogFile:
    """A file-like object for the flow's structlog logger: each write is one `log` line, after
    whatever the attempt's programs wrote to its pipes before it."""

    def __init__(self, capture: Capture, pipes: Sequence[Redirect] = ()) -> None:
        self.capture, self.pipes = capture, pipes

    def write(self, text: str) -> int:
        if not text.strip("\n"):
            return len(text)  # the newline `print` writes apart
        catch_up(self.pipes)
        for line in text.rstrip("\n").split("\n"):
            self.capture.add("log", line)
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""


class Redirect:
    """Make `fd` (1 or 2) a pipe that a thread reads into `capture`, line by line: what programs
    the attempt starts (and C code) write there."""

    def __init__(self, fd: int, stream: str, capture: Capture) -> None:
        self.stream, self.capture = stream, capture
        self.read_end, write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        os.dup2(write_end, fd)
        os.close(write_end)
        self._idle = threading.Event()
        self._lock = threading.Lock()
        self._pending = b""
        self._since = time.monotonic()
        threading.Thread(target=self._read, name=f"dfjob-{stream}", daemon=True).start()

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self.read_end, select.POLLIN)
        while True:
            self._idle.set()
            ready = poller.poll(PARTIAL_SECONDS * 1000)
            self._idle.clear()
            if not ready:
                if time.monotonic() - self._since > PARTIAL_SECONDS:
                    self._hand_over_partial()
                continue
            if not self.read_available():
                return

    def read_available(self) -> bool:
        """Turn what is in the pipe now into lines; False once the pipe is closed. Reading and
        handing over under one lock keeps the lines in the order they were written, whichever
        thread reads."""
        with self._lock:
            while True:
                try:
                    data = os.read(self.read_end, 65536)
                except BlockingIOError:
                    return True
                except OSError:
                    return False
                if not data:
                    return False
                self._pending += data
                *lines, self._pending = self._pending.split(b"\n")
                for line in lines:
                    self.capture.add(self.stream, decode(line))
                if lines:
                    self._since = time.monotonic()
                if len(self._pending) > MAX_LINE_BYTES:
                    self.capture.add(self.stream, decode(self._pending))
                    self._pending = b""

    def _hand_over_partial(self) -> None:
        with self._lock:
            if self._pending:
                self.capture.add(self.stream, decode(self._pending))
                self._pending = b""

    def drain(self, timeout: float = 1.0) -> None:
        """Wait until everything written so far has been read (at most `timeout`), then hand over
        a last line that has no newline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read_available()
            waiting = struct.unpack("i", fcntl.ioctl(self.read_end, termios.FIONREAD, b"\0\0\0\0"))[0]
            if waiting == 0:
                break
        self._hand_over_partial()


def catch_up(pipes: Sequence[Redirect]) -> None:
    """Take in what is already in the pipes, so that what comes next is added after it."""
    for pipe in pipes:
        pipe.read_available()


class StreamWriter(io.TextIOBase):
    """`sys.stdout` / `sys.stderr` while a runner serves attempts: what Python code writes becomes
    lines at once, in order with the flow's log events and with what is already in the pipes.
    Binary writes (`.buffer`) and the file descriptor still reach the pipe."""

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, fd: int, stream: str, capture: Capture, pipes: Sequence[Redirect]) -> None:
        super().__init__()
        self._fd, self.stream, self.capture, self.pipes = fd, stream, capture, pipes
        self.buffer = os.fdopen(fd, "wb", buffering=0, closefd=False)
        self._lock = threading.Lock()
        self._pending = ""
        self._since = 0.0

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._lock:
            catch_up(self.pipes)
            if not self._pending:
                self._since = time.monotonic()
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self.capture.add(self.stream, line)
            if len(self._pending) > MAX_LINE_BYTES:
                self.capture.add(self.stream, self._pending)
                self._pending = ""
        return len(text)

    def hand_over_partial(self, older_than: float = 0.0) -> None:
        """A line still waiting for its newline, once it has waited `older_than` seconds."""
        with self._lock:
            if self._pending and time.monotonic() - self._since >= older_than:
                self.capture.add(self.stream, self._pending)
                self._pending = ""


def flush_stdio() -> None:
    """Push what Python buffered for stdout and stderr into the pipes before an attempt's end."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
