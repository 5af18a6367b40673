"""Claiming ahead, in process with real runner processes, on SQLite and Postgres: jobs queued
behind a runner's current one start the moment it ends, are never held hostage by a long run while
another runner is free, and go back to the queue untouched when their runner dies or the worker
stops (no attempt used, no run left behind)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from dfjob import db
from dfjob.config import Settings
from dfjob.models import DataFlow, DataFlowRun, Job
from dfjob.registry import FlowSpec, add_flow
from dfjob.trigger import trigger_run
from dfjob.worker import Worker
from tests.support.waiting import wait_for

# Short runs a worker sees first, so that it claims ahead (see dfjob.ahead.MIN_SEEN).
WARM_UP = 8


def _flow(settings: Settings, name: str, class_name: str, **spec: Any) -> DataFlow:
    return add_flow(settings, FlowSpec(name=name, class_path=f"sample_flows:{class_name}", **spec))


def _jobs(settings: Settings, flow: DataFlow, count: int, priority: int = 0, **params: Any) -> list[int]:
    return [
        trigger_run(settings, flow, priority=priority, params={"n": index, **params}).job_id for index in range(count)
    ]


def _runs(job_id: int) -> list[DataFlowRun]:
    return list(DataFlowRun.select().where(DataFlowRun.job == job_id).order_by(DataFlowRun.id))


def _warm_up(settings: Settings) -> None:
    """Short runs first (highest priority), so the worker has seen them when the rest come."""
    _jobs(settings, _flow(settings, "warm", "Succeed", max_running=8), WARM_UP, priority=-10)


def test_jobs_queued_behind_a_runner_that_dies_run_elsewhere_with_their_attempts_untouched(
    database: Settings,
) -> None:
    _warm_up(database)
    crash = _jobs(database, _flow(database, "crash", "Crash", max_attempts=1), 1, priority=1)[0]
    quick = _jobs(database, _flow(database, "quick", "Succeed", max_running=8), 3, priority=2)
    worker = Worker(database, concurrency=1)

    worker.run(burst=True)

    [crashed] = _runs(crash)
    assert crashed.status == "failed"
    assert "runner process died" in (crashed.error_message or "")
    for job_id in quick:
        job = Job.get_by_id(job_id)
        assert (job.status, job.attempts, job.rescues) == ("succeeded", 1, 0)
        [run] = _runs(job_id)
        assert run.status == "success"
        # Claimed with the crash (one claim, one runner: queued behind it), never claimed again.
        assert run.created_at == crashed.created_at


def test_a_long_run_never_holds_a_queued_job_while_another_runner_is_free(database: Settings) -> None:
    _warm_up(database)
    long_job = _jobs(database, _flow(database, "long", "Sleep"), 1, priority=1, seconds=3)[0]
    short = _jobs(database, _flow(database, "short", "Succeed", max_running=8), 3, priority=2)

    Worker(database, concurrency=2).run(burst=True)

    [long_run] = _runs(long_job)
    assert long_run.status == "success"
    for job_id in short:
        [run] = _runs(job_id)
        # One of them was queued behind the long run; it was taken back for the free runner.
        assert run.started_at < long_run.started_at + timedelta(seconds=1), (run.started_at, long_run.started_at)
        assert Job.get_by_id(job_id).attempts == 1


def test_a_queued_jobs_started_at_is_when_it_really_started(database: Settings) -> None:
    _warm_up(database)
    stamped = _jobs(database, _flow(database, "stamp", "Stamp", max_running=8), 20, priority=1)

    Worker(database, concurrency=1).run(burst=True)

    for job_id in stamped:
        [run] = _runs(job_id)
        entered = datetime.fromtimestamp(run.result["entered"], UTC)
        assert abs((run.started_at - entered).total_seconds()) < 0.05, (run.started_at, entered)


def test_stopping_hands_back_what_has_not_started(database: Settings) -> None:
    _warm_up(database)
    sleeper = _flow(database, "sleeper", "Sleep", max_running=8)
    jobs = _jobs(database, sleeper, 30, priority=1, seconds=0.02)
    worker = Worker(database, concurrency=1)

    def run() -> None:
        try:
            worker.run()
        finally:
            db.database_proxy.obj.close()  # this thread's connection

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: Job.select().where(Job.data_flow == sleeper.id, Job.status == "succeeded").count() >= 3)
        assert len(worker.ahead) + sum(len(slot.behind) for slot in worker.pool.slots) > 0  # some queued ahead
        worker.request_stop()
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive()

    for job_id in jobs:
        job = Job.get_by_id(job_id)
        runs = _runs(job_id)
        if job.status == "queued":
            assert (job.attempts, job.locked_by, runs) == (0, None, [])
        else:
            assert (job.status, job.attempts, [run.status for run in runs]) == ("succeeded", 1, ["success"])
    assert DataFlowRun.select().where(DataFlowRun.status.in_(["pending", "in_progress"])).count() == 0
