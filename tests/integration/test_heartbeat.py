"""The heartbeat pass on SQLite and Postgres: what is due, what moves, and many heartbeats at once."""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dfjob import clock, db, events
from dfjob.config import Settings
from dfjob.heartbeat import HeartbeatResult, heartbeat
from dfjob.models import DataFlow, DataFlowRun, Job
from dfjob.registry import FlowSpec, add_flow, set_enabled
from dfjob.store import store
from dfjob.trigger import trigger_run
from tests.support import store_ops


def _flow(settings: Settings, name: str, **spec: Any) -> DataFlow:
    return add_flow(settings, FlowSpec(name=name, class_path="sample_flows:Succeed", **spec))


def _reload(flow: DataFlow) -> DataFlow:
    return DataFlow.get_by_id(flow.id)


def _jobs(flow: DataFlow) -> list[Job]:
    return list(Job.select().where(Job.data_flow == flow.id).order_by(Job.id))


def _active(flow: DataFlow) -> Job:
    [job] = [job for job in _jobs(flow) if job.status in ("queued", "running")]
    return job


def _next_run_at(flow: DataFlow) -> datetime:
    value = _reload(flow).next_run_at
    assert isinstance(value, datetime)
    return value


def test_only_enabled_flows_whose_next_run_at_has_come_are_due(database: Settings) -> None:
    due = _flow(database, "due", every="5m")
    disabled = _flow(database, "disabled", every="5m", enabled=False)
    unscheduled = _flow(database, "unscheduled")
    not_yet = _flow(database, "notyet", cron="0 3 * * *")
    assert _next_run_at(not_yet) > clock.now()

    result = heartbeat(database, now=clock.now())

    assert result == HeartbeatResult(due=1, enqueued=1, skipped=0)
    [job] = _jobs(due)
    assert (job.status, job.queue) == ("queued", "default")
    assert _jobs(disabled) == _jobs(unscheduled) == _jobs(not_yet) == []


def test_disabled_flows_are_skipped_until_enabled(database: Settings) -> None:
    flow = _flow(database, "paused", every="1m", enabled=False)
    later = clock.now() + timedelta(days=1)

    assert heartbeat(database, now=later) == HeartbeatResult(due=0, enqueued=0, skipped=0)
    assert _jobs(flow) == []

    set_enabled(_reload(flow), True)
    assert heartbeat(database, now=later).enqueued == 1
    assert len(_jobs(flow)) == 1


def test_flows_without_a_schedule_are_never_due(database: Settings) -> None:
    flow = _flow(database, "manual")
    assert _reload(flow).next_run_at is None
    for days in (0, 1, 365):
        assert heartbeat(database, now=clock.now() + timedelta(days=days)).due == 0
    assert _jobs(flow) == []


def test_every_moves_next_run_at_on_its_cadence_and_does_not_replay_missed_slots(database: Settings) -> None:
    flow = _flow(database, "cadence", every="5m")
    t0 = _next_run_at(flow)
    assert t0 <= clock.now()

    assert heartbeat(database, now=t0 + timedelta(seconds=1)).enqueued == 1
    assert _next_run_at(flow) == t0 + timedelta(minutes=5)
    assert heartbeat(database, now=t0 + timedelta(minutes=2)).due == 0

    store().cancel(_active(flow).id, t0 + timedelta(minutes=3))
    # Slots at 5, 10, 15 and 20 minutes were missed: one job now, and the next slot after now.
    result = heartbeat(database, now=t0 + timedelta(minutes=23))

    assert result == HeartbeatResult(due=1, enqueued=1, skipped=0)
    assert _next_run_at(flow) == t0 + timedelta(minutes=25)
    assert len(_jobs(flow)) == 2
    assert heartbeat(database, now=t0 + timedelta(minutes=24)).due == 0


def test_cron_moves_next_run_at_to_the_next_fire_time_and_does_not_replay_missed_slots(database: Settings) -> None:
    flow = _flow(database, "nightly", cron="0 3 * * *")
    fire = _next_run_at(flow)
    assert (fire.hour, fire.minute, fire.second, fire.microsecond) == (3, 0, 0, 0)
    assert clock.now() < fire <= clock.now() + timedelta(days=1)
    assert heartbeat(database, now=fire - timedelta(seconds=1)).due == 0

    assert heartbeat(database, now=fire).enqueued == 1
    assert _next_run_at(flow) == fire + timedelta(days=1)

    store().cancel(_active(flow).id, fire + timedelta(hours=1))
    result = heartbeat(database, now=fire + timedelta(days=3, hours=1))

    assert result == HeartbeatResult(due=1, enqueued=1, skipped=0)
    assert _next_run_at(flow) == fire + timedelta(days=4)
    assert len(_jobs(flow)) == 2


def test_a_due_flow_whose_scheduled_job_is_still_queued_is_skipped_and_its_next_run_at_still_advances(
    database: Settings,
) -> None:
    flow = _flow(database, "busy", every="1m")
    t0 = _next_run_at(flow)
    assert heartbeat(database, now=t0).enqueued == 1
    first = _active(flow)

    queued = heartbeat(database, now=t0 + timedelta(seconds=61))
    assert queued == HeartbeatResult(due=1, enqueued=0, skipped=1)
    assert _next_run_at(flow) == t0 + timedelta(minutes=2)

    # A running job does not block the schedule, nor does a triggered one.
    [claimed] = store_ops.claim("w", ["default"], 1, t0 + timedelta(seconds=62), 3600)
    assert claimed.job_id == first.id
    trigger_run(database, flow)
    running = heartbeat(database, now=t0 + timedelta(seconds=121))
    assert running == HeartbeatResult(due=1, enqueued=1, skipped=0)
    assert _next_run_at(flow) == t0 + timedelta(minutes=3)
    scheduled = [job for job in _jobs(flow) if job.triggered_by == "schedule"]
    assert [job.scheduled_for for job in scheduled] == [t0, t0 + timedelta(minutes=2)]


def test_an_enqueued_flow_gets_last_run_at_and_last_run_status_stamped(database: Settings) -> None:
    flow = _flow(database, "stamped", every="1h")
    before = _reload(flow)
    assert (before.last_run_at, before.last_run_status) == (None, None)
    now = clock.now() + timedelta(seconds=5)

    heartbeat(database, now=now)

    after = _reload(flow)
    assert (after.last_run_at, after.last_run_status) == (now, "in_progress")
    assert _active(flow).created_at == now


def test_heartbeat_finished_event_reports_due_enqueued_and_skipped(
    database: Settings, captured_events: list[tuple[str, dict[str, Any]]]
) -> None:
    busy = _flow(database, "alreadybusy", every="5m")
    now = clock.now()
    heartbeat(database, now=now)  # its scheduled job is still queued when it is due again
    fresh = _flow(database, "fresh", every="10m", queue="hb")
    _flow(database, "later", cron="0 3 * * *")
    trigger_run(database, busy)  # a triggered job never blocks the schedule: this one does not count
    captured_events.clear()

    result = heartbeat(database, now=now + timedelta(minutes=5))

    assert result == HeartbeatResult(due=2, enqueued=1, skipped=1)
    enqueued = [payload for name, payload in captured_events if name == events.JOB_ENQUEUED]
    assert enqueued == [
        {"job_id": _active(fresh).id, "data_flow_id": fresh.id, "data_flow_name": "fresh", "queue": "hb"}
    ]
    assert captured_events[-1] == (events.HEARTBEAT_FINISHED, {"due": 2, "enqueued": 1, "skipped": 1})


def test_heartbeat_rescues_expired_leases(
    database: Settings, captured_events: list[tuple[str, dict[str, Any]]]
) -> None:
    flow = _flow(database, "orphaned")
    job_id = trigger_run(database, flow).job_id
    t0 = clock.now()
    [claimed] = store_ops.claim("host:1:vanished", ["default"], 1, t0, 30)
    store_ops.mark_started([claimed.run_id], t0)

    heartbeat(database, now=t0 + timedelta(seconds=10))
    assert Job.get_by_id(job_id).status == "running"

    heartbeat(database, now=t0 + timedelta(seconds=31))

    job = Job.get_by_id(job_id)
    assert (job.status, job.attempts, job.rescues, job.locked_by) == ("queued", 1, 1, None)
    run = DataFlowRun.get_by_id(claimed.run_id)
    assert run.status == "failed"
    assert "host:1:vanished" in (run.error_message or "")
    rescued = [payload for name, payload in captured_events if name == events.JOB_RESCUED]
    assert len(rescued) == 1
    assert (rescued[0]["job_id"], rescued[0]["run_id"]) == (job_id, claimed.run_id)
    assert (rescued[0]["data_flow_name"], rescued[0]["lost_worker"]) == ("orphaned", "host:1:vanished")


# -- many heartbeats at once ---------------------------------------------------------------------


def heartbeat_process(settings: Settings, now_iso: str, gate: Any, out: str) -> None:
    """One heartbeat in its own OS process, released together with the others by `gate`."""
    db.connect(settings.database.url, settings.base_dir)
    try:
        gate.wait(timeout=90)
        result = heartbeat(settings, now=clock.parse_iso(now_iso))
    finally:
        db.database_proxy.obj.close()
    Path(out).write_text(json.dumps(asdict(result)))


@pytest.mark.slow
def test_concurrent_heartbeats_enqueue_each_due_flow_exactly_once(database: Settings, tmp_path: Path) -> None:
    processes_count, flows_count = 8, 50
    flows = [_flow(database, f"many{index:02d}", every="1m") for index in range(flows_count)]
    now = clock.now()
    context = multiprocessing.get_context("spawn")
    gate = context.Barrier(processes_count)
    outputs = [tmp_path / f"heartbeat{index}.json" for index in range(processes_count)]
    processes = [
        context.Process(target=heartbeat_process, args=(database, clock.iso(now), gate, str(out))) for out in outputs
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=100)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    assert [process.exitcode for process in processes] == [0] * processes_count

    results = [json.loads(out.read_text()) for out in outputs]
    assert sum(result["enqueued"] for result in results) == flows_count
    jobs = list(Job.select())
    assert len(jobs) == flows_count
    assert sorted(job.data_flow_id for job in jobs) == sorted(flow.id for flow in flows)
    assert all(job.status == "queued" for job in jobs)
    assert all(_next_run_at(flow) > now for flow in flows)
