"""The runner pool: one runner process per slot, forked from a template (`forkserver`); spawn,
send, read, replace.

The supervisor never blocks on a runner. It waits on each runner's pipe and on a pidfd of the
process itself, so a runner that dies is seen at once, even when something it started still
holds its pipe open. Pipes are read without blocking, into a `protocol.FrameReader` per runner.
Replacing a runner kills its whole process group first: nothing an attempt started survives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dfjob import protocol
from dfjob.errors import DfjobError
from dfjob.forkserver import ForkedRunner, ForkServer, ForkServerGone
from dfjob.runner import SETTINGS_ENV
from dfjob.store.rows import Claimed

MAX_FAILED_STARTS = 5
# What a runner must never see: the database and its password.
HIDDEN_ENVIRONMENT = ("DFJOB_DATABASE_URL", "PGPASSWORD")


@dataclass
class Slot:
    """One runner process and the attempt it is running, if any."""

    index: int
    process: ForkedRunner
    pidfd: int
    to_runner: int
    from_runner: int
    reader: protocol.FrameReader
    ready: bool = False
    job: Claimed | None = None
    # Monotonic times: the attempt's start as the runner reported it, and when it must have ended.
    started: float | None = None
    deadline: float | None = None
    # Attempts queued in the runner behind `job` (claimed ahead), and those asked back from it.
    behind: deque[Claimed] = field(default_factory=deque)
    withdrawing: set[int] = field(default_factory=set)
    # When `job` became this slot's current attempt (monotonic).
    since: float = 0.0
    gone: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def idle(self) -> bool:
        return self.ready and self.job is None and not self.gone

    @property
    def load(self) -> int:
        """Attempts given to this runner and not ended: the current one and those behind it."""
        return (self.job is not None) + len(self.behind)

    def held(self) -> list[Claimed]:
        return ([self.job] if self.job is not None else []) + list(self.behind)


@dataclass(frozen=True)
class Received:
    slot: Slot
    message: protocol.Message


@dataclass(frozen=True)
class Lost:
    """A runner that died, or broke the protocol (it has been killed: replace it)."""

    slot: Slot
    reason: str


@dataclass
class RunnerPool:
    size: int
    runner_settings: dict[str, Any]
    max_frame: int
    slots: list[Slot] = field(default_factory=list)
    _failed_starts: int = 0
    _forks: ForkServer = field(init=False)

    def __post_init__(self) -> None:
        env = {key: value for key, value in os.environ.items() if key not in HIDDEN_ENVIRONMENT}
        env[SETTINGS_ENV] = json.dumps(self.runner_settings)
        self._forks = ForkServer(env)

    def start(self) -> None:
        self._forks.start()
        self.slots = [self._spawn(index) for index in range(self.size)]

    def fds(self) -> list[int]:
        """What the supervisor's loop waits on."""
        return [fd for slot in self.slots if not slot.gone for fd in (slot.from_runner, slot.pidfd)]

    def idle(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.idle]

    def busy(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.job is not None]

    def ready(self) -> list[Slot]:
        """Runners that take jobs (started up, alive)."""
        return [slot for slot in self.slots if slot.ready and not slot.gone]

    def send(self, slot: Slot, *messages: protocol.Message) -> bool:
        """Send messages in one write; False when the runner can no longer be reached (it is
        dying; `collect` will say so)."""
        frame = b"".join(protocol.encode(message) for message in messages)
        try:
            written = os.write(slot.to_runner, frame)
        except OSError:
            return False
        if written < len(frame):
            # A runner reads whenever it is alive; a full pipe means it is not: treat it as lost.
            return self._finish_write(slot, frame[written:])
        return True

    @staticmethod
    def _finish_write(slot: Slot, rest: bytes) -> bool:
        deadline = time.monotonic() + 1.0
        while rest and time.monotonic() < deadline:
            try:
                rest = rest[os.write(slot.to_runner, rest) :]
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                return False
        return not rest

    def collect(self) -> Iterator[Received | Lost]:
        """Every message that has arrived, and every runner that died or broke the protocol."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.gone:
                continue
            # Asked before reading: a runner that died has written everything it ever will.
            dead = slot.process.poll() is not None
            try:
                messages = slot.reader.feed(self._read(slot), now)
                if slot.reader.stalled(now):
                    raise protocol.ProtocolError("a frame was left half-written")
            except protocol.ProtocolError as exc:
                self.kill(slot)
                yield Lost(slot, f"runner protocol error: {exc}")
                continue
            for message in messages:
                if isinstance(message, protocol.Ready):
                    slot.ready, self._failed_starts = True, 0
                yield Received(slot, message)
            # The caller may have replaced the runner on one of its messages (it said it fenced).
            if dead and not slot.gone:
                yield Lost(slot, self._death(slot))

    @staticmethod
    def _read(slot: Slot) -> bytes:
        chunks = []
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(slot.from_runner, 1 << 16):
                chunks.append(chunk)
                if len(chunks) > 64:  # enough for one pass; the rest is read next time
                    break
        return b"".join(chunks)

    def _death(self, slot: Slot) -> str:
        self.kill(slot)
        code = slot.process.returncode
        if code is not None and code < 0:
            reason = f"killed by {signal.Signals(-code).name}"
        else:
            reason = f"exited with status {code}"
        if not slot.ready:
            # It died before it could run anything: respawning blindly would spin forever.
            self._failed_starts += 1
            if self._failed_starts >= MAX_FAILED_STARTS:
                raise DfjobError(f"runner processes keep dying as they start ({reason}); see the log above")
        return f"runner process died: {reason}"

    def kill(self, slot: Slot) -> None:
        """Kill the runner and everything in its process group; close its pipes."""
        if slot.gone:
            return
        slot.gone = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(slot.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            slot.process.kill()
        slot.process.wait()
        for fd in (slot.to_runner, slot.from_runner, slot.pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def replace(self, slot: Slot) -> Slot:
        """A fresh runner in this slot's place (the old one killed first). A slot replaced already
        keeps the runner that replaced it."""
        self.kill(slot)
        current = self.slots[slot.index]
        if current is not slot:
            return current
        fresh = self._spawn(slot.index)
        self.slots[slot.index] = fresh
        return fresh

    def close(self, timeout: float = 5.0) -> None:
        """Ask every runner to exit (its pipe closes), then kill what is left."""
        for slot in self.slots:
            with contextlib.suppress(OSError):
                os.close(slot.to_runner)
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                slot.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            self.kill(slot)
        self.slots = []
        self._forks.stop()

    def _spawn(self, index: int) -> Slot:
        to_runner_r, to_runner_w = os.pipe()
        from_runner_r, from_runner_w = os.pipe()
        try:
            pid, pidfd = self._fork(to_runner_r, from_runner_w)
        finally:
            os.close(to_runner_r)
            os.close(from_runner_w)
        for fd in (to_runner_w, from_runner_r):
            os.set_blocking(fd, False)
        return Slot(
            index=index,
            process=ForkedRunner(pid, pidfd, self._forks),
            pidfd=pidfd,
            to_runner=to_runner_w,
            from_runner=from_runner_r,
            reader=protocol.FrameReader(self.max_frame),
        )

    def _fork(self, read_fd: int, write_fd: int) -> tuple[int, int]:
        """A runner forked from the template; a template that died is started again, once."""
        try:
            return self._forks.fork(read_fd, write_fd)
        except ForkServerGone:
            self._failed_starts += 1
            if self._failed_starts >= MAX_FAILED_STARTS:
                raise DfjobError("the runner template process keeps dying; see the log above") from None
            return self._forks.fork(read_fd, write_fd)
