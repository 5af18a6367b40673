"""The Postgres store: claims with `FOR UPDATE SKIP LOCKED`, a worker's turn in one pipeline
(one round trip, one implicit transaction), enqueues announced with NOTIFY.

Statements take arrays (`= ANY(?)`, `unnest`), so their text never depends on how many values
they get and psycopg prepares each once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from dfjob import wakeup
from dfjob.config import RetrySettings
from dfjob.db import statement_limit_ms
from dfjob.models import to_db_time
from dfjob.sql import execute, pipeline
from dfjob.store import DueJob, Start, Store
from dfjob.store.rows import ClaimRequest, Outcome, Turn

# One outcome per row of `unnest`: one array per column.
FINISH_COLUMNS = (
    ("id", "bigint"), ("token", "text"), ("run_id", "bigint"), ("flow_id", "bigint"), ("job_status", "text"),
    ("run_at", "timestamp"), ("finished_at", "timestamp"), ("last_error", "text"), ("run_status", "text"),
    ("started_at", "timestamp"), ("ended_at", "timestamp"), ("duration_ms", "integer"), ("result", "text"),
    ("error_message", "text"), ("error_backtrace", "text"),
)  # fmt: skip
# Runs and flows change only where the fenced jobs update did (the `j` join).
FINISH = (
    "WITH v AS (SELECT * FROM unnest("
    + ", ".join(f"CAST(? AS {kind}[])" for _, kind in FINISH_COLUMNS)
    + ") AS v("
    + ", ".join(name for name, _ in FINISH_COLUMNS)
    + ")),"
    " j AS (UPDATE dfjob.jobs SET status = v.job_status, run_at = COALESCE(v.run_at, jobs.run_at),"
    "  finished_at = v.finished_at, last_error = v.last_error,"
    "  locked_by = NULL, lease_token = NULL, lease_expires_at = NULL"
    "  FROM v WHERE jobs.id = v.id AND jobs.lease_token = v.token AND jobs.status = 'running' RETURNING jobs.id),"
    " r AS (UPDATE dfjob.data_flow_runs SET status = v.run_status,"
    "  started_at = COALESCE(data_flow_runs.started_at, v.started_at), ended_at = v.ended_at,"
    "  duration_ms = v.duration_ms, result = v.result, error_message = v.error_message,"
    "  error_backtrace = v.error_backtrace FROM v JOIN j ON j.id = v.id WHERE data_flow_runs.id = v.run_id),"
    " f AS (UPDATE dfjob.data_flows SET last_run_status = v.run_status FROM v JOIN j ON j.id = v.id"
    "  WHERE data_flows.id = v.flow_id)"
    " SELECT id FROM j"
)
# The whole claim in one statement: lock and update the jobs, create their pending runs, and
# return them joined with their flows. MATERIALIZED: the locking subquery runs exactly once.
# Parameters: queues, now, limit, worker, token, expires, worker, now.
CLAIM = (
    "WITH picked AS MATERIALIZED (SELECT id FROM dfjob.jobs WHERE status = 'queued' AND queue = ANY(?)"
    "  AND run_at <= ? ORDER BY priority, run_at, id LIMIT ? FOR UPDATE SKIP LOCKED),"
    " claimed AS (UPDATE dfjob.jobs SET status = 'running', attempts = attempts + 1, locked_by = ?,"
    "  lease_token = ?, lease_expires_at = ? FROM picked WHERE jobs.id = picked.id"
    "  RETURNING jobs.id, jobs.data_flow_id, jobs.queue, jobs.attempts, jobs.max_attempts, jobs.params),"
    " runs AS (INSERT INTO dfjob.data_flow_runs (data_flow_id, job_id, attempt, status, queue, worker, created_at)"
    "  SELECT data_flow_id, id, attempts, 'pending', queue, ?, CAST(? AS timestamp) FROM claimed"
    "  RETURNING id, job_id)"
    " SELECT c.id, c.data_flow_id, c.queue, c.attempts, c.max_attempts, c.params,"
    "  f.name, f.class_path, f.configuration, f.timeout_seconds, r.id"
    " FROM claimed c JOIN dfjob.data_flows f ON f.id = c.data_flow_id JOIN runs r ON r.job_id = c.id"
    " ORDER BY c.id"
)
ENQUEUE_MANY = (
    "INSERT INTO dfjob.jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues, run_at,"
    " params, created_at) SELECT v.id, v.queue, v.priority, 'queued', 0, v.attempts, 0, CAST(? AS timestamp),"
    " '{}', CAST(? AS timestamp) FROM unnest(CAST(? AS bigint[]), CAST(? AS text[]), CAST(? AS integer[]),"
    " CAST(? AS integer[])) AS v(id, queue, priority, attempts) ON CONFLICT DO NOTHING RETURNING data_flow_id, id"
)


LIMITS = "SELECT set_config('statement_timeout', ?, true), set_config('idle_in_transaction_session_timeout', ?, true)"


def _limits() -> list[tuple[str, list[Any]]]:
    """The statement that applies the process's limit to the rest of a transaction (a pipeline's
    implicit one included): transaction-local, so it also holds behind PgBouncer."""
    limit = statement_limit_ms()
    return [] if limit is None else [(LIMITS, [str(limit), str(limit)])]


class PostgresStore(Store):
    # Skip jobs another rescuer is taking back; never lock their flows (a heartbeat would wait).
    rescue_lock = " FOR UPDATE OF jobs SKIP LOCKED"

    def limit_transaction(self) -> None:
        for statement, params in _limits():
            execute(statement, params)

    def in_values(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def renew(self, leases: Sequence[tuple[int, str]], now: datetime, lease_seconds: float) -> set[int]:
        ids, tokens = ([lease[0] for lease in leases], [lease[1] for lease in leases])
        renew = (
            "UPDATE dfjob.jobs SET lease_expires_at = ? FROM unnest(CAST(? AS bigint[]), CAST(? AS text[]))"
            " AS v(id, token) WHERE jobs.id = v.id AND jobs.lease_token = v.token AND jobs.status = 'running'"
            " RETURNING jobs.id",
            [to_db_time(now + timedelta(seconds=lease_seconds)), ids, tokens],
        )
        return {row[0] for row in pipeline([*_limits(), renew])[-1]}

    def database_now(self) -> datetime | None:
        value: datetime = execute("SELECT clock_timestamp()").fetchone()[0]
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def lock_flow(self, data_flow_id: int) -> None:
        # NO KEY UPDATE: the job rows' foreign keys take KEY SHARE on the flow, which it lets through.
        execute("SELECT id FROM dfjob.data_flows WHERE id = ? FOR NO KEY UPDATE", (data_flow_id,))

    def notify(self, queue: str) -> None:
        execute("SELECT pg_notify(?, ?)", (wakeup.channel(), queue))

    def wake_after_commit(self) -> None:
        """NOTIFY already did it, on commit."""

    def enqueue_many(self, jobs: Sequence[DueJob], now: datetime) -> dict[int, int]:
        if not jobs:
            return {}
        stamp = to_db_time(now)
        ids, queues, priorities, attempts = (list(column) for column in zip(*jobs, strict=True))
        created = dict(execute(ENQUEUE_MANY, [stamp, stamp, ids, queues, priorities, attempts]).fetchall())
        for queue in {queue for flow_id, queue, _, _ in jobs if flow_id in created}:
            self.notify(queue)
        return created

    def turn(
        self, outcomes: Sequence[Outcome], starts: Sequence[Start], request: ClaimRequest | None, retry: RetrySettings
    ) -> Turn:
        planned = [self._plan(outcome, retry) for outcome in outcomes]
        token = self.new_token()
        statements = _limits()
        statements += [self._mark_started_statement(run_ids, stamp) for run_ids, stamp in starts if run_ids]
        finish_at = claim_at = -1
        if planned:
            finish_at = len(statements)
            columns = [list(column) for column in zip(*(row for _, row in planned), strict=True)]
            statements.append((FINISH, columns))
        if request is not None:
            claim_at = len(statements)
            statements.append(self._claim_statement(request, token))
        if len(statements) == len(_limits()):
            return Turn([], [])
        results = pipeline(statements)
        changed = {row[0] for row in results[finish_at]} if finish_at >= 0 else set()
        claimed = results[claim_at] if claim_at >= 0 else []
        worker = request.worker if request is not None else ""
        return Turn(self._stale(planned, changed), [self._claimed(row, token, worker) for row in claimed])

    @staticmethod
    def _claim_statement(request: ClaimRequest, token: str) -> tuple[str, list[Any]]:
        stamp = to_db_time(request.now)
        expires = to_db_time(request.now + timedelta(seconds=request.lease_seconds))
        params = [list(request.queues), stamp, request.limit, request.worker, token, expires, request.worker, stamp]
        return CLAIM, params
