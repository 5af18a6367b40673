"""A runner process of a worker: runs attempts, one at a time, in a process group of its own.

The worker keeps one runner per concurrency slot, so user code can be stopped for real
(timeouts, cancels, shutdown) and a crash (segfault, `os._exit`) costs one child, not the
worker. A runner never touches the database: jobs come over a pipe (`protocol`), outcomes go
back the same way.

What keeps an attempt in check, even when the supervisor is stuck (a hung query, a slow disk):
- A watchdog thread holds the attempt's deadlines: its timeout, and its fence, the time its
  lease could run out unrenewed (`Run.fence`, moved on by `Renew`). When one passes, the runner
  says so (`Fenced`) and kills its whole process group, itself included: the attempt never
  outlives its lease, so a worker that takes the job back never overlaps it.
- The runner leads its own session and process group, and is a child subreaper: whatever the
  flow starts stays in reach. After each attempt it checks for processes left behind; if there
  are any, the supervisor kills the group and replaces the runner.
- SIGINT/SIGTERM get a handler that does nothing (a signal to the worker's process group is the
  supervisor's to decide on); unlike an ignored signal, a handler is reset in every program the
  flow starts, so those get the default handling.
- It dies with its supervisor: a parent-death signal, and a thread that exits the moment the
  supervisor's end of the pipe closes. Its pipe ends are not inherited by what the flow starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, MutableMapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog

from dfjob import protocol
from dfjob.capture import FLUSH_SECONDS, PARTIAL_SECONDS, Capture, LogFile, Redirect, StreamWriter, flush_stdio
from dfjob.events import configure_logging
from dfjob.flow import ClassPathRefused, Discard, add_import_paths, bound_logger, load_flow_class
from dfjob.schedule import format_duration
from dfjob.text import storable, storable_json

SETTINGS_ENV = "DFJOB_RUNNER_SETTINGS"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
BACKTRACE_LIMIT = 64 * 1024
ERROR_LIMIT = 4000
# A queued attempt whose fence is this close when its turn comes is given back, not started.
START_MARGIN_SECONDS = 0.5


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # best effort: the other guards still hold
            ctypes.CDLL(None, use_errno=True).prctl(option, value)


def _do_nothing(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM are the supervisor's to act on (see the module docstring)."""


class Channel:
    """The runner's ends of its two pipes."""

    def __init__(self, read_fd: int, write_fd: int, max_frame: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.reader = protocol.FrameReader(max_frame)
        self._lock = threading.Lock()

    def send(self, message: protocol.Message) -> None:
        frame = protocol.encode(message)
        with self._lock:
            view = memoryview(frame)
            while view:
                view = view[os.write(self.write_fd, view) :]

    def send_now(self, message: protocol.Message) -> None:
        """Best effort and never blocking: the runner is about to die."""
        with contextlib.suppress(OSError):
            os.set_blocking(self.write_fd, False)
            os.write(self.write_fd, protocol.encode(message))

    def receive(self) -> list[protocol.Message]:
        """Block until at least one message; [] when the supervisor's end is closed."""
        while True:
            data = os.read(self.read_fd, 65536)
            if not data:
                return []
            messages = self.reader.feed(data)
            if messages:
                return messages


class Watchdog:
    """Holds the current attempt's deadlines (monotonic) and ends the runner when one passes."""

    def __init__(self, on_expiry: Callable[[int, str, str], None]) -> None:
        self._condition = threading.Condition()
        self._fence: float | None = None
        self._timeout_at: float | None = None
        self._run_id: int | None = None
        self._timeout_seconds = 0
        self._on_expiry = on_expiry
        threading.Thread(target=self._watch, name="dfjob-watchdog", daemon=True).start()

    def hold(self, run_id: int, fence: float) -> None:
        with self._condition:
            self._run_id, self._fence, self._timeout_at = run_id, fence, None
            self._condition.notify()

    def begin(self, timeout_seconds: int | None) -> None:
        with self._condition:
            self._timeout_seconds = timeout_seconds or 0
            self._timeout_at = time.monotonic() + timeout_seconds if timeout_seconds else None
            self._condition.notify()

    def renew(self, fence: float) -> None:
        with self._condition:
            if self._fence is not None:
                self._fence = max(self._fence, fence)
            self._condition.notify()

    def release(self) -> None:
        with self._condition:
            self._run_id = self._fence = self._timeout_at = None
            self._condition.notify()

    def _watch(self) -> None:
        with self._condition:
            while True:
                deadlines = [value for value in (self._fence, self._timeout_at) if value is not None]
                if not deadlines:
                    self._condition.wait()
                    continue
                remaining = min(deadlines) - time.monotonic()
                if remaining > 0:
                    self._condition.wait(remaining)
                    continue
                run_id = self._run_id if self._run_id is not None else 0
                if self._timeout_at is not None and self._timeout_at <= time.monotonic():
                    self._on_expiry(run_id, "timeout", f"timed out after {format_duration(self._timeout_seconds)}")
                else:
                    self._on_expiry(run_id, "lease", "its lease was not renewed in time")
                return


def _fence_and_die(channel: Channel) -> Callable[[int, str, str], None]:
    def expire(run_id: int, reason: str, detail: str) -> None:
        channel.send_now(protocol.Fenced(run_id=run_id, reason=reason, at=time.monotonic(), detail=detail))
        os.killpg(os.getpgid(0), signal.SIGKILL)

    return expire


def _has_children() -> bool:
    """Whether any process this runner is the parent of still lives (as subreaper: any the attempt
    started, however deep); the ones that ended are reaped on the way. One syscall per child."""
    try:
        while os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG) is not None:
            pass  # reaped one that had ended: look again
    except ChildProcessError:
        return False
    return True


def _peak_rss_kb() -> int | None:
    with contextlib.suppress(OSError), open("/proc/self/status", "rb") as status:
        text = status.read()
        start = text.find(b"VmHWM:")
        if start >= 0:
            return int(text[start + 6 : text.index(b"kB", start)])
    return None


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _failure(exc: BaseException) -> dict[str, Any]:
    backtrace = traceback.format_exc()
    if len(backtrace) > BACKTRACE_LIMIT:
        backtrace = "…\n" + backtrace[-BACKTRACE_LIMIT:]
    message = storable(f"{type(exc).__name__}: {exc}")
    return {
        "status": "failed",
        "retry": "never" if isinstance(exc, (Discard, ClassPathRefused)) else "normal",
        "error_message": message if len(message) <= ERROR_LIMIT else message[: ERROR_LIMIT - 1] + "…",
        "error_backtrace": storable(backtrace),
    }


def check_result(result: Any, max_bytes: int) -> dict[str, Any] | None:
    """The result as stored, or ValueError saying why it cannot be (the run then fails, no retry)."""
    if result is None:
        return None
    if not isinstance(result, dict):
        raise ValueError(f"run() must return a dict or None, not {type(result).__name__}")
    try:
        text = json.dumps(result, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the result is not JSON: {exc}") from None
    if len(text.encode("utf-8", errors="surrogatepass")) > max_bytes:
        raise ValueError(f"the result is over worker.max_result_bytes ({max_bytes} bytes)")
    return storable_json(result)  # type: ignore[no-any-return]


def run_attempt(
    job: protocol.Job, allowed_modules: tuple[str, ...], max_result_bytes: int, log_file: Any = None
) -> dict[str, Any]:
    """Run one attempt and describe its outcome; never raises. The flow's `self.log` writes JSON
    lines to `log_file` (the run's log), else through the process's structlog configuration."""
    context = {
        "data_flow_id": job.data_flow_id, "data_flow_name": job.data_flow_name, "job_id": job.job_id,
        "run_id": job.run_id,
    }  # fmt: skip
    log = bound_logger(**context) if log_file is None else flow_logger(log_file, context)
    try:
        flow_class = load_flow_class(job.class_path, allowed_modules)
        flow = flow_class(job.configuration, job.params, log)
        flow.set_context(
            job_id=job.job_id,
            run_id=job.run_id,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            scheduled_for=datetime.fromisoformat(job.scheduled_for) if job.scheduled_for else None,
            triggered_by=job.triggered_by,
        )
        result = flow.run()
    except BaseException as exc:  # noqa: BLE001 (the one place that catches everything: user code)
        return _failure(exc)
    try:
        return {"status": "success", "result": check_result(result, max_result_bytes)}
    except ValueError as exc:
        # The flow's work has happened: running it again would do it twice.
        return {"status": "failed", "retry": "never", "error_message": storable(f"result: {exc}")}


def flow_logger(log_file: Any, context: dict[str, Any]) -> Any:
    """A structlog logger for a flow, bound with `context`, that writes one line per event into its
    run's log: `info rows.loaded rows=120 table="orders"` (the run already says which flow, job and
    run, and each line has its time)."""
    return structlog.wrap_logger(
        structlog.PrintLogger(log_file),
        processors=[structlog.processors.add_log_level, _render_without(set(context))],
        context_class=dict,
    ).bind(**context)


def _render_without(bound: set[str]) -> Callable[[Any, str, MutableMapping[str, Any]], str]:
    def render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        level, event = event_dict.pop("level", method), event_dict.pop("event", "")
        pairs = " ".join(
            f"{key}={json.dumps(value, ensure_ascii=False, default=str)}"
            for key, value in event_dict.items()
            if key not in bound
        )
        return f"{level} {event} {pairs}".rstrip()

    return render


class Runner:
    """The runner's main loop: take a job, run it, report; the control thread feeds it."""

    def __init__(self, channel: Channel, settings: dict[str, Any]) -> None:
        self.channel = channel
        self.allowed = tuple(settings.get("allowed_modules", ()))
        self.max_result_bytes = int(settings.get("max_result_bytes", 1024 * 1024))
        # Attempts given to this runner, in order; all but the first wait behind it (see `ahead`).
        self.queued: deque[protocol.Run] = deque()
        self.queue_changed = threading.Condition()
        self.watchdog = Watchdog(_fence_and_die(channel))
        self.capture = Capture(int(settings.get("log_max_bytes", 1024 * 1024)))
        # What the attempt (and anything it starts) writes to stdout and stderr is its run's log.
        # Programs it starts write to the pipes behind fds 1 and 2; Python code writes to streams
        # that make lines at once, so prints, log events and both streams keep their order.
        self.redirects = [Redirect(1, "stdout", self.capture), Redirect(2, "stderr", self.capture)]
        self.writers = [
            StreamWriter(fd, pipe.stream, self.capture, self.redirects)
            for fd, pipe in ((1, self.redirects[0]), (2, self.redirects[1]))
        ]
        sys.stdout, sys.stderr = self.writers
        self.sending_logs = threading.Lock()
        threading.Thread(target=self._send_logs, name="dfjob-logs", daemon=True).start()

    def _send_logs(self) -> None:
        """Every half second, what the attempt wrote since: `runs logs --follow` shows it live."""
        while True:
            time.sleep(FLUSH_SECONDS)
            with self.sending_logs:
                for writer in self.writers:
                    writer.hand_over_partial(older_than=PARTIAL_SECONDS)
                message = self.capture.take()
                if message is not None:
                    with contextlib.suppress(OSError):
                        self.channel.send(message)

    def control(self) -> None:
        """The control thread: messages from the supervisor; exits the process when it is gone."""
        while True:
            try:
                messages = self.channel.receive()
            except (OSError, protocol.ProtocolError):
                messages = []
            if not messages:
                os._exit(0)
            for message in messages:
                if isinstance(message, protocol.Run):
                    with self.queue_changed:
                        self.queued.append(message)
                        self.queue_changed.notify()
                elif isinstance(message, protocol.Renew):
                    self.renew(message.fence)
                elif isinstance(message, protocol.Withdraw):
                    self.withdraw(set(message.run_ids))

    def renew(self, fence: float) -> None:
        """Every lease this runner holds was renewed: the running attempt's and the queued ones'."""
        with self.queue_changed:
            self.queued = deque(replace(order, fence=max(order.fence, fence)) for order in self.queued)
        self.watchdog.renew(fence)

    def withdraw(self, run_ids: set[int]) -> None:
        """Give back the queued attempts among `run_ids` that have not started."""
        with self.queue_changed:
            taken = [order.job.run_id for order in self.queued if order.job.run_id in run_ids]
            self.queued = deque(order for order in self.queued if order.job.run_id not in run_ids)
        if taken:
            with contextlib.suppress(OSError):
                self.channel.send(protocol.Withdrawn(run_ids=taken))

    def next_order(self) -> protocol.Run:
        """The next attempt to run; one whose fence is (nearly) passed is given back instead: its
        lease may be gone by the time it would start."""
        while True:
            with self.queue_changed:
                while not self.queued:
                    self.queue_changed.wait()
                order = self.queued.popleft()
            if order.fence - time.monotonic() > START_MARGIN_SECONDS:
                return order
            with contextlib.suppress(OSError):
                self.channel.send(protocol.Withdrawn(run_ids=[order.job.run_id]))

    def serve(self) -> None:
        while True:
            order = self.next_order()
            job = order.job
            self.watchdog.hold(job.run_id, order.fence)
            _reset_peak_rss()
            cpu_before = _cpu_seconds()
            self.capture.begin(job.run_id)
            started = time.monotonic()
            self.watchdog.begin(job.timeout_seconds)
            self.channel.send(protocol.Started(run_id=job.run_id, at=started))
            outcome = run_attempt(job, self.allowed, self.max_result_bytes, LogFile(self.capture, self.redirects))
            self.watchdog.release()
            flush_stdio()
            for redirect in self.redirects:
                redirect.drain()
            for writer in self.writers:
                writer.hand_over_partial()
            with self.sending_logs:  # lines taken by the log thread go out before `Ended`
                last = self.capture.end()
                if last is not None:
                    self.channel.send(last)
            self.channel.send(
                protocol.Ended(
                    run_id=job.run_id,
                    at=time.monotonic(),
                    leftovers=_has_children(),
                    cpu_seconds=round(_cpu_seconds() - cpu_before, 3),
                    max_rss_kb=_peak_rss_kb(),
                    **outcome,
                )
            )


def main(read_fd: int, write_fd: int, settings: dict[str, Any] | None = None) -> None:
    """Become a runner serving the supervisor on these pipe ends (`settings`: as the worker
    passes them in SETTINGS_ENV, already read by a fork server)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _do_nothing)
    with contextlib.suppress(OSError):
        os.setsid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    for fd in (read_fd, write_fd):
        os.set_inheritable(fd, False)
    if settings is None:
        settings = json.loads(os.environ.pop(SETTINGS_ENV, "{}"))
    configure_logging(settings.get("log_format", "json"), settings.get("log_level", "info"))
    add_import_paths(tuple(settings.get("paths", ())))
    channel = Channel(read_fd, write_fd, int(settings.get("max_frame", 64 * 1024)))
    runner = Runner(channel, settings)
    threading.Thread(target=runner.control, name="dfjob-control", daemon=True).start()
    try:
        channel.send(protocol.Ready())  # imports done: timings of the first run stay honest
        runner.serve()
    except OSError:
        os._exit(0)  # the supervisor is gone (a closed pipe): nothing left to report to


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
