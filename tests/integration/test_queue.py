"""The job table, driven through `dfjob.queue` directly: every state change on SQLite and Postgres."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import peewee
import pytest

from dfjob import clock, sql
from dfjob.config import RetrySettings, Settings
from dfjob.db import write_transaction
from dfjob.errors import DfjobError
from dfjob.models import DataFlow, DataFlowRun, Job, PrunedRunTotal, to_db_time
from dfjob.registry import FlowSpec, add_flow
from dfjob.store import store
from dfjob.store.rows import Claimed, Outcome
from dfjob.trigger import trigger_run
from tests.support import store_ops

WORKER = "worker-a"


def _flow(settings: Settings, name: str, **spec: Any) -> DataFlow:
    return add_flow(settings, FlowSpec(name=name, class_path="sample_flows:Succeed", **spec))


def _enqueue(
    flow: DataFlow,
    now: datetime,
    *,
    run_at: datetime | None = None,
    priority: int | None = None,
    queue_name: str | None = None,
    max_attempts: int = 3,
) -> int:
    enqueued = store_ops.enqueue(
        flow.id,
        queue=queue_name or flow.queue,
        priority=flow.priority if priority is None else priority,
        params={},
        run_at=run_at or now,
        max_attempts=max_attempts,
        now=now,
    )
    assert not enqueued.deduplicated
    return enqueued.job_id


def _claim_one(
    now: datetime, worker: str = WORKER, lease: float = 60, queues: tuple[str, ...] = ("default",)
) -> Claimed:
    [claimed] = store_ops.claim(worker, queues, 1, now, lease)
    return claimed


def _outcome(job: Claimed, status: str, started: datetime, ended: datetime, **extra: Any) -> Outcome:
    return Outcome(job=job, status=status, started_at=started, ended_at=ended, **extra)


def _job(job_id: int) -> Job:
    return Job.get_by_id(job_id)


def _runs(job_id: int) -> list[DataFlowRun]:
    return list(DataFlowRun.select().where(DataFlowRun.job == job_id).order_by(DataFlowRun.id))


def _retry(initial: float = 0, maximum: float = 0) -> RetrySettings:
    return RetrySettings(max_attempts=3, backoff_initial=initial, backoff_max=maximum)


# -- enqueue -----------------------------------------------------------------------------------------


def test_enqueue_creates_queued_job_with_the_flows_queue_priority_and_max_attempts(database: Settings) -> None:
    settings = replace(database, retry=replace(database.retry, max_attempts=4))
    own = _flow(settings, "own", queue="etl", priority=7, max_attempts=9)
    inherits = _flow(settings, "inherits")

    first = trigger_run(settings, own, params={"k": "v"})
    second = trigger_run(settings, inherits)

    assert (first.queue, first.deduplicated) == ("etl", False)
    job = _job(first.job_id)
    assert (job.data_flow_id, job.queue, job.priority, job.status) == (own.id, "etl", 7, "queued")
    assert (job.attempts, job.max_attempts, job.rescues, job.params) == (0, 9, 0, {"k": "v"})
    assert job.locked_by is None
    assert job.lease_token is None
    assert job.finished_at is None
    assert job.run_at <= clock.now()
    other = _job(second.job_id)
    assert (other.queue, other.priority, other.max_attempts) == ("default", 0, 4)
    assert DataFlow.get_by_id(own.id).last_run_status == "in_progress"


def test_a_second_enqueue_with_the_same_key_returns_the_active_job(database: Settings) -> None:
    flow = _flow(database, "dedupe")
    first = trigger_run(database, flow, params={"day": "1"})
    again = trigger_run(database, flow, params={"day": "1"})
    assert again.job_id == first.job_id
    assert (first.deduplicated, again.deduplicated) == (False, True)
    # Different params are a different request: they queue up.
    other = trigger_run(database, flow, params={"day": "2"})
    assert other.deduplicated is False
    assert other.job_id != first.job_id
    # An explicit key decides, whatever the params.
    keyed = trigger_run(database, flow, params={"day": "3"}, key="nightly")
    same_key = trigger_run(database, flow, params={"day": "4"}, key="nightly")
    assert (same_key.job_id, same_key.deduplicated) == (keyed.job_id, True)

    running = _claim_one(clock.now())
    assert running.job_id == first.job_id
    while_running = trigger_run(database, flow, params={"day": "1"})
    assert (while_running.job_id, while_running.deduplicated) == (running.job_id, True)
    assert Job.select().count() == 3

    store_ops.finish([_outcome(running, "success", clock.now(), clock.now())], database.retry)
    after = trigger_run(database, flow, params={"day": "1"})
    assert after.deduplicated is False
    assert after.job_id not in (first.job_id, other.job_id, keyed.job_id)


def _raw_insert(flow_id: int, status: str, key: str) -> None:
    stamp = to_db_time(clock.now())
    sql.execute(
        "INSERT INTO dfjob.jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues, run_at,"
        " params, created_at, key) VALUES (?, 'default', 0, ?, 0, 3, 0, ?, '{}', ?, ?)",
        (flow_id, status, stamp, stamp, key),
    )


@pytest.mark.parametrize("second_status", ["queued", "running"])
def test_unique_index_refuses_a_raw_second_active_job_with_the_same_key(database: Settings, second_status: str) -> None:
    flow = _flow(database, "unique")
    trigger_run(database, flow, key="k")
    with pytest.raises(peewee.IntegrityError), write_transaction():
        _raw_insert(flow.id, second_status, "k")
    # Another key, or a finished job (outside the partial index): history may hold any number of them.
    with write_transaction():
        _raw_insert(flow.id, second_status, "other")
        _raw_insert(flow.id, "succeeded", "k")
        _raw_insert(flow.id, "failed", "k")
    statuses = sorted(job.status for job in Job.select().where(Job.data_flow == flow.id))
    assert statuses == sorted(["queued", second_status, "succeeded", "failed"])


# -- claim -------------------------------------------------------------------------------------------


def test_claim_order_is_priority_then_run_at_then_id(database: Settings) -> None:
    now = clock.now()
    flows = [_flow(database, f"order{index}") for index in range(5)]
    low = _enqueue(flows[0], now, priority=5, run_at=now - timedelta(seconds=100))
    later = _enqueue(flows[1], now, priority=0, run_at=now - timedelta(seconds=10))
    early_b = _enqueue(flows[2], now, priority=0, run_at=now - timedelta(seconds=20))
    early_a = _enqueue(flows[3], now, priority=0, run_at=now - timedelta(seconds=20))
    urgent = _enqueue(flows[4], now, priority=-3, run_at=now)
    assert early_b < early_a

    order = [_claim_one(now).job_id for _ in range(5)]

    assert order == [urgent, early_b, early_a, later, low]


def test_claim_serves_only_the_given_queues_and_due_jobs(database: Settings) -> None:
    now = clock.now()
    in_a = _enqueue(_flow(database, "qa", queue="a"), now)
    in_b = _enqueue(_flow(database, "qb", queue="b"), now)
    in_c = _enqueue(_flow(database, "qc", queue="c"), now)
    future = _enqueue(_flow(database, "qfuture", queue="a"), now, run_at=now + timedelta(minutes=5))

    claimed = store_ops.claim(WORKER, ["a", "b"], 10, now, 60)

    assert sorted(job.job_id for job in claimed) == sorted([in_a, in_b])
    assert _job(in_c).status == "queued"
    assert _job(future).status == "queued"
    assert store_ops.claim(WORKER, ["a"], 10, now + timedelta(minutes=4), 60) == []
    [due_later] = store_ops.claim(WORKER, ["a"], 10, now + timedelta(minutes=5), 60)
    assert due_later.job_id == future


def test_claim_takes_at_most_limit_jobs(database: Settings) -> None:
    now = clock.now()
    for index in range(5):
        _enqueue(_flow(database, f"limit{index}"), now)
    assert len(store_ops.claim(WORKER, ["default"], 2, now, 60)) == 2
    assert Job.select().where(Job.status == "running").count() == 2
    assert Job.select().where(Job.status == "queued").count() == 3


def test_claim_counts_an_attempt_takes_a_lease_and_creates_a_pending_run(database: Settings) -> None:
    now = clock.now()
    flow = _flow(database, "claimed", configuration={"c": 1})
    job_id = _enqueue(flow, now)

    claimed = _claim_one(now, lease=45)

    assert (claimed.job_id, claimed.attempt, claimed.worker, claimed.data_flow_name) == (job_id, 1, WORKER, "claimed")
    assert claimed.configuration == {"c": 1}
    job = _job(job_id)
    assert (job.status, job.attempts, job.locked_by, job.lease_token) == ("running", 1, WORKER, claimed.lease_token)
    assert job.lease_expires_at == now + timedelta(seconds=45)
    [run] = _runs(job_id)
    assert (run.id, run.status, run.attempt, run.worker, run.queue) == (claimed.run_id, "pending", 1, WORKER, "default")
    assert run.started_at is None

    store_ops.finish([_outcome(claimed, "failed", now, now, error_message="x")], _retry())
    second = _claim_one(now + timedelta(seconds=1), worker="worker-b")
    assert second.attempt == 2
    assert second.lease_token != claimed.lease_token
    assert _job(job_id).attempts == 2
    assert [(run.attempt, run.status, run.worker) for run in _runs(job_id)] == [
        (1, "failed", WORKER),
        (2, "pending", "worker-b"),
    ]


def test_mark_started_moves_runs_in_progress_with_started_at(database: Settings) -> None:
    now = clock.now()
    _enqueue(_flow(database, "start"), now)
    claimed = _claim_one(now)
    started = now + timedelta(seconds=2)
    store_ops.mark_started([claimed.run_id], started)
    run = DataFlowRun.get_by_id(claimed.run_id)
    assert (run.status, run.started_at) == ("in_progress", started)


# -- finish ------------------------------------------------------------------------------------------


def test_finish_success_records_the_run_and_succeeds_the_job(database: Settings) -> None:
    now = clock.now()
    flow = _flow(database, "ok")
    job_id = _enqueue(flow, now)
    claimed = _claim_one(now)
    store_ops.mark_started([claimed.run_id], now)
    ended = now + timedelta(milliseconds=1500)

    [done] = store_ops.finish([_outcome(claimed, "success", now, ended, result={"rows": 3})], database.retry)

    assert (done.stale, done.job_status, done.will_retry, done.duration_ms) == (False, "succeeded", False, 1500)
    job = _job(job_id)
    assert (job.status, job.finished_at, job.locked_by, job.lease_token, job.lease_expires_at) == (
        "succeeded",
        ended,
        None,
        None,
        None,
    )
    run = DataFlowRun.get_by_id(claimed.run_id)
    assert (run.status, run.ended_at, run.duration_ms, run.result) == ("success", ended, 1500, {"rows": 3})
    assert DataFlow.get_by_id(flow.id).last_run_status == "success"


def test_finish_failed_with_attempts_left_requeues_after_doubling_capped_backoff(database: Settings) -> None:
    retry = RetrySettings(max_attempts=3, backoff_initial=10, backoff_max=30)
    flow = _flow(database, "backoff")
    now = clock.now()
    job_id = _enqueue(flow, now, max_attempts=5)
    delays = []
    for attempt in range(1, 5):
        claimed = _claim_one(now)
        assert claimed.attempt == attempt
        ended = now + timedelta(seconds=1)
        [done] = store_ops.finish([_outcome(claimed, "failed", now, ended, error_message=f"boom {attempt}")], retry)
        assert (done.job_status, done.will_retry) == ("queued", True)
        job = _job(job_id)
        assert (job.status, job.last_error, job.locked_by, job.finished_at) == ("queued", f"boom {attempt}", None, None)
        delays.append((job.run_at - ended).total_seconds())
        now = job.run_at
    assert 9 <= delays[0] <= 11
    assert 18 <= delays[1] <= 22
    assert delays[2:] == [30, 30]  # 40 and 80 seconds, capped
    assert DataFlow.get_by_id(flow.id).last_run_status == "failed"


def test_finish_failed_with_zero_backoff_retries_at_once(database: Settings) -> None:
    now = clock.now()
    job_id = _enqueue(_flow(database, "instant"), now)
    claimed = _claim_one(now)
    ended = now + timedelta(seconds=3)
    store_ops.finish([_outcome(claimed, "failed", now, ended, error_message="e")], _retry(0, 3600))
    job = _job(job_id)
    assert (job.status, job.run_at) == ("queued", ended)
    assert _claim_one(ended).job_id == job_id


def test_finish_failed_with_attempts_used_up_fails_the_job(database: Settings) -> None:
    now = clock.now()
    job_id = _enqueue(_flow(database, "exhausted"), now, max_attempts=2)
    for attempt in (1, 2):
        claimed = _claim_one(now)
        [done] = store_ops.finish(
            [_outcome(claimed, "failed", now, now, error_message=f"e{attempt}", error_backtrace="Traceback …")],
            _retry(),
        )
    assert (done.job_status, done.will_retry) == ("failed", False)
    job = _job(job_id)
    assert (job.status, job.attempts, job.finished_at, job.last_error) == ("failed", 2, now, "e2")
    assert [(run.status, run.error_message) for run in _runs(job_id)] == [("failed", "e1"), ("failed", "e2")]


def test_finish_with_retry_never_fails_at_once_despite_attempts_left(database: Settings) -> None:
    now = clock.now()
    job_id = _enqueue(_flow(database, "discarded"), now, max_attempts=5)
    claimed = _claim_one(now)
    [done] = store_ops.finish(
        [_outcome(claimed, "failed", now, now, error_message="Discard: no", retry="never")], _retry()
    )
    assert (done.job_status, done.will_retry) == ("failed", False)
    job = _job(job_id)
    assert (job.status, job.attempts, job.last_error) == ("failed", 1, "Discard: no")
    assert store_ops.claim(WORKER, ["default"], 1, now + timedelta(days=1), 60) == []


# -- fencing -----------------------------------------------------------------------------------------


def test_a_stale_worker_cannot_complete_or_fail_a_job_whose_lease_was_taken(database: Settings) -> None:
    """A stale worker that wakes up after its lease was taken cannot complete or fail the job."""
    t0 = clock.now()
    flow = _flow(database, "fenced")
    job_id = _enqueue(flow, t0)
    old = _claim_one(t0, worker="sleepy", lease=30)
    store_ops.mark_started([old.run_id], t0)
    [rescued] = store().rescue_expired(t0 + timedelta(seconds=31), _retry())
    assert rescued.job_id == job_id
    new = _claim_one(t0 + timedelta(seconds=32), worker="fresh", lease=30)
    store_ops.mark_started([new.run_id], t0 + timedelta(seconds=32))

    late = t0 + timedelta(seconds=40)
    for status in ("success", "failed"):
        [result] = store_ops.finish([_outcome(old, status, t0, late, error_message="late", result=None)], _retry())
        assert result.stale is True
    wrong_token = new._replace(lease_token="0" * 32)
    [result] = store_ops.finish([_outcome(wrong_token, "success", t0, late)], _retry())
    assert result.stale is True

    job = _job(job_id)
    assert (job.status, job.locked_by, job.lease_token, job.attempts) == ("running", "fresh", new.lease_token, 2)
    old_run, new_run = _runs(job_id)
    assert old_run.status == "failed"
    assert "sleepy" in (old_run.error_message or "")
    assert (new_run.status, new_run.ended_at) == ("in_progress", None)
    assert DataFlow.get_by_id(flow.id).last_run_status == "failed"

    [done] = store_ops.finish([_outcome(new, "success", t0, late)], _retry())
    assert (done.stale, _job(job_id).status) == (False, "succeeded")


# -- leases ------------------------------------------------------------------------------------------


def test_renew_extends_only_leases_whose_token_still_holds(database: Settings) -> None:
    now = clock.now()
    mine = _enqueue(_flow(database, "mine"), now)
    theirs = _enqueue(_flow(database, "theirs"), now)
    done = _enqueue(_flow(database, "done"), now)
    first = _claim_one(now, worker="me", lease=30)
    other = _claim_one(now, worker="them", lease=30)
    finished = _claim_one(now, worker="me", lease=30)
    assert (first.job_id, other.job_id, finished.job_id) == (mine, theirs, done)
    store_ops.finish([_outcome(finished, "success", now, now)], _retry())

    later = now + timedelta(seconds=20)
    leases = [(mine, first.lease_token), (theirs, "0" * 32), (done, finished.lease_token)]
    held = store().renew(leases, later, 30)

    assert held == {mine: False}  # renewed, and no one asked to cancel it
    assert _job(mine).lease_expires_at == later + timedelta(seconds=30)
    assert _job(theirs).lease_expires_at == now + timedelta(seconds=30)
    assert _job(done).lease_expires_at is None
    assert store().renew([], later, 30) == {}


def test_a_lease_taken_back_and_claimed_again_by_the_same_worker_is_not_renewed_by_the_old_one(
    database: Settings,
) -> None:
    t0 = clock.now()
    job_id = _enqueue(_flow(database, "reclaimed"), t0, max_attempts=3)
    old = _claim_one(t0, worker="me", lease=30)
    store().rescue_expired(t0 + timedelta(seconds=31), _retry())
    new = _claim_one(t0 + timedelta(seconds=32), worker="me", lease=30)
    assert (old.job_id, new.job_id) == (job_id, job_id)

    assert store().renew([(job_id, old.lease_token)], t0 + timedelta(seconds=40), 30) == {}
    assert _job(job_id).lease_expires_at == t0 + timedelta(seconds=62)
    assert store().renew([(job_id, new.lease_token)], t0 + timedelta(seconds=40), 30) == {job_id: False}


def test_claims_whose_answer_never_arrived_go_back_with_their_attempt_and_no_run(database: Settings) -> None:
    now = clock.now()
    kept = _enqueue(_flow(database, "kept"), now)
    lost = _enqueue(_flow(database, "lost"), now)
    other = _enqueue(_flow(database, "other"), now)
    held = _claim_one(now, worker="me", lease=60)
    _claim_one(now, worker="me", lease=60)
    _claim_one(now, worker="them", lease=60)

    assert store().release_lost_claims("me", [held.lease_token]) == {lost}

    assert (_job(lost).status, _job(lost).attempts, _job(lost).locked_by) == ("queued", 0, None)
    assert _runs(lost) == []
    assert (_job(kept).status, _job(other).status) == ("running", "running")
    assert len(_runs(kept)) == len(_runs(other)) == 1


def test_rescue_expired_fails_the_lost_run_and_requeues_the_job(database: Settings) -> None:
    t0 = clock.now()
    flow = _flow(database, "lost")
    job_id = _enqueue(flow, t0, max_attempts=3)
    claimed = _claim_one(t0, worker="host:123:dead", lease=30)
    store_ops.mark_started([claimed.run_id], t0)

    assert store().rescue_expired(t0 + timedelta(seconds=29), _retry()) == []
    assert _job(job_id).status == "running"

    later = t0 + timedelta(seconds=31)
    [rescued] = store().rescue_expired(later, _retry())

    assert (rescued.job_id, rescued.run_id, rescued.lost_worker) == (job_id, claimed.run_id, "host:123:dead")
    assert (rescued.job_status, rescued.will_retry, rescued.data_flow_name) == ("queued", True, "lost")
    job = _job(job_id)
    assert (job.status, job.attempts, job.rescues, job.locked_by, job.lease_token) == ("queued", 1, 1, None, None)
    assert job.run_at == later
    assert "host:123:dead" in (job.last_error or "")
    run = DataFlowRun.get_by_id(claimed.run_id)
    assert (run.status, run.ended_at, run.duration_ms) == ("failed", later, 31000)
    assert "host:123:dead" in (run.error_message or "")
    assert DataFlow.get_by_id(flow.id).last_run_status == "failed"
    assert store().rescue_expired(later + timedelta(hours=1), _retry()) == []

    again = _claim_one(later)
    assert again.attempt == 2


def test_rescue_expired_fails_the_job_when_its_attempts_are_used_up(database: Settings) -> None:
    t0 = clock.now()
    job_id = _enqueue(_flow(database, "lastchance"), t0, max_attempts=1)
    claimed = _claim_one(t0, worker="gone", lease=10)
    later = t0 + timedelta(seconds=11)
    [rescued] = store().rescue_expired(later, _retry())
    assert (rescued.job_status, rescued.will_retry) == ("failed", False)
    job = _job(job_id)
    assert (job.status, job.attempts, job.rescues, job.finished_at) == ("failed", 1, 1, later)
    # The run was never started: it still ends failed, naming the lost worker.
    run = DataFlowRun.get_by_id(claimed.run_id)
    assert run.status == "failed"
    assert "gone" in (run.error_message or "")


# -- operator changes --------------------------------------------------------------------------------


def test_cancel_ends_a_queued_job_and_asks_a_running_one_to_stop(database: Settings) -> None:
    now = clock.now()
    queued = _enqueue(_flow(database, "tocancel"), now)
    running_flow = _flow(database, "busy")
    running = _enqueue(running_flow, now, run_at=now - timedelta(seconds=1))
    claimed = _claim_one(now)
    assert claimed.job_id == running

    assert store().cancel(queued, now) == "cancelled"
    assert store().cancel(running, now) == "running"

    job = _job(queued)
    assert (job.status, job.finished_at) == ("cancelled", now)
    assert (_job(running).status, _job(running).cancel_requested) == ("running", True)
    # Its worker learns it with its next renewal, and from `cancel_requested`.
    assert store().renew([(running, claimed.lease_token)], now, 30) == {running: True}
    assert store().cancel_requested([running, queued]) == {running}
    with pytest.raises(DfjobError, match="only a queued or running job"):
        store().cancel(queued, now)
    with pytest.raises(DfjobError, match="no job"):
        store().cancel(987654, now)


def test_retry_job_requeues_a_failed_or_cancelled_job_with_fresh_attempts(database: Settings) -> None:
    now = clock.now()
    failed = _enqueue(_flow(database, "failing"), now, max_attempts=1)
    claimed = _claim_one(now)
    store_ops.finish([_outcome(claimed, "failed", now, now, error_message="bad")], _retry())
    cancelled = _enqueue(_flow(database, "cancelling"), now)
    store().cancel(cancelled, now)
    later = now + timedelta(minutes=1)

    store().retry(failed, later)
    store().retry(cancelled, later)

    for job_id in (failed, cancelled):
        job = _job(job_id)
        assert (job.status, job.attempts, job.run_at, job.finished_at, job.last_error) == (
            "queued",
            0,
            later,
            None,
            None,
        )
    assert _claim_one(later).job_id == failed


def test_retry_job_is_refused_while_the_flow_has_another_active_job(database: Settings) -> None:
    now = clock.now()
    flow = _flow(database, "crowded")
    old = _enqueue(flow, now)
    store().cancel(old, now)
    active = trigger_run(database, flow)
    assert not active.deduplicated

    with pytest.raises(DfjobError, match="active job"):
        store().retry(old, now)
    assert _job(old).status == "cancelled"
    with pytest.raises(DfjobError, match="only a failed or cancelled"):
        store().retry(active.job_id, now)


def test_prune_deletes_only_finished_jobs_older_than_the_cutoff_with_their_runs(database: Settings) -> None:
    old = clock.now() - timedelta(days=40)
    recent = clock.now() - timedelta(days=1)
    cutoff = clock.now() - timedelta(days=30)

    old_success = _enqueue(_flow(database, "oldsuccess"), old)
    claimed = _claim_one(old)
    store_ops.finish([_outcome(claimed, "success", old, old)], _retry())
    old_failed = _enqueue(_flow(database, "oldfailed"), old, max_attempts=2)
    for _ in range(2):
        claimed = _claim_one(old)
        store_ops.finish([_outcome(claimed, "failed", old, old, error_message="x")], _retry())
    old_cancelled = _enqueue(_flow(database, "oldcancelled"), old)
    store().cancel(old_cancelled, old)
    new_success = _enqueue(_flow(database, "newsuccess"), recent)
    claimed = _claim_one(recent)
    store_ops.finish([_outcome(claimed, "success", recent, recent)], _retry())
    old_queued = _enqueue(_flow(database, "oldqueued"), old, run_at=clock.now() + timedelta(days=1))
    old_running = _enqueue(_flow(database, "oldrunning"), old)
    assert _claim_one(old).job_id == old_running
    assert {_job(job_id).status for job_id in (old_success, old_failed, old_cancelled)} == {
        "succeeded",
        "failed",
        "cancelled",
    }

    assert store().prune(cutoff, batch=2) == (3, 3)

    assert {job.id for job in Job.select()} == {new_success, old_queued, old_running}
    assert {run.job_id for run in DataFlowRun.select()} == {new_success, old_running}
    assert store().prune(cutoff) == (0, 0)


def test_prune_with_statuses_deletes_only_jobs_that_ended_so(database: Settings) -> None:
    old = clock.now() - timedelta(days=40)
    succeeded = _enqueue(_flow(database, "succeeded"), old)
    store_ops.finish([_outcome(_claim_one(old), "success", old, old)], _retry())
    failed = _enqueue(_flow(database, "failed"), old, max_attempts=1)
    store_ops.finish([_outcome(_claim_one(old), "failed", old, old, error_message="x")], _retry())
    cancelled = _enqueue(_flow(database, "cancelled"), old)
    store().cancel(cancelled, old)

    assert store().prune(clock.now(), ("failed", "cancelled")) == (2, 1)

    assert {job.id for job in Job.select()} == {succeeded}
    assert failed not in {run.job_id for run in DataFlowRun.select()}
    with pytest.raises(DfjobError):
        store().prune(clock.now(), ("queued",))


def test_prune_keeps_the_run_totals_of_what_it_deletes(database: Settings) -> None:
    old = clock.now() - timedelta(days=40)
    flow = _flow(database, "totals")
    for status in ("success", "failed", "success"):
        _enqueue(flow, old, max_attempts=1)
        store_ops.finish([_outcome(_claim_one(old), status, old, old, error_message="x")], _retry())

    assert store().prune(clock.now() - timedelta(days=30)) == (3, 3)
    _enqueue(flow, old, max_attempts=1)
    store_ops.finish([_outcome(_claim_one(old), "success", old, old)], _retry())
    assert store().prune(clock.now() - timedelta(days=30)) == (1, 1)

    totals = {(row.status, row.runs) for row in PrunedRunTotal.select().where(PrunedRunTotal.data_flow == flow)}
    assert totals == {("success", 3), ("failed", 1)}
