"""Lifecycle events: one structlog event each, also handed to every monitoring callback.

Event names are constants here; `emit` is the one function every module may call. Callbacks run
on a thread of their own, never on the caller's (a worker's claim loop, its lease renewals), one
call at a time, each limited to `monitoring.callback_timeout`: a callback that raises or hangs is
logged and delays nothing. A hung call is left to finish on its own thread while the next calls
go on; past `MAX_HUNG_CALLS` such threads, that callback is skipped until one returns.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

from dfjob import clock
from dfjob.config import Settings, check_callable_path
from dfjob.drivers import load_psycopg
from dfjob.errors import DfjobError
from dfjob.passwords import has_secrets, scrub

JOB_ENQUEUED = "job.enqueued"
JOB_STARTED = "job.started"
JOB_FINISHED = "job.finished"
JOB_RESCUED = "job.rescued"
HEARTBEAT_FINISHED = "heartbeat.finished"
WORKER_STARTED = "worker.started"
WORKER_STOPPED = "worker.stopped"
DB_UNAVAILABLE = "db.unavailable"
JOB_CANCELLED = "job.cancelled"
ALERT_SENT = "alert.sent"
ALERT_FAILED = "alert.failed"
SERVE_STARTED = "serve.started"
SERVE_STOPPED = "serve.stopped"
CALLBACK_FAILED = "monitoring.callback_failed"
CALLBACK_TIMEOUT = "monitoring.callback_timeout"
CALLBACKS_DROPPED = "monitoring.events_dropped"
MAX_QUEUED_EVENTS = 10_000
MAX_HUNG_CALLS = 8

Callback = Callable[[str, dict[str, Any]], Any]

_callbacks: list[tuple[str, Callback]] = []
# Replaced by a concrete logger in `configure_logging`: a lazy proxy would rebuild itself on
# every event, and the worker logs two per job.
log: Any = structlog.get_logger("dfjob")


def resolved_format(log_format: str) -> str:
    """`auto` is console on a terminal, JSON otherwise."""
    if log_format == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return log_format


def _scrub(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """No database password in any log line, not even in an exception's text."""
    if not has_secrets():
        return event_dict
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = scrub(value)
    return event_dict


def _timestamp(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The same ISO 8601 form as every time dfjob prints: UTC, microseconds, `+00:00`."""
    event_dict["timestamp"] = clock.iso(clock.now())
    return event_dict


def configure_logging(log_format: str, level: str) -> None:
    """Set up structlog once: JSON lines or console output, on stderr."""
    log_format = resolved_format(log_format)
    renderer: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _timestamp,
            structlog.processors.format_exc_info,
            _scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    global log
    log = structlog.get_logger("dfjob").bind()
    # Libraries (APScheduler) log through the standard library: send those lines the same way.
    root = logging.getLogger()
    root.handlers[:] = [_StructlogHandler()]
    root.setLevel(logging.WARNING)


def reset_logging() -> None:
    """Back to structlog's defaults (tests: the stream a logger holds may be about to close)."""
    global log
    structlog.reset_defaults()
    log = structlog.get_logger("dfjob")
    logging.getLogger().handlers[:] = []


class _StructlogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger(record.name).log(record.levelno, record.getMessage(), logger=record.name)


def load_callbacks(settings: Settings) -> None:
    """Import every `monitoring.callbacks` entry now, so a typo fails at start, not mid-job."""
    if settings.monitoring.callbacks:
        with contextlib.suppress(DfjobError):  # not installed: the callbacks cannot use it either
            load_psycopg()  # a callback may open a peewee Postgres database of its own
    loaded: list[tuple[str, Callback]] = []
    for path in settings.monitoring.callbacks:
        module_name, attr = check_callable_path(path, "monitoring.callbacks")
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout carries our (JSON) output only
                function = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # noqa: BLE001 (any error importing user code is a refusal)
            raise DfjobError(f"monitoring.callbacks: cannot load {path!r}: {type(exc).__name__}: {exc}") from None
        if not callable(function):
            raise DfjobError(f"monitoring.callbacks: {path!r} is not callable")
        loaded.append((path, function))
    _callbacks[:] = loaded
    global _callback_timeout
    _callback_timeout = settings.monitoring.callback_timeout
    if _dispatcher_instance is not None:
        _dispatcher_instance.timeout = _callback_timeout


WARNINGS = frozenset({DB_UNAVAILABLE, ALERT_FAILED})


def emit(event: str, level: str | None = None, **payload: Any) -> None:
    """Log one lifecycle event (at `level`, else its usual one) and queue it for every
    monitoring callback."""
    getattr(log, level or ("warning" if event in WARNINGS else "info"))(event, **payload)
    if _callbacks:
        _dispatcher().put(event, payload)


def flush(timeout: float = 10.0) -> None:
    """Wait until the queued events have been handed to the callbacks (at most `timeout`)."""
    if _dispatcher_instance is not None:
        _dispatcher_instance.flush(timeout)


class CallbackDispatcher:
    """The callbacks' thread: a queue of events, each passed to every callback in turn."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(MAX_QUEUED_EVENTS)
        self._hung: dict[str, int] = {}
        self._lock = threading.Lock()
        self._dropped = 0
        threading.Thread(target=self._serve, name="dfjob-callbacks", daemon=True).start()

    def put(self, event: str, payload: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait((event, dict(payload)))
        except queue.Full:
            self._dropped += 1
            if self._dropped in (1, 100, 10_000):
                log.warning(CALLBACKS_DROPPED, dropped=self._dropped, reason="the callbacks are too slow")

    def flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def _serve(self) -> None:
        while True:
            event, payload = self._queue.get()
            try:
                for path, callback in list(_callbacks):
                    self._call(path, callback, event, payload)
            finally:
                self._queue.task_done()

    def _call(self, path: str, callback: Callback, event: str, payload: dict[str, Any]) -> None:
        with self._lock:
            if self._hung.get(path, 0) >= MAX_HUNG_CALLS:
                return
        done = threading.Event()

        def call() -> None:
            try:
                # A callback's prints must not reach stdout, which carries dfjob's own output.
                with contextlib.redirect_stdout(sys.stderr):
                    callback(event, dict(payload))
            except Exception as exc:  # noqa: BLE001 (a monitoring failure must never touch the job)
                log.warning(CALLBACK_FAILED, callback=path, failed_event=event, error=f"{type(exc).__name__}: {exc}")
            finally:
                done.set()
                with self._lock:
                    if path in self._hung and hung:
                        self._hung[path] -= 1

        hung = False
        threading.Thread(target=call, name="dfjob-callback", daemon=True).start()
        if not done.wait(self.timeout):
            with self._lock:
                hung = not done.is_set()
                if hung:
                    self._hung[path] = self._hung.get(path, 0) + 1
            if hung:
                log.warning(CALLBACK_TIMEOUT, callback=path, failed_event=event, timeout=self.timeout)


_dispatcher_instance: CallbackDispatcher | None = None
_callback_timeout = 5.0


def _dispatcher() -> CallbackDispatcher:
    global _dispatcher_instance
    if _dispatcher_instance is None:
        _dispatcher_instance = CallbackDispatcher(_callback_timeout)
    return _dispatcher_instance
