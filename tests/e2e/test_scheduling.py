"""Schedules on time and alerts that reach people, through the real commands on SQLite and
Postgres: `dfjob scheduler` fires each slot within a second whatever its --interval, wakes on a
schedule change, and it and `dfjob heartbeat` deliver alerts to a real HTTP receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from tests.e2e.conftest import Dfjob, as_time, log_lines
from tests.support.receiver import Receiver
from tests.support.waiting import wait_for


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def _lateness(dfjob: Dfjob, flow: str, since: datetime | None = None) -> list[float]:
    """Seconds from each scheduled job's slot (those from `since` on) to its INSERT."""
    rows = dfjob.db.rows(
        "SELECT j.scheduled_for, j.created_at FROM jobs j JOIN data_flows f ON f.id = j.data_flow_id"
        " WHERE f.name = ? AND j.triggered_by = 'schedule' ORDER BY j.id",
        (flow,),
    )
    return [
        (as_time(row["created_at"]) - slot).total_seconds()
        for row in rows
        if (slot := as_time(row["scheduled_for"])) is not None and (since is None or slot >= since)
    ]


@pytest.mark.slow
def test_the_scheduler_fires_every_slot_within_a_second_whatever_its_interval(dfjob: Dfjob) -> None:
    dfjob.add_flow("every5s", "sample_flows:Succeed", "--every", "5s")
    dfjob.start("worker", name="worker")
    scheduler = dfjob.start("scheduler", "--interval", "60", name="scheduler")
    [first, *_] = wait_for(lambda: scheduler.events("heartbeat.finished"), what="the scheduler's first pass")
    # Slots that came due while the scheduler was starting are caught up by that pass, not on time.
    since = datetime.fromisoformat(first["timestamp"])

    wait_for(lambda: len(_lateness(dfjob, "every5s", since)) >= 12, timeout=90, what="a minute of 5 s slots")

    lateness = _lateness(dfjob, "every5s", since)
    assert all(0 <= late < 1.0 for late in lateness), lateness


def test_a_new_flow_wakes_the_scheduler_at_once(dfjob: Dfjob) -> None:
    dfjob.ok("db", "init")
    scheduler = dfjob.start("scheduler", "--interval", "300", name="scheduler")
    wait_for(lambda: scheduler.events("heartbeat.finished"), what="the scheduler's first pass")

    flow = dfjob.json("flows", "add", "hourly", "--class", "sample_flows:Succeed", "--every", "1h")

    [late] = wait_for(lambda: _lateness(dfjob, "hourly"), timeout=10, what="the new flow's first slot")
    assert late < 1.0
    assert as_time(flow["next_run_at"]) is not None


@pytest.mark.postgres
def test_without_notify_the_scheduler_looks_again_every_second(
    make_dfjob: Callable[..., Dfjob], postgres_url: str
) -> None:
    dfjob = make_dfjob(postgres_url, worker={"notify": False})
    dfjob.ok("db", "init")
    scheduler = dfjob.start("scheduler", "--interval", "300", name="scheduler")
    wait_for(lambda: scheduler.events("heartbeat.finished"), what="the scheduler's first pass")

    dfjob.json("flows", "add", "hourly", "--class", "sample_flows:Succeed", "--every", "1h")

    [late] = wait_for(lambda: _lateness(dfjob, "hourly"), timeout=10, what="the new flow's first slot")
    assert late < 1.5


def test_heartbeat_delivers_a_failed_job_alert_once(
    make_dfjob: Callable[..., Dfjob], database_url: str, receiver: Receiver
) -> None:
    dfjob = make_dfjob(database_url, alerts=[{"url": receiver.url, "secret": "k"}])
    dfjob.add_flow("broken", "sample_flows:Fail", "--max-attempts", "1", config={"message": "no rows"})
    job_id = dfjob.trigger("broken")
    dfjob.ok("worker", "--burst")

    err = dfjob.ok("heartbeat")
    dfjob.ok("heartbeat")

    [body] = receiver.bodies()
    assert (body["alert"], body["job_id"], body["data_flow_name"]) == ("job.failed", job_id, "broken")
    assert "no rows" in body["error"]
    assert receiver.received[0].headers["X-Dfjob-Signature"].startswith("sha256=")
    [sent] = [line for line in log_lines(err) if line["event"] == "alert.sent"]
    assert (sent["alert"], sent["url_host"], sent["status"]) == ("job.failed", "127.0.0.1", 200)


@pytest.mark.slow
def test_the_scheduler_delivers_once_the_receiver_is_back(
    make_dfjob: Callable[..., Dfjob], database_url: str, receiver: Receiver
) -> None:
    receiver.stop()
    dfjob = make_dfjob(database_url, alerts=[{"url": receiver.url, "format": "slack"}])
    dfjob.add_flow("broken", "sample_flows:Fail", "--max-attempts", "1")
    dfjob.trigger("broken")
    dfjob.ok("worker", "--burst")
    scheduler = dfjob.start("scheduler", "--interval", "300", name="scheduler")

    [failed] = wait_for(lambda: scheduler.events("alert.failed"), what="a first try that fails")
    assert failed["will_retry"] is True
    receiver.start()
    wait_for(lambda: receiver.received, timeout=30, what="the alert, once the receiver is back")
    wait_for(lambda: scheduler.events("alert.sent"), what="alert.sent")

    [body] = receiver.bodies()
    assert set(body) == {"text"}
    assert "failed for good" in body["text"]
    assert len(scheduler.events("alert.sent")) == 1
