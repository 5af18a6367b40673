"""The SQLite store: one writer at a time, so every write transaction is `BEGIN IMMEDIATE` and
a worker's turn is one such transaction. Idle workers on the same host are woken through the
datagram sockets beside the database file (`wakeup`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from dfjob import clock, wakeup
from dfjob.config import RetrySettings
from dfjob.db import write_transaction
from dfjob.models import to_db_time
from dfjob.sql import execute, marks
from dfjob.store import Start, Store, claim_candidates
from dfjob.store.rows import ClaimRequest, Downstream, Outcome, Turn

# SQLite's limit on parameters per statement is 32766; rows are written in chunks well below it.
CHUNK = 300
# How a heartbeat moves a flow on (`v` holds its new times; `?` is the pass's time, twice).
ADVANCE = (
    "next_run_at = v.next_run_at, last_scheduled_for = v.last_scheduled_for,"
    " last_run_at = CASE WHEN v.enqueued = 1 THEN ? ELSE data_flows.last_run_at END,"
    " last_run_status = CASE WHEN v.enqueued = 1 THEN 'in_progress' ELSE data_flows.last_run_status END,"
    " updated_at = CASE WHEN v.enqueued = 1 THEN ? ELSE data_flows.updated_at END"
)
# The columns of one outcome row, shared by the statements that record a batch of outcomes.
FINISH_COLUMNS = (
    "id, token, run_id, flow_id, job_status, run_at, finished_at, last_error,"
    " run_status, started_at, ended_at, duration_ms, result, error_message, error_backtrace"
)
FINISH_JOBS = (
    "UPDATE dfjob.jobs SET status = v.job_status, run_at = COALESCE(v.run_at, jobs.run_at),"
    " finished_at = v.finished_at, last_error = v.last_error,"
    " locked_by = NULL, lease_token = NULL, lease_expires_at = NULL"
    " FROM v WHERE jobs.id = v.id AND jobs.lease_token = v.token AND jobs.status = 'running'"
    " RETURNING jobs.id"
)
FINISH_RUNS = (
    "UPDATE dfjob.data_flow_runs SET status = v.run_status, started_at = COALESCE(data_flow_runs.started_at,"
    " v.started_at), ended_at = v.ended_at,"
    " duration_ms = v.duration_ms, result = v.result, error_message = v.error_message,"
    " error_backtrace = v.error_backtrace FROM v WHERE data_flow_runs.id = v.run_id"
)
FINISH_FLOWS = "UPDATE dfjob.data_flows SET last_run_status = v.run_status FROM v WHERE data_flows.id = v.flow_id"
# The claim, inside the turn's BEGIN IMMEDIATE (one writer: counts of running jobs cannot change
# under it). Due jobs whose run limit (`max_running`, a backfill's `--parallel`) has room, then as
# many of each limit's as it allows, in (priority, run_at, id) order. A job without a limit counts
# toward none. Parameters: worker, token, expires, *queues, now, candidates, limit, limit.
CLAIM = (
    "UPDATE dfjob.jobs SET status = 'running', attempts = attempts + 1, locked_by = ?, lease_token = ?,"
    " lease_expires_at = ? WHERE id IN (SELECT id FROM (SELECT c.id, c.priority, c.run_at,"
    "  row_number() OVER (PARTITION BY c.run_limit_id ORDER BY c.priority, c.run_at, c.id) AS rn, c.free"
    "  FROM (SELECT j.id, j.priority, j.run_at, j.run_limit_id,"
    "   (SELECT m.max_running FROM dfjob.run_limits m WHERE m.id = j.run_limit_id)"
    "   - (SELECT count(*) FROM dfjob.jobs r WHERE r.run_limit_id = j.run_limit_id AND r.status = 'running') AS free"
    "   FROM dfjob.jobs j WHERE j.status = 'queued' AND j.queue IN ({queues}) AND j.run_at <= ?"
    "   AND (j.run_limit_id IS NULL OR (SELECT count(*) FROM dfjob.jobs r WHERE r.run_limit_id = j.run_limit_id"
    "    AND r.status = 'running') < (SELECT m.max_running FROM dfjob.run_limits m WHERE m.id = j.run_limit_id))"
    "   ORDER BY j.priority, j.run_at, j.id LIMIT ?) AS c) AS ranked"
    " WHERE ranked.rn <= COALESCE(ranked.free, ?) ORDER BY ranked.priority, ranked.run_at, ranked.id LIMIT ?)"
    " RETURNING id, data_flow_id, queue, attempts, max_attempts, params, scheduled_for, triggered_by"
)


def _values(rows: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """`WITH v(…) AS (VALUES …)` for a batch of outcome rows, and its parameters."""
    row = "(" + marks(len(rows[0])) + ")"
    return f"WITH v({FINISH_COLUMNS}) AS (VALUES {', '.join([row] * len(rows))})", [
        value for item in rows for value in item
    ]


class SqliteStore(Store):
    # Times are stored as `YYYY-MM-DD HH:MM:SS.ffffff` (UTC); a slot's key is its ISO 8601 form.
    slot_key_sql = "replace({column}, ' ', 'T') || '+00:00'"

    def in_values(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} IN ({marks(len(values))})", list(values)

    def renew(self, leases: Sequence[tuple[int, str]], now: datetime, lease_seconds: float) -> set[int]:
        expires = to_db_time(now + timedelta(seconds=lease_seconds))
        held: set[int] = set()
        with write_transaction():
            for start in range(0, len(leases), CHUNK):
                chunk = leases[start : start + CHUNK]
                rows = execute(
                    f"WITH v(id, token) AS (VALUES {', '.join(['(?, ?)'] * len(chunk))})"
                    " UPDATE dfjob.jobs SET lease_expires_at = ? FROM v WHERE jobs.id = v.id"
                    " AND jobs.lease_token = v.token AND jobs.status = 'running' RETURNING jobs.id",
                    [*(value for lease in chunk for value in lease), expires],
                ).fetchall()
                held.update(row[0] for row in rows)
        return held

    def advance_flows(
        self, moves: Sequence[tuple[int, datetime | None, datetime | None]], enqueued: Collection[int], now: datetime
    ) -> None:
        stamp = to_db_time(now)
        rows = [(flow_id, to_db_time(nxt), to_db_time(last), int(flow_id in enqueued)) for flow_id, nxt, last in moves]
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            values = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
            execute(
                f"WITH v(id, next_run_at, last_scheduled_for, enqueued) AS (VALUES {values})"
                f" UPDATE dfjob.data_flows SET {ADVANCE} FROM v WHERE data_flows.id = v.id",
                [*(value for row in chunk for value in row), stamp, stamp],
            )

    def limit_transaction(self) -> None:
        """SQLite has no statement limits: its writers wait at most `busy_timeout` for the lock."""

    def lock_flow(self, data_flow_id: int) -> None:
        """BEGIN IMMEDIATE already holds the one write lock."""

    def notify(self, queue: str) -> None:
        """SQLite has no notifications: `wake_after_commit` pokes the workers instead."""

    def wake_after_commit(self) -> None:
        wakeup.wake_sqlite_workers()

    def turn(
        self, outcomes: Sequence[Outcome], starts: Sequence[Start], request: ClaimRequest | None, retry: RetrySettings
    ) -> Turn:
        planned = [self._plan(outcome, retry) for outcome in outcomes]
        token = self.new_token()
        downstream: list[Downstream] = []
        with write_transaction():
            for run_ids, stamp in starts:
                if run_ids:
                    execute(*self._mark_started_statement(run_ids, stamp))
            changed = self._finish([row for _, row in planned]) if planned else set()
            succeeded = [item for item, _ in planned if item.job_status == "succeeded"]
            if any(item.outcome.job.has_downstream for item in succeeded):
                now = request.now if request is not None else clock.now()
                downstream = self._downstream([item.outcome.job.job_id for item in succeeded], retry, now)
            claimed = self._claim(request, token) if request is not None else []
        if downstream:
            self.wake_after_commit()
        worker = request.worker if request is not None else ""
        return Turn(self._stale(planned, changed), [self._claimed(row, token, worker) for row in claimed], downstream)

    def _downstream(self, succeeded: Sequence[int], retry: RetrySettings, now: datetime) -> list[Downstream]:
        created = execute(*self._downstream_statement(succeeded, retry, now)).fetchall()
        if not created:
            return []
        flow_ids = sorted({row[1] for row in created})
        where = f"id IN ({marks(len(flow_ids))})"
        execute(
            f"UPDATE dfjob.data_flows SET last_run_at = ?, last_run_status = 'in_progress' WHERE {where}",
            [to_db_time(now), *flow_ids],
        )
        names = dict(execute(f"SELECT id, name FROM dfjob.data_flows WHERE {where}", flow_ids).fetchall())
        return [Downstream(job_id, flow_id, names[flow_id], queue) for job_id, flow_id, queue in sorted(created)]

    def _finish(self, rows: Sequence[tuple[Any, ...]]) -> set[int]:
        """Inside the turn's transaction: the jobs first, fenced by their lease tokens; then the
        runs and flows of those whose lease still held. Returns their job ids."""
        changed: set[int] = set()
        for start in range(0, len(rows), CHUNK):
            values, params = _values(rows[start : start + CHUNK])
            changed.update(row[0] for row in execute(f"{values} {FINISH_JOBS}", params).fetchall())
        fresh = [row for row in rows if row[0] in changed]
        for start in range(0, len(fresh), CHUNK):
            values, params = _values(fresh[start : start + CHUNK])
            execute(f"{values} {FINISH_RUNS}", params)
            execute(f"{values} {FINISH_FLOWS}", params)
        return changed

    def _claim(self, request: ClaimRequest, token: str) -> list[tuple[Any, ...]]:
        """Inside the turn's transaction: the same rows as the Postgres claim returns."""
        stamp = to_db_time(request.now)
        expires = to_db_time(request.now + timedelta(seconds=request.lease_seconds))
        jobs = execute(
            CLAIM.format(queues=marks(len(request.queues))),
            [request.worker, token, expires, *request.queues, stamp, claim_candidates(request.limit), request.limit,
             request.limit],
        ).fetchall()  # fmt: skip
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
        downstream = {
            row[0]
            for row in execute(
                f"SELECT DISTINCT upstream_id FROM dfjob.flow_upstreams WHERE upstream_id IN ({marks(len(flow_ids))})",
                flow_ids,
            ).fetchall()
        }
        values = ", ".join("(?, ?, ?, 'pending', ?, ?, ?)" for _ in jobs)
        run_params: list[Any] = []
        for job_id, flow_id, queue, attempts, *_ in jobs:
            run_params += [flow_id, job_id, attempts, queue, request.worker, stamp]
        runs = execute(
            "INSERT INTO dfjob.data_flow_runs (data_flow_id, job_id, attempt, status, queue, worker, created_at)"
            f" VALUES {values} RETURNING job_id, id",
            run_params,
        ).fetchall()
        run_ids = {row[0]: row[1] for row in runs}
        return sorted((*job[:6], *flows[job[1]], run_ids[job[0]], job[6], job[7], job[1] in downstream) for job in jobs)
