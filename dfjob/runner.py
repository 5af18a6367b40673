"""One attempt of one job, run in a child process of the worker.

The worker keeps one runner process per concurrency slot, so user code can be stopped for real
(timeouts, shutdown) and a crash (segfault, `os._exit`) costs one child, not the worker. The
runner never touches the database: it gets a job over a pipe, runs the flow, and sends back the
outcome. It ignores SIGINT/SIGTERM (a signal to the whole process group is the supervisor's to
decide on) and dies with its supervisor: a parent-death signal, and a reader thread that exits
the moment the supervisor's end of the pipe closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

from dfjob.events import configure_logging
from dfjob.flow import ClassPathRefused, Discard, add_import_paths, bound_logger, load_flow_class

SETTINGS_ENV = "DFJOB_RUNNER_SETTINGS"
PR_SET_PDEATHSIG = 1


def run_attempt(job: dict[str, Any], allowed_modules: tuple[str, ...]) -> dict[str, Any]:
    """Run one attempt and describe its outcome; never raises."""
    log = bound_logger(
        data_flow_id=job["data_flow_id"],
        data_flow_name=job["data_flow_name"],
        job_id=job["job_id"],
        run_id=job["run_id"],
    )
    try:
        flow_class = load_flow_class(job["class_path"], allowed_modules)
        flow = flow_class(job["configuration"], job["params"], log)
        result = flow.run()
        if result is not None and not isinstance(result, dict):
            raise TypeError(f"run() must return a dict or None, not {type(result).__name__}")
        json.dumps(result, allow_nan=False)  # stored and printed as strict JSON
        return {"status": "success", "result": result}
    except BaseException as exc:  # noqa: BLE001 (the one place that catches everything: user code)
        return {
            "status": "failed",
            "retry": "never" if isinstance(exc, (Discard, ClassPathRefused)) else "normal",
            "error_message": f"{type(exc).__name__}: {exc}",
            "error_backtrace": traceback.format_exc(),
        }


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # the pipe watchdog still covers it
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _watch_supervisor(read_fd: int) -> None:
    """The pipe watchdog: the moment the supervisor's end of the pipe closes, stop, even mid-run.

    It asks poll() for no events at all, so it sleeps through jobs arriving (the main thread reads
    those) and wakes only on hang-up, which poll() always reports.
    """
    watcher = select.poll()
    watcher.register(read_fd, 0)
    while True:
        for _, mask in watcher.poll():
            if mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                os._exit(0)


def main(read_fd: int, write_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    settings = json.loads(os.environ.get(SETTINGS_ENV, "{}"))
    configure_logging(settings.get("log_format", "json"), settings.get("log_level", "info"))
    add_import_paths(tuple(settings.get("paths", ())))
    allowed = tuple(settings.get("allowed_modules", ()))
    inbox = Connection(read_fd, writable=False)
    outbox = Connection(write_fd, readable=False)
    threading.Thread(target=_watch_supervisor, args=(read_fd,), daemon=True).start()
    outbox.send_bytes(b'{"ready": true}')  # imports done: timings of the first run stay honest
    while True:
        try:
            job = json.loads(inbox.recv_bytes())
        except (EOFError, OSError):
            os._exit(0)
        outcome = run_attempt(job, allowed)
        outcome["run_id"] = job["run_id"]
        outbox.send_bytes(json.dumps(outcome).encode())


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
