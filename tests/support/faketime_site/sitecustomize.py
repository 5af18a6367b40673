"""Loaded by every Python started with tests.support.faketime.faketime_env (it is first on PYTHONPATH).

libfaketime 0.9.10 breaks `time.sleep` on Python 3.11+ when the monotonic clock is left real (every
call raises EINVAL, libfaketime issue #426); this sleeps with select() on the monotonic clock instead.
Then it runs the sitecustomize it shadows, if there is one.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import select
import sys
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        select.select([], [], [], remaining)


if os.environ.get("FAKETIME"):
    time.sleep = _sleep


def _run_shadowed() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_run_shadowed()
