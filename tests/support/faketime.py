"""Processes with a skewed wall clock, through libfaketime (Debian package `faketime`, 0.9.10).

`faketime_env(30)` is an environment in which a process (and every child it starts, Python or not,
`python -m` included) sees `time.time()` and `datetime.now()` 30 s ahead, while the monotonic clock
stays the real one (`FAKETIME_DONT_FAKE_MONOTONIC=1`), so timeouts, `Event.wait()` and
`subprocess.wait(timeout=…)` keep working.

One trap, worked around here: libfaketime 0.9.10 mishandles `clock_nanosleep(CLOCK_MONOTONIC,
TIMER_ABSTIME)` when the monotonic clock is not faked (libfaketime issue #426), and that is exactly
what `time.sleep()` calls from Python 3.11 on: every sleep fails with `OSError: [Errno 22] Invalid
argument`. Faking the monotonic clock as well is no way out: then `Event.wait(timeout)` and
`Lock.acquire(timeout=…)` (sem_clockwait, which libfaketime does not intercept) wait for the offset
on top of the timeout, or not at all. So the environment also puts `faketime_site/` first on
PYTHONPATH; its `sitecustomize` replaces `time.sleep` with a select()-based sleep on the monotonic
clock (then runs the sitecustomize it shadows). Python started with -I or -E skips it.

File times that a faked process reads with stat() are shifted by the offset too (libfaketime's
default); the kernel still stamps files with the real time.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Mapping
from pathlib import Path

from tests.support.hosts import Unavailable

SITE_DIR = Path(__file__).resolve().with_name("faketime_site")


def libfaketime() -> Path | None:
    """The preload library of Debian's libfaketime, None when it is not installed."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    for candidate in (
        os.environ.get("DFJOB_LIBFAKETIME", ""),
        f"/usr/lib/{multiarch}/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def faketime_offset(offset_seconds: float) -> str:
    """libfaketime's spelling of a relative offset: `+30`, `-90`, `+1.5`."""
    return f"{offset_seconds:+g}" if offset_seconds != int(offset_seconds) else f"{int(offset_seconds):+d}"


def faketime_env(offset_seconds: float, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) plus what shifts a child's wall clock by
    `offset_seconds` (negative: behind); Unavailable when libfaketime is not installed."""
    library = libfaketime()
    if library is None:
        raise Unavailable("libfaketime is not installed (Debian package `faketime`)")
    env = dict(os.environ if base is None else base)
    preload = [str(library)] + [entry for entry in env.get("LD_PRELOAD", "").split() if entry != str(library)]
    python_path = [str(SITE_DIR)] + [
        entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry and entry != str(SITE_DIR)
    ]
    env.update(
        LD_PRELOAD=" ".join(preload),
        FAKETIME=faketime_offset(offset_seconds),
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        PYTHONPATH=os.pathsep.join(python_path),
    )
    return env
