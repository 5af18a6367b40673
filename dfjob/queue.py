"""All job-table SQL, one function per state change, each one short transaction.

The contract of every change:
- `enqueue`: a new `queued` job unless the data flow already has a queued or running one; the
  partial unique index decides (INSERT … ON CONFLICT DO NOTHING), never a check-then-insert.
- `claim`: `queued` jobs that are due, in (priority, run_at, id) order, become `running` under a
  fresh lease token; each claim counts an attempt and creates that attempt's `pending` run.
- `mark_started`: those runs go `in_progress`; `started_at` is stamped just before `run()`.
- `settle`: a worker's turn, the three above in one round trip (Postgres) or one transaction.
- `renew_leases`: pushes `lease_expires_at` forward for jobs this worker still holds.
- `finish`: writes a run's outcome and moves its job to `succeeded`, back to `queued` (retry) or
  `failed`. Every write is fenced by the lease token: a worker whose lease was taken back changes
  nothing.
- `rescue_expired`: takes back `running` jobs whose lease ran out; their open run ends `failed`
  ("worker lost") and the job follows the normal attempt rules, counting a rescue.
- `enqueue_many`: the heartbeat's jobs, in as few statements as the database allows.
- `cancel_job`, `retry_job`, `prune`: the operator's changes.
On Postgres the claim uses `FOR UPDATE SKIP LOCKED`; on SQLite every write transaction is
`BEGIN IMMEDIATE` (one writer), so the same UPDATE … RETURNING needs no row locks.
"""

from __future__ import annotations

import json
import os
import random
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import peewee

from dfjob import wakeup
from dfjob.config import RetrySettings
from dfjob.db import is_postgres, write_transaction
from dfjob.errors import DfjobError
from dfjob.models import from_db_time, to_db_time
from dfjob.sql import dump_json, execute, in_values, marks, pipeline

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
ERROR_MESSAGE_LIMIT = 4000


@dataclass(frozen=True)
class Enqueued:
    job_id: int
    data_flow_id: int
    queue: str
    deduplicated: bool


@dataclass(frozen=True)
class Claimed:
    """One claimed job with everything needed to run its attempt."""

    job_id: int
    run_id: int
    data_flow_id: int
    data_flow_name: str
    class_path: str
    configuration: dict[str, Any]
    params: dict[str, Any]
    queue: str
    attempt: int
    max_attempts: int
    timeout_seconds: int | None
    lease_token: str
    worker: str

    def event_fields(self) -> dict[str, Any]:
        """What every lifecycle event about this attempt carries."""
        return {
            "job_id": self.job_id,
            "run_id": self.run_id,
            "data_flow_id": self.data_flow_id,
            "data_flow_name": self.data_flow_name,
            "queue": self.queue,
            "attempt": self.attempt,
        }


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended. `retry` is `normal`, `never` (Discard) or `now` (interrupted)."""

    job: Claimed
    status: str
    started_at: datetime
    ended_at: datetime
    result: dict[str, Any] | None = None
    error_message: str | None = None
    error_backtrace: str | None = None
    retry: str = "normal"


@dataclass(frozen=True)
class Finished:
    outcome: Outcome
    job_status: str
    will_retry: bool
    duration_ms: int
    # The lease had been taken back: nothing was written.
    stale: bool = False
    # When a retried job is due again.
    retry_at: datetime | None = None


@dataclass(frozen=True)
class Rescued:
    job_id: int
    run_id: int | None
    data_flow_id: int
    data_flow_name: str
    lost_worker: str
    job_status: str
    will_retry: bool


def worker_name() -> str:
    """A name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _error_line(message: str) -> str:
    return message if len(message) <= ERROR_MESSAGE_LIMIT else message[: ERROR_MESSAGE_LIMIT - 1] + "…"


def retry_delay(attempts: int, retry: RetrySettings) -> float:
    """Seconds before the next attempt: initial × 2^(attempts−1) plus up to 10% jitter, capped.

    The jitter only adds, so a retry never comes before the configured delay; it spreads out
    jobs that failed together (a database or an API that went away for all of them at once).
    """
    if retry.backoff_initial <= 0:
        return 0.0
    base = retry.backoff_initial * 2.0 ** min(attempts - 1, 40)
    return float(min(base * random.uniform(1.0, 1.1), retry.backoff_max))


def notify(queue: str) -> None:
    """Postgres: wake idle workers of a queue once the enclosing transaction commits."""
    if is_postgres():
        execute("SELECT pg_notify(?, ?)", (wakeup.channel(), queue))


def wake_after_commit() -> None:
    """SQLite: poke idle workers once the enqueue has committed (Postgres did it with NOTIFY)."""
    if not is_postgres():
        wakeup.wake_sqlite_workers()


def enqueue(
    data_flow_id: int,
    *,
    queue: str,
    priority: int,
    params: dict[str, Any],
    run_at: datetime,
    max_attempts: int,
    now: datetime,
) -> Enqueued:
    """A new queued job for the data flow, or its active one (`deduplicated`)."""
    for _ in range(10):
        enqueued: Enqueued | None = None
        with write_transaction():
            rows = execute(
                "INSERT INTO dfjob.jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues,"
                " run_at, params, created_at) VALUES (?, ?, ?, 'queued', 0, ?, 0, ?, ?, ?)"
                " ON CONFLICT DO NOTHING RETURNING id",
                (data_flow_id, queue, priority, max_attempts, to_db_time(run_at), dump_json(params), to_db_time(now)),
            ).fetchall()
            if rows:
                execute(
                    "UPDATE dfjob.data_flows SET last_run_at = ?, last_run_status = 'in_progress' WHERE id = ?",
                    (to_db_time(now), data_flow_id),
                )
                notify(queue)
                enqueued = Enqueued(rows[0][0], data_flow_id, queue, deduplicated=False)
            else:
                active = execute(
                    "SELECT id, queue FROM dfjob.jobs WHERE data_flow_id = ? AND status IN ('queued', 'running')",
                    (data_flow_id,),
                ).fetchone()
                if active:
                    return Enqueued(active[0], data_flow_id, active[1], deduplicated=True)
        if enqueued is not None:
            wake_after_commit()
            return enqueued
        # The active job finished between our INSERT and SELECT: try again.
    raise DfjobError(f"could not enqueue data flow {data_flow_id}: its active job keeps changing")


def enqueue_many(flows: Sequence[tuple[int, str, int, int]], now: datetime) -> dict[int, int]:
    """Enqueue one job for each (data_flow_id, queue, priority, max_attempts), in as few statements
    as the database allows. Flows that already have an active job are left alone. Runs inside the
    caller's write transaction. Returns {data_flow_id: job_id} for the jobs created."""
    if not flows:
        return {}
    stamp = to_db_time(now)
    insert = (
        "INSERT INTO dfjob.jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues,"
        " run_at, params, created_at)"
    )
    conflict = "ON CONFLICT DO NOTHING RETURNING data_flow_id, id"
    created: dict[int, int] = {}
    if is_postgres():
        ids, queues, priorities, attempts = (list(column) for column in zip(*flows, strict=True))
        rows = execute(
            f"{insert} SELECT v.id, v.queue, v.priority, 'queued', 0, v.attempts, 0, CAST(? AS timestamp), '{{}}',"
            " CAST(? AS timestamp) FROM unnest(CAST(? AS bigint[]), CAST(? AS text[]), CAST(? AS integer[]),"
            f" CAST(? AS integer[])) AS v(id, queue, priority, attempts) {conflict}",
            [stamp, stamp, ids, queues, priorities, attempts],
        ).fetchall()
        created.update(rows)
    else:
        for start in range(0, len(flows), 500):
            chunk = flows[start : start + 500]
            values = ", ".join("(?, ?, ?, 'queued', 0, ?, 0, ?, '{}', ?)" for _ in chunk)
            params: list[Any] = []
            for flow_id, queue, priority, max_attempts in chunk:
                params += [flow_id, queue, priority, max_attempts, stamp, stamp]
            created.update(execute(f"{insert} VALUES {values} {conflict}", params).fetchall())
    for queue in {queue for flow_id, queue, _, _ in flows if flow_id in created}:
        notify(queue)
    return created


_CLAIM_PICK = (
    "SELECT id FROM dfjob.jobs WHERE status = 'queued' AND queue IN ({queues}) AND run_at <= ?"
    " ORDER BY priority, run_at, id LIMIT ?"
)
_CLAIM_SET = "SET status = 'running', attempts = attempts + 1, locked_by = ?, lease_token = ?, lease_expires_at = ?"


def claim_sql(postgres: bool, queue_count: int) -> str:
    """The claim statement, with `?` placeholders.

    On Postgres it is the whole claim in one statement (one round trip): lock and update the
    jobs, create their pending runs, and return them joined with their flows. Parameters:
    `*queues, now, limit, worker, token, expires, worker, now`.
    On SQLite it is the UPDATE alone (`claim` adds the rest in the same transaction). Parameters:
    `worker, token, expires, *queues, now, limit`.
    """
    pick = _CLAIM_PICK.format(queues=marks(queue_count))
    if not postgres:
        return (
            f"UPDATE dfjob.jobs {_CLAIM_SET} WHERE id IN ({pick})"
            " RETURNING id, data_flow_id, queue, attempts, max_attempts, params"
        )
    # MATERIALIZED: the locking subquery runs exactly once.
    return (
        f"WITH picked AS MATERIALIZED ({pick} FOR UPDATE SKIP LOCKED),"
        f" claimed AS (UPDATE dfjob.jobs {_CLAIM_SET} FROM picked WHERE jobs.id = picked.id"
        "  RETURNING jobs.id, jobs.data_flow_id, jobs.queue, jobs.attempts, jobs.max_attempts, jobs.params),"
        " runs AS (INSERT INTO dfjob.data_flow_runs (data_flow_id, job_id, attempt, status, queue, worker, created_at)"
        "  SELECT data_flow_id, id, attempts, 'pending', queue, ?, CAST(? AS timestamp) FROM claimed"
        "  RETURNING id, job_id)"
        " SELECT c.id, c.data_flow_id, c.queue, c.attempts, c.max_attempts, c.params,"
        "  f.name, f.class_path, f.configuration, f.timeout_seconds, r.id"
        " FROM claimed c JOIN dfjob.data_flows f ON f.id = c.data_flow_id JOIN runs r ON r.job_id = c.id"
        " ORDER BY c.id"
    )


@dataclass(frozen=True)
class ClaimRequest:
    """What a worker asks for: up to `limit` due jobs from `queues`, leased for `lease_seconds`."""

    worker: str
    queues: Sequence[str]
    limit: int
    now: datetime
    lease_seconds: float


def claim(worker: str, queues: Sequence[str], limit: int, now: datetime, lease_seconds: float) -> list[Claimed]:
    """Claim up to `limit` due jobs from `queues`, creating each attempt's pending run."""
    return settle([], [], ClaimRequest(worker, queues, limit, now, lease_seconds), RetrySettings())[1]


def mark_started(run_ids: Sequence[int], now: datetime) -> None:
    """Runs go `in_progress`; `started_at` is `now`, stamped just before `run()`."""
    settle([], [(run_ids, now)], None, RetrySettings())


def settle(
    outcomes: Sequence[Outcome],
    starts: Sequence[tuple[Sequence[int], datetime]],
    request: ClaimRequest | None,
    retry: RetrySettings,
) -> tuple[list[Finished], list[Claimed]]:
    """One turn of a worker in one round trip (a Postgres pipeline) or one transaction (SQLite):
    mark the runs that started, record the attempts that ended, then claim more jobs.

    The order matters: a run's start is written before its end, so a run that started and ended
    between two turns still gets its `started_at`.
    """
    planned = [_plan(outcome, retry) for outcome in outcomes]
    rows = [row for _, row in planned]
    token = uuid.uuid4().hex
    if is_postgres():
        statements = [_mark_started_statement(run_ids, stamp) for run_ids, stamp in starts if run_ids]
        finish_at = claim_at = -1
        if rows:
            finish_at = len(statements)
            statements.append((_finish_statements(True, len(rows))[0], [list(col) for col in zip(*rows, strict=True)]))
        if request is not None:
            claim_at = len(statements)
            statements.append(_claim_statement(request, token))
        results = pipeline(statements)
        changed = {row[0] for row in results[finish_at]} if finish_at >= 0 else set()
        claimed = results[claim_at] if claim_at >= 0 else []
    else:
        with write_transaction():
            for run_ids, stamp in starts:
                if run_ids:
                    execute(*_mark_started_statement(run_ids, stamp))
            changed = _finish_sqlite(rows) if rows else set()
            claimed = _claim_sqlite(request, token) if request is not None else []
    finished = [
        item if item.outcome.job.job_id in changed else replace(item, job_status="lost", stale=True)
        for item, _ in planned
    ]
    return finished, [_claimed(row, token, request.worker) for row in claimed] if request else []


def _mark_started_statement(run_ids: Sequence[int], stamp: datetime) -> tuple[str, list[Any]]:
    where, params = in_values("id", run_ids)
    return (
        f"UPDATE dfjob.data_flow_runs SET status = 'in_progress', started_at = ? WHERE {where} AND status = 'pending'",
        [to_db_time(stamp), *params],
    )


def _claim_statement(request: ClaimRequest, token: str) -> tuple[str, list[Any]]:
    stamp = to_db_time(request.now)
    expires = to_db_time(request.now + timedelta(seconds=request.lease_seconds))
    params = [*request.queues, stamp, request.limit, request.worker, token, expires, request.worker, stamp]
    return claim_sql(True, len(request.queues)), params


def _claimed(row: tuple[Any, ...], token: str, worker: str) -> Claimed:
    job_id, flow_id, queue, attempts, max_attempts, params, name, class_path, configuration, timeout, run_id = row
    return Claimed(
        job_id=job_id,
        run_id=run_id,
        data_flow_id=flow_id,
        data_flow_name=name,
        class_path=class_path,
        configuration=json.loads(configuration),
        params=json.loads(params),
        queue=queue,
        attempt=attempts,
        max_attempts=max_attempts,
        timeout_seconds=timeout,
        lease_token=token,
        worker=worker,
    )


def _claim_sqlite(request: ClaimRequest, token: str) -> list[tuple[Any, ...]]:
    """SQLite's claim, inside the caller's BEGIN IMMEDIATE transaction: the same rows as the
    Postgres statement returns."""
    stamp = to_db_time(request.now)
    expires = to_db_time(request.now + timedelta(seconds=request.lease_seconds))
    jobs = execute(
        claim_sql(False, len(request.queues)),
        [request.worker, token, expires, *request.queues, stamp, request.limit],
    ).fetchall()
    if not jobs:
        return []
    flow_ids = sorted({row[1] for row in jobs})
    flows = {
        row[0]: row[1:]
        for row in execute(
            "SELECT id, name, class_path, configuration, timeout_seconds FROM dfjob.data_flows"
            f" WHERE id IN ({marks(len(flow_ids))})",
            flow_ids,
        ).fetchall()
    }
    values = ", ".join("(?, ?, ?, 'pending', ?, ?, ?)" for _ in jobs)
    run_params: list[Any] = []
    for job_id, flow_id, queue, attempts, _, _ in jobs:
        run_params += [flow_id, job_id, attempts, queue, request.worker, stamp]
    runs = execute(
        "INSERT INTO dfjob.data_flow_runs (data_flow_id, job_id, attempt, status, queue, worker, created_at)"
        f" VALUES {values} RETURNING job_id, id",
        run_params,
    ).fetchall()
    run_ids = {row[0]: row[1] for row in runs}
    return sorted((*job, *flows[job[1]], run_ids[job[0]]) for job in jobs)


def renew_leases(worker: str, job_ids: Sequence[int], now: datetime, lease_seconds: float) -> set[int]:
    """Extend the leases this worker still holds; returns the job ids it still holds."""
    if not job_ids:
        return set()
    expires = to_db_time(now + timedelta(seconds=lease_seconds))
    where, params = in_values("id", job_ids)
    rows = execute(
        f"UPDATE dfjob.jobs SET lease_expires_at = ? WHERE {where} AND locked_by = ? AND status = 'running'"
        " RETURNING id",
        [expires, *params, worker],
    ).fetchall()
    return {row[0] for row in rows}


# One row per outcome, shared by the statements that record a batch of outcomes.
_FINISH_COLUMNS = (
    "id, token, run_id, flow_id, job_status, run_at, finished_at, last_error,"
    " run_status, ended_at, duration_ms, result, error_message, error_backtrace"
)
# Postgres receives the rows as one array per column: a statement whose text never changes.
_FINISH_ARRAYS = (
    "bigint[]", "text[]", "bigint[]", "bigint[]", "text[]", "timestamp[]", "timestamp[]", "text[]",
    "text[]", "timestamp[]", "integer[]", "text[]", "text[]", "text[]",
)  # fmt: skip


def _finish_statements(postgres: bool, count: int) -> tuple[str, ...]:
    """The set-based statements that record `count` outcomes: jobs (fenced by lease token), runs, flows."""
    jobs = (
        "UPDATE dfjob.jobs SET status = v.job_status, run_at = COALESCE(v.run_at, jobs.run_at),"
        " finished_at = v.finished_at, last_error = v.last_error,"
        " locked_by = NULL, lease_token = NULL, lease_expires_at = NULL"
        " FROM v WHERE jobs.id = v.id AND jobs.lease_token = v.token AND jobs.status = 'running'"
        " RETURNING jobs.id"
    )
    runs = (
        "UPDATE dfjob.data_flow_runs SET status = v.run_status, ended_at = v.ended_at,"
        " duration_ms = v.duration_ms, result = v.result, error_message = v.error_message,"
        " error_backtrace = v.error_backtrace FROM v{join} WHERE data_flow_runs.id = v.run_id"
    )
    flows = "UPDATE dfjob.data_flows SET last_run_status = v.run_status FROM v{join} WHERE data_flows.id = v.flow_id"
    if postgres:
        # One statement, one round trip: runs and flows change only where the fenced jobs update did.
        arrays = ", ".join(f"CAST(? AS {kind})" for kind in _FINISH_ARRAYS)
        join = " JOIN j ON j.id = v.id"
        return (
            f"WITH v AS (SELECT * FROM unnest({arrays}) AS v({_FINISH_COLUMNS})),"
            f" j AS ({jobs}), r AS ({runs.format(join=join)}), f AS ({flows.format(join=join)}) SELECT id FROM j",
        )
    # SQLite: three statements in one transaction; the caller drops stale rows before the last two.
    row = "(" + ", ".join("?" * len(_FINISH_ARRAYS)) + ")"
    values = f"WITH v({_FINISH_COLUMNS}) AS (VALUES {', '.join([row] * count)})"
    return f"{values} {jobs}", f"{values} {runs.format(join='')}", f"{values} {flows.format(join='')}"


def finish(outcomes: Sequence[Outcome], retry: RetrySettings) -> list[Finished]:
    """Record a batch of attempts' outcomes and move their jobs on.

    A job is `succeeded`, back to `queued` (retry, after the backoff; at once when interrupted) or
    `failed` (attempts used up, or Discard). Every job write is fenced by its lease token: an
    outcome whose lease was taken back changes nothing and comes back `stale`.
    """
    return settle(outcomes, [], None, retry)[0] if outcomes else []


def _finish_sqlite(rows: Sequence[tuple[Any, ...]]) -> set[int]:
    """SQLite's three finishing statements, inside the caller's transaction; returns the job ids
    whose lease still held (the others are left alone)."""
    jobs_sql, _, _ = _finish_statements(False, len(rows))
    changed = {row[0] for row in execute(jobs_sql, [value for row in rows for value in row]).fetchall()}
    fresh = [row for row in rows if row[0] in changed]
    if fresh:
        _, runs_sql, flows_sql = _finish_statements(False, len(fresh))
        flat = [value for row in fresh for value in row]
        execute(runs_sql, flat)
        execute(flows_sql, flat)
    return changed


def _plan(outcome: Outcome, retry: RetrySettings) -> tuple[Finished, tuple[Any, ...]]:
    """Decide what an outcome does to its job, and the row `finish` writes for it."""
    job = outcome.job
    ended = to_db_time(outcome.ended_at)
    duration_ms = max(0, int((outcome.ended_at - outcome.started_at).total_seconds() * 1000))
    error = _error_line(outcome.error_message) if outcome.error_message else None
    run_at = finished_at = None
    retry_at: datetime | None = None
    if outcome.status == "success":
        job_status, will_retry, finished_at = "succeeded", False, ended
    elif outcome.retry == "now" or (outcome.retry == "normal" and job.attempt < job.max_attempts):
        job_status, will_retry = "queued", True
        delay = 0.0 if outcome.retry == "now" else retry_delay(job.attempt, retry)
        retry_at = outcome.ended_at + timedelta(seconds=delay)
        run_at = to_db_time(retry_at)
    else:
        job_status, will_retry, finished_at = "failed", False, ended
    row = (
        job.job_id, job.lease_token, job.run_id, job.data_flow_id, job_status, run_at, finished_at, error,
        outcome.status, ended, duration_ms, None if outcome.result is None else dump_json(outcome.result),
        error, outcome.error_backtrace,
    )  # fmt: skip
    finished = Finished(outcome, job_status, will_retry, duration_ms, retry_at=retry_at)
    return finished, row


def rescue_expired(now: datetime, retry: RetrySettings, limit: int = 100) -> list[Rescued]:
    """Take back running jobs whose lease ran out: the lost attempt fails, the job retries or fails."""
    stamp = to_db_time(now)
    # Usually nothing has expired: find that out with a read, not a write lock (BEGIN IMMEDIATE).
    if not execute(
        "SELECT 1 FROM dfjob.jobs WHERE status = 'running' AND lease_expires_at < ? LIMIT 1", (stamp,)
    ).fetchone():
        return []
    # Lock only the job rows: a flow row locked here would make a heartbeat wait on the rescue.
    lock = " FOR UPDATE OF jobs SKIP LOCKED" if is_postgres() else ""
    rescued = []
    with write_transaction():
        rows = execute(
            "SELECT jobs.id, jobs.data_flow_id, jobs.attempts, jobs.max_attempts, jobs.locked_by, data_flows.name"
            " FROM dfjob.jobs JOIN dfjob.data_flows ON dfjob.data_flows.id = jobs.data_flow_id"
            f" WHERE jobs.status = 'running' AND jobs.lease_expires_at < ? ORDER BY jobs.id LIMIT ?{lock}",
            (stamp, limit),
        ).fetchall()
        for job_id, flow_id, attempts, max_attempts, locked_by, flow_name in rows:
            lost = locked_by or "unknown"
            message = f"worker lost: {lost} stopped renewing its lease"
            run = execute(
                "SELECT id, started_at, created_at FROM dfjob.data_flow_runs"
                " WHERE job_id = ? AND status IN ('pending', 'in_progress') ORDER BY id DESC LIMIT 1",
                (job_id,),
            ).fetchone()
            run_id = None
            if run is not None:
                run_id = run[0]
                started = from_db_time(run[1]) or from_db_time(run[2])
                assert started is not None
                duration_ms = max(0, int((now - started).total_seconds() * 1000))
                execute(
                    "UPDATE dfjob.data_flow_runs SET status = 'failed', ended_at = ?, duration_ms = ?,"
                    " error_message = ? WHERE job_id = ? AND status IN ('pending', 'in_progress')",
                    (stamp, duration_ms, message, job_id),
                )
            will_retry = attempts < max_attempts
            release = "locked_by = NULL, lease_token = NULL, lease_expires_at = NULL, rescues = rescues + 1"
            if will_retry:
                run_at = to_db_time(now + timedelta(seconds=retry_delay(attempts, retry)))
                execute(
                    f"UPDATE dfjob.jobs SET status = 'queued', run_at = ?, last_error = ?, {release} WHERE id = ?",
                    (run_at, message, job_id),
                )
            else:
                execute(
                    f"UPDATE dfjob.jobs SET status = 'failed', finished_at = ?, last_error = ?, {release} WHERE id = ?",
                    (stamp, message, job_id),
                )
            execute("UPDATE dfjob.data_flows SET last_run_status = 'failed' WHERE id = ?", (flow_id,))
            rescued.append(
                Rescued(job_id, run_id, flow_id, flow_name, lost, "queued" if will_retry else "failed", will_retry)
            )
    return rescued


def cancel_job(job_id: int, now: datetime) -> None:
    """A queued job becomes `cancelled`; anything else is refused."""
    with write_transaction():
        row = execute("SELECT status, data_flow_id FROM dfjob.jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise DfjobError(f"no job with id {job_id}")
        if row[0] != "queued":
            raise DfjobError(f"job {job_id} is {row[0]}; only a queued job can be cancelled")
        execute(
            "UPDATE dfjob.jobs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status = 'queued'",
            (to_db_time(now), job_id),
        )
        # The flow is no longer in progress: show the outcome of its latest run again.
        execute(
            "UPDATE dfjob.data_flows SET last_run_status = (SELECT status FROM dfjob.data_flow_runs"
            " WHERE data_flow_id = ? ORDER BY id DESC LIMIT 1) WHERE id = ?",
            (row[1], row[1]),
        )


def retry_job(job_id: int, now: datetime) -> Enqueued:
    """A failed or cancelled job goes back to `queued`, to run now, with fresh attempts."""
    with write_transaction():
        row = execute("SELECT status, data_flow_id, queue FROM dfjob.jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise DfjobError(f"no job with id {job_id}")
        if row[0] not in ("failed", "cancelled"):
            raise DfjobError(f"job {job_id} is {row[0]}; only a failed or cancelled job can be retried")
        active = execute(
            "SELECT id FROM dfjob.jobs WHERE data_flow_id = ? AND status IN ('queued', 'running')", (row[1],)
        ).fetchone()
        if active:
            raise DfjobError(f"job {job_id}: its data flow already has an active job {active[0]}")
        stamp = to_db_time(now)
        try:
            execute(
                "UPDATE dfjob.jobs SET status = 'queued', attempts = 0, run_at = ?, finished_at = NULL,"
                " last_error = NULL WHERE id = ?",
                (stamp, job_id),
            )
        except peewee.IntegrityError:
            raise DfjobError(f"job {job_id}: its data flow already has an active job") from None
        execute(
            "UPDATE dfjob.data_flows SET last_run_at = ?, last_run_status = 'in_progress' WHERE id = ?", (stamp, row[1])
        )
        notify(row[2])
    wake_after_commit()
    return Enqueued(job_id, row[1], row[2], deduplicated=False)


def check_finished_statuses(statuses: Sequence[str]) -> None:
    """Only jobs that ended can be pruned."""
    unknown = sorted(set(statuses) - set(FINISHED))
    if unknown or not statuses:
        raise DfjobError(f"prune takes finished statuses only ({', '.join(FINISHED)}), not {unknown[:1] or 'none'}")


def prune(older_than: datetime, statuses: Sequence[str] = FINISHED, batch: int = 1000) -> tuple[int, int]:
    """Delete finished jobs (and their runs) that finished before `older_than`, in batches of
    `batch` jobs, each its own short transaction. Returns (jobs, runs) deleted."""
    check_finished_statuses(statuses)
    jobs_deleted = runs_deleted = 0
    while True:
        with write_transaction():
            ids = [
                row[0]
                for row in execute(
                    f"SELECT id FROM dfjob.jobs WHERE finished_at < ? AND status IN ({marks(len(statuses))}) LIMIT ?",
                    (to_db_time(older_than), *statuses, batch),
                ).fetchall()
            ]
            if not ids:
                return jobs_deleted, runs_deleted
            placeholders = marks(len(ids))
            runs_deleted += execute(f"DELETE FROM dfjob.data_flow_runs WHERE job_id IN ({placeholders})", ids).rowcount
            jobs_deleted += execute(f"DELETE FROM dfjob.jobs WHERE id IN ({placeholders})", ids).rowcount


def active_job_id(data_flow_id: int) -> int | None:
    row = execute(
        "SELECT id FROM dfjob.jobs WHERE data_flow_id = ? AND status IN ('queued', 'running')", (data_flow_id,)
    ).fetchone()
    return None if row is None else int(row[0])
