"""Starting runners fast: a fork server per worker.

A worker starts one template process (`python -P -m dfjob.forkserver`, with the runners'
environment: no database URL or password). It imports what a runner needs, and nothing else: no
database driver, no connection, no thread, no flow code. Each runner is then a fork of it, which
costs a few milliseconds instead of an interpreter's start and its imports, so a worker's runners
are ready together and a replaced runner is back at once.

The worker asks over a Unix socket (SOCK_SEQPACKET: one message per request), passing the
runner's two pipe ends; the template forks, the child becomes a runner (`runner.main`: a session
of its own, killed if the template dies, which is killed if the worker dies), and the template
answers with the child's pid and a pidfd for it, opened before the child can be reaped, so the
worker watches exactly that process. The template reaps its children and reports each exit status
(`exit PID CODE`), which is how the worker learns a runner died of a signal or with which status.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from dfjob.errors import DfjobError

READY_TIMEOUT = 30.0


class ForkServerGone(DfjobError):
    """The template process died: the pool starts another."""


# -- the worker's side --------------------------------------------------------------------------


@dataclass
class ForkServer:
    """The template process and the worker's end of its socket."""

    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    sock: socket.socket | None = None
    exits: dict[int, int] = field(default_factory=dict)

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "dfjob.forkserver", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        theirs.close()
        self.sock = ours

    def fork(self, read_fd: int, write_fd: int) -> tuple[int, int]:
        """A new runner reading `read_fd` and writing `write_fd`: (pid, pidfd)."""
        if self.sock is None:
            self.start()
        assert self.sock is not None
        try:
            socket.send_fds(self.sock, [b"fork"], [read_fd, write_fd])
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                message, fds, _, _ = socket.recv_fds(self.sock, 64, 1)
                if not message:
                    raise ForkServerGone("the runner template process is gone")
                if message.startswith(b"pid "):
                    return int(message.split()[1]), fds[0]
                self._note(message)
        except (OSError, TimeoutError) as exc:
            self.stop()
            raise ForkServerGone(f"the runner template process failed: {exc}") from None

    def _note(self, message: bytes) -> None:
        kind, *values = message.decode().split()
        if kind == "exit":
            self.exits[int(values[0])] = int(values[1])

    def exit_code(self, pid: int, timeout: float = 1.0) -> int | None:
        """The exit status of a runner that has ended (negative: killed by that signal), as its
        template reports it; None if it did not in time."""
        deadline = time.monotonic() + timeout
        while pid not in self.exits and self.sock is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                break
            with contextlib.suppress(OSError):
                self.sock.settimeout(0)
                message = self.sock.recv(64)
                if not message:
                    break
                self._note(message)
        return self.exits.pop(pid, None)

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()
            self.process = None


@dataclass
class ForkedRunner:
    """A runner forked by the template: what the pool needs of a process."""

    pid: int
    pidfd: int
    server: ForkServer
    returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.pidfd], [], [], 0)[0]:
            code = self.server.exit_code(self.pid)
            self.returncode = code if code is not None else -signal.SIGKILL
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not select.select([self.pidfd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(f"runner {self.pid}", timeout or 0)
        code = self.poll()
        assert code is not None
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


# -- the template -------------------------------------------------------------------------------


def serve(control: socket.socket, settings: dict[str, Any]) -> None:
    from dfjob import runner  # everything a runner imports, imported once, before any fork

    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    while True:
        ready = select.select([control.fileno(), wake_read], [], [])[0]
        if wake_read in ready:
            with contextlib.suppress(OSError):
                while os.read(wake_read, 512):
                    pass
        _reap(control)
        if control.fileno() not in ready:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(control, 64, 2)
        except OSError:
            os._exit(0)  # the worker was killed: a reset, not a message
        if not message or len(fds) != 2:
            os._exit(0)  # the worker is gone
        pid = os.fork()
        if pid == 0:
            control.close()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (wake_read, wake_write):
                os.close(fd)
            try:
                runner.main(fds[0], fds[1], settings)
            finally:
                os._exit(0)
        pidfd = os.pidfd_open(pid)
        for fd in fds:
            os.close(fd)
        try:
            socket.send_fds(control, [f"pid {pid}".encode()], [pidfd])
        except OSError:
            os._exit(0)  # the worker died while its runner started; the runner dies with it
        os.close(pidfd)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        with contextlib.suppress(OSError):
            control.send(f"exit {pid} {os.waitstatus_to_exitcode(status)}".encode())


def main(control_fd: int) -> None:
    from dfjob.runner import PR_SET_PDEATHSIG, SETTINGS_ENV, _prctl

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the worker decides when runners stop
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    settings = json.loads(os.environ.pop(SETTINGS_ENV, "{}"))
    serve(socket.socket(fileno=control_fd), settings)


if __name__ == "__main__":
    main(int(sys.argv[1]))
