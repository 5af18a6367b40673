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
from dfjob.store.rows import Claimed, ClaimRequest, Downstream, Finished, LogWrite, Outcome, Turn

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
    " run_status, started_at, ended_at, duration_ms, result, error_message, error_backtrace, cpu_seconds, max_rss_kb,"
    " alert"
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
    " error_backtrace = v.error_backtrace, cpu_seconds = v.cpu_seconds, max_rss_kb = v.max_rss_kb"
    " FROM v WHERE data_flow_runs.id = v.run_id"
)
# One row per flow (see `Store._flow_rows`).
FINISH_FLOWS = (
    "UPDATE dfjob.data_flows SET last_run_status = f.run_status,"
    " failure_streak = CASE WHEN f.restart = 1 THEN f.failures ELSE data_flows.failure_streak + f.failures END,"
    " last_success_at = COALESCE(f.success_at, data_flows.last_success_at),"
    " late_alerted_at = CASE WHEN f.success_at IS NULL THEN data_flows.late_alerted_at END"
    " FROM f WHERE data_flows.id = f.flow_id"
)
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
    "   AND NOT EXISTS (SELECT 1 FROM dfjob.queue_states p WHERE p.name = j.queue AND p.paused)"
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

    def renew(self, leases: Sequence[tuple[int, str]], now: datetime, lease_seconds: float) -> dict[int, bool]:
        expires = to_db_time(now + timedelta(seconds=lease_seconds))
        held: dict[int, bool] = {}
        with write_transaction():
            for start in range(0, len(leases), CHUNK):
                chunk = leases[start : start + CHUNK]
                rows = execute(
                    f"WITH v(id, token) AS (VALUES {', '.join(['(?, ?)'] * len(chunk))})"
                    " UPDATE dfjob.jobs SET lease_expires_at = ? FROM v WHERE jobs.id = v.id"
                    " AND jobs.lease_token = v.token AND jobs.status = 'running'"
                    " RETURNING jobs.id, jobs.cancel_requested",
                    [*(value for lease in chunk for value in lease), expires],
                ).fetchall()
                held.update((row[0], bool(row[1])) for row in rows)
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

    def wake_after_commit(self, said: str = "j") -> None:
        wakeup.wake_sqlite_workers(said)

    def turn(
        self,
        outcomes: Sequence[Outcome],
        starts: Sequence[Start],
        request: ClaimRequest | None,
        retry: RetrySettings,
        logs: Sequence[LogWrite] = (),
        releases: Sequence[Claimed] = (),
    ) -> Turn:
        planned = [self._plan(outcome, retry) for outcome in outcomes]
        token = self.new_token()
        downstream: list[Downstream] = []
        released = False
        with write_transaction():
            released = self._release(releases)
            self._write_logs(logs)
            for run_ids, stamp in starts:
                if run_ids:
                    execute(*self._mark_started_statement(run_ids, stamp))
            changed = self._finish(planned) if planned else set()
            succeeded = [item for item, _ in planned if item.job_status == "succeeded"]
            if any(item.outcome.job.has_downstream for item in succeeded):
                now = request.now if request is not None else clock.now()
                downstream = self._downstream([item.outcome.job.job_id for item in succeeded], retry, now)
            claimed = self._claim(request, token) if request is not None else []
        if downstream or released:
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

    def _release(self, jobs: Sequence[Claimed]) -> bool:
        """Inside the turn's transaction: see `Store.RELEASE_JOB`. True if any went back."""
        released = False
        for job in jobs:
            back = execute(
                f"{self.RELEASE_JOB} WHERE id = ? AND lease_token = ? AND status = 'running'",
                (job.job_id, job.lease_token),
            ).rowcount
            if back:
                released = True
                execute("DELETE FROM dfjob.data_flow_runs WHERE id = ? AND status = 'pending'", (job.run_id,))
        return released

    @staticmethod
    def _write_logs(logs: Sequence[LogWrite]) -> None:
        """Inside the turn's transaction: see `postgres._log_statements`."""
        for write in logs:
            if write.drop_tail_before is not None:
                execute(
                    "DELETE FROM dfjob.run_logs WHERE run_id = ? AND part = 'tail' AND seq < ?",
                    (write.run_id, write.drop_tail_before),
                )
            for start in range(0, len(write.lines), CHUNK):
                chunk = write.lines[start : start + CHUNK]
                execute(
                    "INSERT INTO dfjob.run_logs (run_id, seq, at, stream, text, part)"
                    f" VALUES {', '.join(['(?, ?, ?, ?, ?, ?)'] * len(chunk))}",
                    [
                        value
                        for seq, at, stream, text, part in chunk
                        for value in (write.run_id, seq, to_db_time(at), stream, text, part)
                    ],
                )
            execute(
                "UPDATE dfjob.data_flow_runs SET log_bytes = ?, log_dropped_bytes = ? WHERE id = ?",
                (write.log_bytes, write.dropped_bytes, write.run_id),
            )

    def _finish(self, planned: Sequence[tuple[Finished, tuple[Any, ...]]]) -> set[int]:
        """Inside the turn's transaction: the jobs first, fenced by their lease tokens; then the
        runs and flows of those whose lease still held. Returns their job ids."""
        rows = [row for _, row in planned]
        changed: set[int] = set()
        for start in range(0, len(rows), CHUNK):
            values, params = _values(rows[start : start + CHUNK])
            changed.update(row[0] for row in execute(f"{values} {FINISH_JOBS}", params).fetchall())
        fresh = [item for item in planned if item[1][0] in changed]
        for start in range(0, len(fresh), CHUNK):
            values, params = _values([row for _, row in fresh[start : start + CHUNK]])
            execute(f"{values} {FINISH_RUNS}", params)
        alerts = [(row[-1], row[10]) for _, row in fresh if row[-1] is not None]
        for start in range(0, len(alerts), CHUNK):
            chunk = alerts[start : start + CHUNK]
            placeholders = ", ".join(["('job.failed', ?, ?)"] * len(chunk))
            execute(
                f"INSERT INTO dfjob.alert_outbox (event, payload, created_at) VALUES {placeholders}",
                [value for row in chunk for value in row],
            )
        for start in range(0, len(fresh), CHUNK):
            flows = self._flow_rows(fresh[start : start + CHUNK])
            flow_values = ", ".join(["(?, ?, ?, ?, ?)"] * len(flows))
            execute(
                f"WITH f(flow_id, run_status, restart, failures, success_at) AS (VALUES {flow_values}) {FINISH_FLOWS}",
                [value for row in flows for value in row],
            )
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
