"""Lifecycle events: one structlog event each, also handed to every monitoring callback.

Event names are constants here; `emit` is the one function every module may call. A callback
that raises is logged and never affects the job.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

from dfjob import clock
from dfjob.config import Settings, check_callable_path
from dfjob.errors import DfjobError

JOB_ENQUEUED = "job.enqueued"
JOB_STARTED = "job.started"
JOB_FINISHED = "job.finished"
JOB_RESCUED = "job.rescued"
HEARTBEAT_FINISHED = "heartbeat.finished"
WORKER_STARTED = "worker.started"
WORKER_STOPPED = "worker.stopped"
DB_UNAVAILABLE = "db.unavailable"
CALLBACK_FAILED = "monitoring.callback_failed"

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


WARNINGS = frozenset({DB_UNAVAILABLE})


def emit(event: str, **payload: Any) -> None:
    """Log one lifecycle event and pass it to every monitoring callback."""
    if event in WARNINGS:
        log.warning(event, **payload)
    else:
        log.info(event, **payload)
    if not _callbacks:
        return
    with contextlib.redirect_stdout(sys.stderr):  # a callback's prints must not reach our stdout
        _call_callbacks(event, payload)


def _call_callbacks(event: str, payload: dict[str, Any]) -> None:
    for path, callback in _callbacks:
        try:
            callback(event, dict(payload))
        except Exception as exc:  # noqa: BLE001 (a monitoring failure must never touch the job)
            log.warning(CALLBACK_FAILED, callback=path, failed_event=event, error=f"{type(exc).__name__}: {exc}")
