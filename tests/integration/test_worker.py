"""The worker end to end in-process: real runner processes, the job table on SQLite and Postgres."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from dfjob import clock, events
from dfjob.config import LogSettings, RetrySettings, Settings
from dfjob.errors import DfjobError
from dfjob.models import DataFlow, DataFlowRun, Job
from dfjob.registry import FlowSpec, add_flow
from dfjob.trigger import trigger_run
from dfjob.worker import Worker
from tests.support.waiting import wait_for


def _flow(settings: Settings, name: str, class_name: str = "Succeed", **spec: Any) -> DataFlow:
    return add_flow(settings, FlowSpec(name=name, class_path=f"sample_flows:{class_name}", **spec))


def _trigger(settings: Settings, flow: DataFlow, **kwargs: Any) -> int:
    return trigger_run(settings, flow, **kwargs).job_id


def _job(job_id: int) -> Job:
    return Job.get_by_id(job_id)


def _runs(job_id: int) -> list[DataFlowRun]:
    return list(DataFlowRun.select().where(DataFlowRun.job == job_id).order_by(DataFlowRun.id))


def test_a_successful_run_records_result_timings_worker_and_flow_status(database: Settings) -> None:
    flow = _flow(database, "hello", configuration={"answer": 42})
    job_id = _trigger(database, flow, params={"who": "me"})

    Worker(database, name="worker-one").run(burst=True)

    [run] = _runs(job_id)
    assert (run.status, run.attempt, run.worker, run.error_message) == ("success", 1, "worker-one", None)
    assert run.result == {"config": {"answer": 42}, "params": {"who": "me"}}
    assert run.started_at is not None
    assert run.ended_at is not None
    assert run.created_at <= run.started_at <= run.ended_at
    assert run.duration_ms is not None
    assert run.duration_ms >= 0
    job = _job(job_id)
    assert (job.status, job.attempts, job.locked_by, job.finished_at) == ("succeeded", 1, None, run.ended_at)
    assert DataFlow.get_by_id(flow.id).last_run_status == "success"


def test_a_failing_flow_is_retried_until_its_attempts_are_used_up(database: Settings) -> None:
    flow = _flow(database, "failing", "Fail", configuration={"message": "kaput"})
    job_id = _trigger(database, flow)

    Worker(database).run(burst=True)

    job = _job(job_id)
    assert (job.status, job.attempts, job.last_error) == ("failed", 3, "ValueError: kaput")
    runs = _runs(job_id)
    assert [run.attempt for run in runs] == [1, 2, 3]
    for run in runs:
        assert (run.status, run.error_message) == ("failed", "ValueError: kaput")
        assert "Traceback (most recent call last)" in (run.error_backtrace or "")
        assert 'raise ValueError(self.config.get("message", "boom"))' in (run.error_backtrace or "")
        assert (run.error_backtrace or "").rstrip().endswith("ValueError: kaput")
    assert DataFlow.get_by_id(flow.id).last_run_status == "failed"


def test_discard_fails_the_job_at_once_without_retry(database: Settings) -> None:
    job_id = _trigger(database, _flow(database, "discarded", "DiscardIt", max_attempts=5))

    Worker(database).run(burst=True)

    job = _job(job_id)
    assert (job.status, job.attempts) == ("failed", 1)
    [run] = _runs(job_id)
    assert run.status == "failed"
    assert "bad input, do not retry" in (run.error_message or "")


def test_bad_result_and_system_exit_fail_the_run_but_the_worker_goes_on(database: Settings) -> None:
    bad = _trigger(database, _flow(database, "bad", "BadResult", max_attempts=3, priority=1))
    exits = _trigger(database, _flow(database, "exits", "Exits", max_attempts=1, priority=2))
    after = _trigger(database, _flow(database, "after", priority=3))

    Worker(database, concurrency=1).run(burst=True)

    # The flow's work has happened: a bad result fails the job without a retry.
    [bad_run] = _runs(bad)
    assert bad_run.status == "failed"
    assert bad_run.error_message == "result: run() must return a dict or None, not list"
    [exit_run] = _runs(exits)
    assert (exit_run.status, exit_run.error_message) == ("failed", "SystemExit: 3")
    assert (_job(bad).status, _job(exits).status, _job(after).status) == ("failed", "failed", "succeeded")


def test_a_result_that_is_not_strict_json_fails_the_run_without_retry(database: Settings) -> None:
    job_id = _trigger(database, _flow(database, "nan", "NaNResult", max_attempts=3))

    Worker(database).run(burst=True)

    [run] = _runs(job_id)
    assert (run.status, run.result) == ("failed", None)
    assert (run.error_message or "").startswith("result: the result is not JSON: Out of range float values")
    assert (_job(job_id).status, _job(job_id).attempts) == ("failed", 1)


def test_runners_that_keep_dying_at_start_stop_the_worker_with_a_clear_error(database: Settings) -> None:
    # An unknown log level makes every runner fail while it configures logging, before it is ready.
    broken = replace(database, log=LogSettings(format="json", level="nonsense"))
    job_id = _trigger(database, _flow(database, "never"))

    with pytest.raises(DfjobError, match="runner processes keep dying as they start"):
        Worker(broken).run(burst=True)

    job = _job(job_id)
    assert (job.status, job.attempts) == ("queued", 0)


@pytest.mark.parametrize(
    ("class_name", "reason"), [("Crash", "exited with status 7"), ("Segfault", "SIGSEGV")], ids=["exit", "segfault"]
)
def test_a_dying_runner_fails_the_run_and_its_slot_is_replaced(
    database: Settings, class_name: str, reason: str
) -> None:
    dying = _trigger(database, _flow(database, "dying", class_name, max_attempts=1))
    following = _trigger(database, _flow(database, "following", priority=1))
    worker = Worker(database, concurrency=1, name="survivor")

    worker.run(burst=True)

    [run] = _runs(dying)
    assert run.status == "failed"
    assert "runner process died" in (run.error_message or "")
    assert reason in (run.error_message or "")
    assert _job(dying).status == "failed"
    [next_run] = _runs(following)
    assert (next_run.status, next_run.worker) == ("success", "survivor")


def test_a_run_past_its_flows_timeout_is_stopped(database: Settings) -> None:
    flow = _flow(database, "slow", "Sleep", timeout="2s", max_attempts=1)
    job_id = _trigger(database, flow, params={"seconds": 30})

    Worker(database).run(burst=True)

    [run] = _runs(job_id)
    assert (run.status, run.error_message) == ("failed", "timed out after 2s")
    assert _job(job_id).status == "failed"


def test_concurrency_three_runs_three_jobs_at_once(database: Settings, tmp_path: Path) -> None:
    markers = [tmp_path / f"marker{index}" for index in range(3)]
    job_ids = [
        _trigger(database, _flow(database, f"sleep{index}", "Sleep", configuration={"marker": str(marker)}),
                 params={"seconds": 60})
        for index, marker in enumerate(markers)
    ]  # fmt: skip
    worker = Worker(database, concurrency=3, name="triple")
    worker.start()
    try:

        def all_three_running() -> bool:
            worker.run_once()
            in_progress = DataFlowRun.select().where(DataFlowRun.status == "in_progress").count()
            return in_progress == 3 and all(marker.exists() and marker.read_text() for marker in markers)

        wait_for(all_three_running, timeout=60, what="three runs in progress at once")
        # One snapshot: all three jobs held by this worker, all three flows running in separate processes.
        assert [_job(job_id).status for job_id in job_ids] == ["running"] * 3
        assert {_job(job_id).locked_by for job_id in job_ids} == {"triple"}
        assert len({marker.read_text() for marker in markers}) == 3
    finally:
        worker.request_stop(force=True)
        worker.close()
    assert [_job(job_id).status for job_id in job_ids] == ["queued"] * 3


def test_burst_exits_when_nothing_is_ready_and_leaves_future_jobs_queued(database: Settings) -> None:
    now_job = _trigger(database, _flow(database, "now"))
    later_job = _trigger(database, _flow(database, "later"), run_at=clock.now() + timedelta(hours=1))

    Worker(database).run(burst=True)

    assert _job(now_job).status == "succeeded"
    later = _job(later_job)
    assert (later.status, later.attempts) == ("queued", 0)
    assert _runs(later_job) == []


def test_max_jobs_stops_the_worker_after_that_many_claims(database: Settings) -> None:
    job_ids = [_trigger(database, _flow(database, f"many{index}", priority=index)) for index in range(3)]

    worker = Worker(database, max_jobs=2)
    worker.run(burst=True)

    assert worker.stats.claimed == 2
    assert [_job(job_id).status for job_id in job_ids] == ["succeeded", "succeeded", "queued"]


def test_a_worker_serves_only_its_queues(database: Settings) -> None:
    high = _trigger(database, _flow(database, "urgent", queue="high"))
    default = _trigger(database, _flow(database, "ordinary"))

    Worker(database, queues=["high"]).run(burst=True)

    assert _job(high).status == "succeeded"
    assert (_job(default).status, _runs(default)) == ("queued", [])


def test_priority_is_respected_end_to_end(database: Settings, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    for key, priority in (("five", 5), ("minus-one", -1), ("two", 2), ("zero", 0)):
        flow = _flow(database, f"ledger-{key}", "Ledger", priority=priority,
                     configuration={"ledger": str(ledger), "key": key})  # fmt: skip
        _trigger(database, flow)

    Worker(database, concurrency=1).run(burst=True)

    keys = [line.split()[0] for line in ledger.read_text().splitlines()]
    assert keys == ["minus-one", "zero", "two", "five"]


CONTRACT_KEYS = {
    events.JOB_ENQUEUED: {"job_id", "data_flow_id", "data_flow_name", "queue"},
    events.WORKER_STARTED: {"worker", "queues", "concurrency"},
    events.JOB_STARTED: {"job_id", "run_id", "data_flow_id", "data_flow_name", "queue", "attempt", "worker"},
    events.JOB_FINISHED: {
        "job_id",
        "run_id",
        "data_flow_id",
        "data_flow_name",
        "queue",
        "attempt",
        "status",
        "duration_ms",
        "will_retry",
    },
    events.WORKER_STOPPED: {"worker", "queues", "concurrency"},
}


def test_lifecycle_events_fire_in_order_with_the_contracts_keys(
    database: Settings, captured_events: list[tuple[str, dict[str, Any]]]
) -> None:
    flow = _flow(database, "observed", queue="obs")
    job_id = _trigger(database, flow)

    Worker(database, queues=["obs"], concurrency=2, name="watcher").run(burst=True)

    names = [name for name, _ in captured_events]
    assert names == [
        events.JOB_ENQUEUED,
        events.WORKER_STARTED,
        events.JOB_STARTED,
        events.JOB_FINISHED,
        events.WORKER_STOPPED,
    ]
    for name, payload in captured_events:
        assert CONTRACT_KEYS[name] <= set(payload), name
        if "data_flow_name" in CONTRACT_KEYS[name]:
            assert (payload["job_id"], payload["data_flow_id"]) == (job_id, flow.id)
            assert (payload["data_flow_name"], payload["queue"]) == ("observed", "obs")
        if name in (events.WORKER_STARTED, events.WORKER_STOPPED):
            assert (payload["worker"], list(payload["queues"]), payload["concurrency"]) == ("watcher", ["obs"], 2)
    started, finished = captured_events[2][1], captured_events[3][1]
    [run] = _runs(job_id)
    assert (started["run_id"], started["attempt"], started["worker"]) == (run.id, 1, "watcher")
    assert (finished["run_id"], finished["status"], finished["will_retry"]) == (run.id, "success", False)
    assert finished["duration_ms"] == run.duration_ms


def test_job_finished_for_a_failure_carries_the_error_and_whether_it_will_retry(
    database: Settings, captured_events: list[tuple[str, dict[str, Any]]]
) -> None:
    _trigger(database, _flow(database, "twice", "Fail", max_attempts=2))

    Worker(database).run(burst=True)

    finished = [payload for name, payload in captured_events if name == events.JOB_FINISHED]
    assert [(item["attempt"], item["status"], item["will_retry"]) for item in finished] == [
        (1, "failed", True),
        (2, "failed", False),
    ]
    assert all(item["error"] == "ValueError: boom" for item in finished)


def test_a_monitoring_callback_that_raises_does_not_affect_the_job(database: Settings) -> None:
    calls: list[str] = []
    seen_after: list[str] = []

    def explode(name: str, payload: dict[str, Any]) -> None:
        calls.append(name)
        raise RuntimeError("monitoring is down")

    events._callbacks.append(("tests:explode", explode))
    events._callbacks.append(("tests:record", lambda name, payload: seen_after.append(name)))
    job_id = _trigger(database, _flow(database, "monitored"))

    Worker(database).run(burst=True)
    events.flush()

    assert _job(job_id).status == "succeeded"
    assert [run.status for run in _runs(job_id)] == ["success"]
    assert events.JOB_FINISHED in calls
    assert seen_after == calls  # a failing callback does not stop the ones after it


def test_force_stop_interrupts_the_run_and_requeues_the_job_at_once(database: Settings, tmp_path: Path) -> None:
    # A long backoff: an interrupted attempt must not wait for it (a failure of the flow would).
    settings = replace(database, retry=RetrySettings(max_attempts=3, backoff_initial=600, backoff_max=600))
    marker = tmp_path / "started"
    job_id = _trigger(settings, _flow(settings, "long", "Sleep", configuration={"marker": str(marker)}),
                      params={"seconds": 60})  # fmt: skip
    worker = Worker(settings)
    seen: list[bool] = []

    def stop_once_running() -> None:
        try:
            seen.append(bool(wait_for(marker.exists, timeout=60, what="the run to start")))
        finally:
            worker.request_stop(force=True)

    stopper = threading.Thread(target=stop_once_running)
    stopper.start()
    worker.run()
    stopper.join(timeout=30)

    assert seen == [True]
    [run] = _runs(job_id)
    assert run.status == "failed"
    assert "interrupted" in (run.error_message or "")
    job = _job(job_id)
    assert (job.status, job.attempts, job.locked_by) == ("queued", 1, None)
    assert job.run_at <= clock.now()


def test_an_idle_worker_wakes_for_its_own_retry_without_waiting_a_long_poll_interval(
    database: Settings, tmp_path: Path
) -> None:
    settings = replace(
        database,
        worker=replace(database.worker, poll_interval=60),
        retry=RetrySettings(max_attempts=2, backoff_initial=1, backoff_max=1),
    )
    counter = tmp_path / "calls"
    job_id = _trigger(settings, _flow(settings, "flaky", "FailTimes", configuration={
        "counter": str(counter), "failures": 1,
    }))  # fmt: skip
    worker = Worker(settings)
    seen: list[bool] = []

    def stop_after_the_retry() -> None:
        try:
            # Well under the 60 s poll interval: only a wake-up at the retry's run_at gets here in time.
            seen.append(bool(wait_for(lambda: counter.exists() and counter.read_text() == "2", timeout=20)))
        finally:
            worker.request_stop()

    stopper = threading.Thread(target=stop_after_the_retry)
    stopper.start()
    worker.run()
    stopper.join(timeout=30)

    assert seen == [True]
    job = _job(job_id)
    assert (job.status, job.attempts) == ("succeeded", 2)
