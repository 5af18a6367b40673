"""Lifecycle events: one JSON line each on stderr, handed to every monitoring callback."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from dfjob import events
from dfjob.config import MonitoringSettings, Settings
from dfjob.errors import DfjobError
from tests.support.waiting import wait_for


@pytest.fixture(autouse=True)
def _restore(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """structlog is put back afterwards: it holds the test's stderr, which closes."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    structlog.reset_defaults()


def _json_logs() -> None:
    # Inside the test body: pytest swaps sys.stderr between fixture setup and the call.
    events.configure_logging("json", "info")


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    captured = capsys.readouterr()
    assert captured.out == ""
    return [json.loads(line) for line in captured.err.splitlines()]


def test_emit_logs_one_json_line_with_event_timestamp_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    _json_logs()
    events.emit(events.JOB_ENQUEUED, job_id=7, data_flow_id=3, data_flow_name="sync", queue="default")
    [line] = _lines(capsys)
    assert line["event"] == "job.enqueued"
    assert line["level"] == "info"
    assert line["timestamp"].endswith(("Z", "+00:00"))
    assert (line["job_id"], line["data_flow_id"], line["data_flow_name"], line["queue"]) == (7, 3, "sync", "default")


def test_event_names_are_the_contracts() -> None:
    assert [
        events.JOB_ENQUEUED,
        events.JOB_STARTED,
        events.JOB_FINISHED,
        events.JOB_RESCUED,
        events.HEARTBEAT_FINISHED,
        events.WORKER_STARTED,
        events.WORKER_STOPPED,
        events.DB_UNAVAILABLE,
    ] == [
        "job.enqueued",
        "job.started",
        "job.finished",
        "job.rescued",
        "heartbeat.finished",
        "worker.started",
        "worker.stopped",
        "db.unavailable",
    ]


def test_level_filters_info_events(capsys: pytest.CaptureFixture[str]) -> None:
    events.configure_logging("json", "warning")
    events.emit(events.HEARTBEAT_FINISHED, due=0, enqueued=0, skipped=0)
    assert _lines(capsys) == []
    _json_logs()
    events.emit(events.HEARTBEAT_FINISHED, due=0, enqueued=0, skipped=0)
    assert [line["event"] for line in _lines(capsys)] == ["heartbeat.finished"]


def test_callbacks_receive_name_and_payload(capsys: pytest.CaptureFixture[str]) -> None:
    _json_logs()
    seen: list[tuple[str, dict[str, Any]]] = []
    events._callbacks.append(("first", lambda name, payload: seen.append((name, payload))))
    events._callbacks.append(("second", lambda name, payload: seen.append((name.upper(), payload))))
    events.emit(events.HEARTBEAT_FINISHED, due=2, enqueued=1, skipped=1)
    events.flush()
    assert seen == [
        ("heartbeat.finished", {"due": 2, "enqueued": 1, "skipped": 1}),
        ("HEARTBEAT.FINISHED", {"due": 2, "enqueued": 1, "skipped": 1}),
    ]


def test_each_callback_gets_its_own_payload_copy() -> None:
    _json_logs()
    seen: list[dict[str, Any]] = []

    def meddle(name: str, payload: dict[str, Any]) -> None:
        payload["job_id"] = "changed"

    events._callbacks.append(("meddle", meddle))
    events._callbacks.append(("watch", lambda name, payload: seen.append(payload)))
    events.emit(events.JOB_ENQUEUED, job_id=1)
    events.flush()
    assert seen == [{"job_id": 1}]


def test_raising_callback_is_logged_and_does_not_propagate(capsys: pytest.CaptureFixture[str]) -> None:
    _json_logs()
    seen: list[str] = []

    def broken(name: str, payload: dict[str, Any]) -> None:
        raise RuntimeError("monitoring is down")

    events._callbacks.append(("mod:broken", broken))
    events._callbacks.append(("after", lambda name, payload: seen.append(name)))
    events.emit(events.JOB_ENQUEUED, job_id=1)
    events.flush()
    assert seen == ["job.enqueued"]  # the next callback still ran
    lines = _lines(capsys)
    assert [line["event"] for line in lines] == ["job.enqueued", events.CALLBACK_FAILED]
    failure = lines[1]
    assert failure["level"] == "warning"
    assert failure["callback"] == "mod:broken"
    assert "monitoring is down" in failure["error"]


def test_a_hanging_callback_delays_neither_the_caller_nor_later_events(capsys: pytest.CaptureFixture[str]) -> None:
    _json_logs()
    release = threading.Event()
    seen: list[str] = []
    events._callbacks.append(("mod:hangs", lambda name, payload: release.wait(30)))
    events._callbacks.append(("after", lambda name, payload: seen.append(name)))
    monkeypatch_timeout = events._dispatcher()
    old_timeout, monkeypatch_timeout.timeout = monkeypatch_timeout.timeout, 0.2
    try:
        started = time.monotonic()
        events.emit(events.JOB_ENQUEUED, job_id=1)
        events.emit(events.JOB_STARTED, job_id=1)
        assert time.monotonic() - started < 0.1, "emit waited for a callback"
        wait_for(lambda: seen == ["job.enqueued", "job.started"], timeout=10, what="both events past the hang")
        timeouts = [line for line in _lines(capsys) if line["event"] == events.CALLBACK_TIMEOUT]
        assert [(line["callback"], line["failed_event"]) for line in timeouts] == [
            ("mod:hangs", "job.enqueued"),
            ("mod:hangs", "job.started"),
        ]
    finally:
        release.set()
        monkeypatch_timeout.timeout = old_timeout


def _settings(*callbacks: str) -> Settings:
    return Settings(monitoring=MonitoringSettings(callbacks=callbacks))


@pytest.mark.parametrize(
    "path",
    [
        "no colon",
        "os.path",
        f"no_such_module_{uuid.uuid4().hex[:8]}:hook",
        "os:no_such_function",
        "os:sep",  # exists, but is not callable
    ],
)
def test_load_callbacks_refuses_a_bad_path(path: str) -> None:
    with pytest.raises(DfjobError, match=r"monitoring\.callbacks"):
        events.load_callbacks(_settings(path))


def test_load_callbacks_loads_and_replaces(tmp_path: Path) -> None:
    _json_logs()
    name = f"hooks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("SEEN = []\n\ndef hook(event, payload):\n    SEEN.append((event, payload))\n")
    sys.path.insert(0, str(tmp_path))
    events._callbacks.append(("stale", lambda name, payload: None))
    events.load_callbacks(_settings(f"{name}:hook"))
    assert [path for path, _ in events._callbacks] == [f"{name}:hook"]
    events.emit(events.JOB_ENQUEUED, job_id=5)
    events.flush()
    assert sys.modules[name].SEEN == [("job.enqueued", {"job_id": 5})]


def test_a_refused_load_keeps_the_previous_callbacks() -> None:
    events._callbacks.append(("kept", lambda name, payload: None))
    with pytest.raises(DfjobError):
        events.load_callbacks(_settings("os:path", "os:nope"))
    assert [path for path, _ in events._callbacks] == ["kept"]
