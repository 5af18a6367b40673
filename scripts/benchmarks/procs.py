"""Child processes (dfjob workers, baseline workers) and what the bench reads about them from /proc.

Every process started here is listed in RUNNING until stopped, so that a failed scenario, or the
bench itself being stopped, never leaves a worker behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import BenchError

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path
    name: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


RUNNING: list[Proc] = []


def child_env() -> dict[str, str]:
    """This environment without the variables that would point a child at another database or config."""
    env = dict(os.environ)
    for name in ("DFJOB_DATABASE_URL", "DFJOB_CONFIG"):
        env.pop(name, None)
    return env


def start(command: Sequence[str], log: Path, name: str, cwd: Path) -> Proc:
    """Start a process with its output appended to `log`."""
    with open(log, "ab") as handle:
        popen = subprocess.Popen(
            list(command), cwd=cwd, env=child_env(), stdin=subprocess.DEVNULL, stdout=handle, stderr=handle
        )
    proc = Proc(popen, log, name)
    RUNNING.append(proc)
    return proc


def finish_all(procs: Sequence[Proc], timeout: float) -> None:
    """Wait for processes that end by themselves; raise with their log if one fails or hangs."""
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            try:
                code = proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError(f"{proc.name} still running after {timeout:.0f}s:\n{proc.log_tail()}") from None
            if code != 0:
                raise BenchError(f"{proc.name} exited with status {code}:\n{proc.log_tail()}")
    finally:
        for proc in procs:
            stop(proc)


def stop(proc: Proc, grace: float = 30.0) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; returns the exit status."""
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
    if proc in RUNNING:
        RUNNING.remove(proc)
    return int(proc.popen.returncode)


def stop_all(grace: float) -> None:
    """Stop every process still running."""
    for proc in list(RUNNING):
        stop(proc, grace=grace)


def running_logs() -> str:
    """The log tails of every running process, for an error message."""
    return "\n".join(proc.log_tail() for proc in RUNNING)


def dfjob_command(config: Path, *args: str, profile: Path | None = None) -> list[str]:
    """`python -m dfjob --config CONFIG ARGS`, under cProfile writing to `profile` if given."""
    prefix = [sys.executable]
    if profile is not None:
        prefix += ["-m", "cProfile", "-o", str(profile)]
    return [*prefix, "-m", "dfjob", "--config", str(config), *args]


def cpu_ticks(pid: int) -> int:
    """CPU time a process has used so far (utime + stime), in clock ticks (CLK_TCK per second)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children(pid: int) -> list[int]:
    """The direct child processes of `pid`."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(item) for item in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (a worker: its runner template and the runners it forked)."""
    found: list[int] = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def status_kb(pid: int, key: str) -> int:
    """A kB figure from /proc/PID/status, such as VmHWM (peak RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


def settle(pids: Sequence[int], limit: float = 20.0) -> None:
    """Wait until freshly started processes stop burning CPU (imports done): <= 1 tick in 0.5 s."""
    deadline = time.monotonic() + limit
    last = sum(cpu_ticks(pid) for pid in pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(cpu_ticks(pid) for pid in pids)
        if now - last <= 1:
            return
        last = now
