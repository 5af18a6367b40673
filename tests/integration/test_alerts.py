"""Alerts on SQLite and Postgres, in process with the project's own clock moved: raised once into
the outbox with the state change that caused them, cleared when it is over, and delivered to a
real HTTP receiver at least once, signed, retried with backoff while it is down, for a day."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from dfjob import alerts, clock
from dfjob.config import AlertSettings, RetrySettings, Settings
from dfjob.heartbeat import heartbeat
from dfjob.models import AlertDelivery, AlertOutbox, DataFlow, Job, QueueState
from dfjob.registry import FlowSpec, add_flow
from dfjob.store import store
from dfjob.store.rows import Outcome, RunStatus
from dfjob.trigger import trigger_run
from tests.support import store_ops
from tests.support.receiver import Receiver

SECRET = "s3cret-key"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def _with_alerts(settings: Settings, *destinations: AlertSettings) -> Settings:
    return dataclasses.replace(settings, alerts=destinations)


def _outbox(event: str | None = None) -> list[dict[str, Any]]:
    rows = AlertOutbox.select().order_by(AlertOutbox.id)
    return [row.payload for row in rows if event is None or row.event == event]


def _fail_for_good(settings: Settings, name: str = "broken") -> int:
    """A job of flow `name` whose only attempt fails: the worker's finish raises `job.failed`."""
    flow = DataFlow.get_or_none(DataFlow.name == name) or add_flow(
        settings, FlowSpec(name=name, class_path="sample_flows:Fail", max_attempts=1)
    )
    enqueued = trigger_run(settings, flow, params={"at": clock.now().isoformat()})
    now = clock.now()
    [claimed] = store_ops.claim("w1", ["default"], 1, now, 60)
    outcome = Outcome(claimed, RunStatus.FAILED, now, now, error_message="ValueError: no rows")
    store_ops.finish([outcome], RetrySettings(max_attempts=1))
    return enqueued.job_id


def _succeed(settings: Settings, flow: DataFlow) -> None:
    trigger_run(settings, flow, params={"at": clock.now().isoformat()})
    now = clock.now()
    [claimed] = store_ops.claim("w1", [flow.queue], 1, now, 60)
    store_ops.finish([Outcome(claimed, RunStatus.SUCCESS, now, now)], RetrySettings())


def _travel_to(moment: datetime) -> None:
    clock.travel(0)
    clock.travel((moment - clock.now()).total_seconds())


# -- raising ---------------------------------------------------------------------------------------


def test_a_job_that_fails_for_good_raises_job_failed_with_its_finished_keys(database: Settings) -> None:
    job_id = _fail_for_good(database)

    [payload] = _outbox("job.failed")

    assert payload["job_id"] == job_id
    assert (payload["status"], payload["will_retry"], payload["error"]) == ("failed", False, "ValueError: no rows")
    assert {"run_id", "data_flow_id", "data_flow_name", "queue", "attempt", "duration_ms"} <= set(payload)


def test_a_failure_that_will_retry_raises_nothing(database: Settings) -> None:
    flow = add_flow(database, FlowSpec(name="flaky", class_path="sample_flows:Fail", max_attempts=3))
    trigger_run(database, flow)
    now = clock.now()
    [claimed] = store_ops.claim("w1", ["default"], 1, now, 60)
    store_ops.finish([Outcome(claimed, RunStatus.FAILED, now, now, error_message="x")], RetrySettings())

    assert _outbox() == []


def test_flow_late_fires_once_and_again_only_after_a_success(database: Settings) -> None:
    start = clock.now()
    flow = add_flow(database, FlowSpec(name="nightly", class_path="sample_flows:Succeed", late_after="26h"))
    add_flow(database, FlowSpec(name="off", class_path="sample_flows:Succeed", late_after="1h", enabled=False))

    _travel_to(start + timedelta(hours=25))
    heartbeat(database)
    assert _outbox("flow.late") == []
    _travel_to(start + timedelta(hours=27))
    heartbeat(database)
    _travel_to(start + timedelta(hours=40))
    heartbeat(database)

    [late] = _outbox("flow.late")
    assert (late["data_flow_name"], late["late_after"], late["last_success_at"]) == ("nightly", "26h", None)
    _succeed(database, DataFlow.get_by_id(flow.id))
    succeeded_at = clock.now()
    heartbeat(database)
    assert len(_outbox("flow.late")) == 1  # it just succeeded: not late
    _travel_to(succeeded_at + timedelta(hours=27))
    heartbeat(database)
    second = _outbox("flow.late")[1]
    assert second["last_success_at"] is not None
    assert len(_outbox("flow.late")) == 2  # the disabled flow is never late


def test_queue_stalled_fires_once_and_clears_when_a_worker_serves_it(database: Settings) -> None:
    start = clock.now()
    flow = add_flow(database, FlowSpec(name="report", class_path="sample_flows:Succeed", queue="reports"))
    trigger_run(database, flow)
    add_flow(database, FlowSpec(name="held", class_path="sample_flows:Succeed", queue="held"))
    trigger_run(database, DataFlow.get(DataFlow.name == "held"))
    store().set_paused("held", True, start)  # paused on purpose: never "stalled"

    _travel_to(start + timedelta(minutes=4))
    heartbeat(database)
    assert _outbox("queue.stalled") == []
    _travel_to(start + timedelta(minutes=6))
    heartbeat(database)
    heartbeat(database)

    [stalled] = _outbox("queue.stalled")
    assert (stalled["queue"], stalled["ready"]) == ("reports", 1)
    assert stalled["oldest_ready_seconds"] >= 300
    store().register_worker("w-reports", "host", 1, ["reports"], 1, 60, clock.now())
    heartbeat(database)
    assert QueueState.get_by_id("reports").stalled_alerted_at is None
    # The worker vanishes (stale after 2 leases); the job still waits: stalled again, once more.
    _travel_to(start + timedelta(minutes=20))
    heartbeat(database)
    heartbeat(database)
    assert [payload["queue"] for payload in _outbox("queue.stalled")] == ["reports", "reports"]


# -- delivering ------------------------------------------------------------------------------------


def _signature_ok(body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


def test_an_alert_is_delivered_once_signed_with_its_keys(database: Settings, receiver: Receiver) -> None:
    settings = _with_alerts(database, AlertSettings(url=receiver.url, secret=SECRET))
    job_id = _fail_for_good(settings)

    assert alerts.deliver(settings) == 1
    assert alerts.deliver(settings) == 0

    [request] = receiver.received
    assert request.path == "/hooks/alerts"
    assert _signature_ok(request.body, request.headers["X-Dfjob-Signature"])
    body = request.json()
    assert (body["alert"], body["job_id"], body["status"]) == ("job.failed", job_id, "failed")
    assert body["text"].startswith(f"dfjob: job {job_id} of broken failed for good")
    [delivery] = AlertDelivery.select()
    assert (delivery.attempts, delivery.sent_at is not None) == (1, True)


def test_slack_gets_a_text_body_and_only_the_events_it_listens_for(database: Settings, receiver: Receiver) -> None:
    slack = AlertSettings(url=receiver.url, format="slack", on=("flow.late",))
    settings = _with_alerts(database, slack)
    _fail_for_good(settings)
    add_flow(settings, FlowSpec(name="nightly", class_path="sample_flows:Succeed", late_after="1h"))
    _travel_to(clock.now() + timedelta(hours=2))

    heartbeat(settings)

    [body] = receiver.bodies()
    assert set(body) == {"text"}
    assert body["text"].startswith("dfjob: data flow nightly has had no successful run for 1h")


def test_a_receiver_that_is_down_gets_the_alert_when_it_is_back_and_only_once(
    database: Settings, receiver: Receiver, captured_events: list[tuple[str, dict[str, Any]]]
) -> None:
    settings = _with_alerts(database, AlertSettings(url=receiver.url, secret=SECRET))
    receiver.stop()
    _fail_for_good(settings)
    start = clock.now()

    assert alerts.deliver(settings) == 0
    [failed] = [payload for name, payload in captured_events if name == "alert.failed"]
    assert (failed["alert"], failed["url_host"], failed["will_retry"]) == ("job.failed", "127.0.0.1", True)
    assert "hooks" not in json.dumps(failed)  # never the URL's path: a webhook's path is its secret
    [delivery] = AlertDelivery.select()
    assert delivery.next_attempt_at - start >= timedelta(seconds=9)
    assert alerts.deliver(settings) == 0  # not due yet: nothing tried
    assert AlertDelivery.get().attempts == 1

    _travel_to(start + timedelta(seconds=11))
    assert alerts.deliver(settings) == 0  # still down: 20 s until the next try
    receiver.start()
    _travel_to(start + timedelta(seconds=32))
    assert alerts.deliver(settings) == 1
    _travel_to(start + timedelta(minutes=30))
    assert alerts.deliver(settings) == 0

    assert len(receiver.received) == 1
    assert [name for name, _ in captured_events].count("alert.sent") == 1


def test_backoff_doubles_to_ten_minutes_and_gives_up_after_a_day(database: Settings, receiver: Receiver) -> None:
    settings = _with_alerts(database, AlertSettings(url=receiver.url))
    receiver.status = 503
    _fail_for_good(settings)
    start = clock.now()
    delays = []
    alerts.deliver(settings)
    while AlertDelivery.get().gave_up_at is None:
        delays.append(round((AlertDelivery.get().next_attempt_at - clock.now()).total_seconds()))
        _travel_to(AlertDelivery.get().next_attempt_at)
        alerts.deliver(settings)
        assert clock.now() - start < timedelta(days=1, hours=1)

    assert delays[:7] == [10, 20, 40, 80, 160, 320, 600]
    assert set(delays[7:]) == {600}
    assert clock.now() - start >= timedelta(hours=23, minutes=50)
    assert len(receiver.received) == AlertDelivery.get().attempts
    _travel_to(clock.now() + timedelta(hours=1))
    assert alerts.deliver(settings) == 0
    assert len(receiver.received) == AlertDelivery.get().attempts  # given up: no more tries


# -- schedules across daylight-saving changes ------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        # 2026-03-29: Berlin skips 02:00-03:00. That day's 02:30 runs once, when the clocks jump.
        ("2026-03-27T00:00:00", ["2026-03-27T01:30", "2026-03-28T01:30", "2026-03-29T01:00", "2026-03-30T00:30"]),
        # 2026-10-25: Berlin repeats 02:00-03:00. That day's 02:30 runs once, the first time.
        ("2026-10-23T00:00:00", ["2026-10-23T00:30", "2026-10-24T00:30", "2026-10-25T00:30", "2026-10-26T01:30"]),
    ],
)
def test_a_daily_0230_berlin_flow_runs_once_a_day_across_dst_changes(
    database: Settings, start: str, expected: list[str]
) -> None:
    begin = datetime.fromisoformat(start + "+00:00")
    _travel_to(begin)
    flow = add_flow(
        database, FlowSpec(name="berlin", class_path="sample_flows:Succeed", cron="30 2 * * *", tz="Europe/Berlin")
    )
    moment = begin
    while moment < begin + timedelta(days=4):
        _travel_to(moment)
        heartbeat(database)
        for job in Job.select().where(Job.data_flow == flow.id, Job.status == "queued"):
            store().cancel(job.id, clock.now())  # as if run: the next slot is not held back
        moment += timedelta(minutes=10)

    jobs = list(Job.select().where(Job.data_flow == flow.id).order_by(Job.id))
    assert [job.scheduled_for.strftime("%Y-%m-%dT%H:%M") for job in jobs] == expected
    for job in jobs:
        assert timedelta(0) <= job.created_at - job.scheduled_for < timedelta(minutes=10)
