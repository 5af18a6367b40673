"""The Postgres store: claims with `FOR UPDATE SKIP LOCKED`, a worker's turn in one pipeline
(one round trip, one implicit transaction), enqueues announced with NOTIFY.

Statements take arrays (`= ANY(?)`, `unnest`), so their text never depends on how many values
they get and psycopg prepares each once.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from dfjob import clock, wakeup
from dfjob.config import RetrySettings
from dfjob.db import statement_limit_ms
from dfjob.models import to_db_time
from dfjob.sql import execute, pipeline
from dfjob.store import Start, Store, claim_candidates
from dfjob.store.rows import Claimed, ClaimRequest, Downstream, LogWrite, Outcome, Turn

# One outcome per row of `unnest`: one array per column.
FINISH_COLUMNS = (
    ("id", "bigint"), ("token", "text"), ("run_id", "bigint"), ("flow_id", "bigint"), ("job_status", "text"),
    ("run_at", "timestamp"), ("finished_at", "timestamp"), ("last_error", "text"), ("run_status", "text"),
    ("started_at", "timestamp"), ("ended_at", "timestamp"), ("duration_ms", "integer"), ("result", "text"),
    ("error_message", "text"), ("error_backtrace", "text"), ("cpu_seconds", "double precision"),
    ("max_rss_kb", "integer"), ("alert", "text"),
)  # fmt: skip
# One flow per row: what the batch does to it (see `Store._flow_rows`).
FLOW_COLUMNS = (
    ("flow_id", "bigint"), ("run_status", "text"), ("restart", "integer"), ("failures", "integer"),
    ("success_at", "timestamp"),
)  # fmt: skip
# Runs, flows and alerts change only where the fenced jobs update did (the `j` join).
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
    "  error_backtrace = v.error_backtrace, cpu_seconds = v.cpu_seconds, max_rss_kb = v.max_rss_kb"
    "  FROM v JOIN j ON j.id = v.id WHERE data_flow_runs.id = v.run_id),"
    " a AS (INSERT INTO dfjob.alert_outbox (event, payload, created_at)"
    "  SELECT 'job.failed', v.alert, v.ended_at FROM v JOIN j ON j.id = v.id WHERE v.alert IS NOT NULL),"
    " fl AS (SELECT * FROM unnest("
    + ", ".join(f"CAST(? AS {kind}[])" for _, kind in FLOW_COLUMNS)
    + ") AS fl("
    + ", ".join(name for name, _ in FLOW_COLUMNS)
    + ")),"
    " f AS (UPDATE dfjob.data_flows SET last_run_status = fl.run_status,"
    "  failure_streak = CASE WHEN fl.restart = 1 THEN fl.failures ELSE data_flows.failure_streak + fl.failures END,"
    "  last_success_at = COALESCE(fl.success_at, data_flows.last_success_at),"
    "  late_alerted_at = CASE WHEN fl.success_at IS NULL THEN data_flows.late_alerted_at END"
    "  FROM fl WHERE data_flows.id = fl.flow_id AND EXISTS (SELECT 1 FROM v JOIN j ON j.id = v.id"
    "  WHERE v.flow_id = fl.flow_id))"
    " SELECT id FROM j"
)
# A claim is two statements in the turn's transaction. LOCK_LIMITS stamps, with this turn's token,
# the run limits (`max_running`, a backfill's `--parallel`) of the first due jobs whose limits look
# free, skipping limits another claim holds. It locks those jobs too, skipping jobs another claim
# has locked: otherwise two workers would look at the same first jobs, the second would find all
# their limits held, and it would claim nothing while the first's claim is open (every flow has a
# limit, `max_running` 1 by default). CLAIM then counts the running jobs of those limits
# afresh (its snapshot is taken after the locks) and claims as many of their jobs as each limit
# allows, in (priority, run_at, id) order: lock and update the jobs, create their pending runs, and
# return them joined with their flows. A job without a limit counts toward none. A paused queue's
# jobs are skipped by the claim itself, so a pause holds from every worker's next claim on.
# LOCK_LIMITS parameters: token, queues, now, candidates.
LOCK_LIMITS = (
    "UPDATE dfjob.run_limits SET claim_token = ? WHERE id IN (SELECT l.id FROM dfjob.run_limits l WHERE l.id IN"
    " (SELECT j.run_limit_id FROM dfjob.jobs j WHERE j.status = 'queued' AND j.queue = ANY(?) AND j.run_at <= ?"
    "  AND j.run_limit_id IS NOT NULL"
    "  AND NOT EXISTS (SELECT 1 FROM dfjob.queue_states p WHERE p.name = j.queue AND p.paused)"
    "  AND (SELECT count(*) FROM dfjob.jobs r WHERE r.run_limit_id = j.run_limit_id AND r.status = 'running')"
    "   < (SELECT m.max_running FROM dfjob.run_limits m WHERE m.id = j.run_limit_id)"
    "  ORDER BY j.priority, j.run_at, j.id LIMIT ? FOR UPDATE OF j SKIP LOCKED)"
    " ORDER BY l.id FOR UPDATE SKIP LOCKED)"
)
# CLAIM parameters: token, queues, now, candidates, limit, limit, worker, lease token, expires, worker, now.
CLAIM = (
    "WITH held AS MATERIALIZED (SELECT id, max_running FROM dfjob.run_limits WHERE claim_token = ?),"
    " busy AS (SELECT run_limit_id, count(*) AS n FROM dfjob.jobs WHERE status = 'running'"
    "  AND run_limit_id IN (SELECT id FROM held) GROUP BY run_limit_id),"
    " cand AS MATERIALIZED (SELECT j.id, j.run_limit_id, j.priority, j.run_at FROM dfjob.jobs j"
    "  WHERE j.status = 'queued' AND j.queue = ANY(?) AND j.run_at <= ?"
    "  AND NOT EXISTS (SELECT 1 FROM dfjob.queue_states p WHERE p.name = j.queue AND p.paused)"
    "  AND (j.run_limit_id IS NULL OR j.run_limit_id IN (SELECT id FROM held))"
    "  ORDER BY j.priority, j.run_at, j.id LIMIT ? FOR UPDATE OF j SKIP LOCKED),"
    " picked AS (SELECT ranked.id FROM (SELECT c.id, c.priority, c.run_at,"
    "  row_number() OVER (PARTITION BY c.run_limit_id ORDER BY c.priority, c.run_at, c.id) AS rn,"
    "  COALESCE(h.max_running - COALESCE(b.n, 0), ?) AS free"
    "  FROM cand c LEFT JOIN held h ON h.id = c.run_limit_id LEFT JOIN busy b ON b.run_limit_id = c.run_limit_id)"
    "  AS ranked WHERE ranked.rn <= ranked.free ORDER BY ranked.priority, ranked.run_at, ranked.id LIMIT ?),"
    " claimed AS (UPDATE dfjob.jobs SET status = 'running', attempts = attempts + 1, locked_by = ?,"
    "  lease_token = ?, lease_expires_at = ? FROM picked WHERE jobs.id = picked.id"
    "  RETURNING jobs.id, jobs.data_flow_id, jobs.queue, jobs.attempts, jobs.max_attempts, jobs.params,"
    "  jobs.scheduled_for, jobs.triggered_by),"
    " runs AS (INSERT INTO dfjob.data_flow_runs (data_flow_id, job_id, attempt, status, queue, worker, created_at)"
    "  SELECT data_flow_id, id, attempts, 'pending', queue, ?, CAST(? AS timestamp) FROM claimed"
    "  RETURNING id, job_id)"
    " SELECT c.id, c.data_flow_id, c.queue, c.attempts, c.max_attempts, c.params,"
    "  f.name, f.class_path, f.configuration, f.timeout_seconds, r.id, c.scheduled_for, c.triggered_by,"
    "  EXISTS (SELECT 1 FROM dfjob.flow_upstreams u WHERE u.upstream_id = c.data_flow_id)"
    " FROM claimed c JOIN dfjob.data_flows f ON f.id = c.data_flow_id JOIN runs r ON r.job_id = c.id"
    " ORDER BY c.id"
)


LIMITS = "SELECT set_config('statement_timeout', ?, true), set_config('idle_in_transaction_session_timeout', ?, true)"


def _limits() -> list[tuple[str, list[Any]]]:
    """The statement that applies the process's limit to the rest of a transaction (a pipeline's
    implicit one included): transaction-local, so it also holds behind PgBouncer."""
    limit = statement_limit_ms()
    return [] if limit is None else [(LIMITS, [str(limit), str(limit)])]


ADVANCE = (
    "UPDATE dfjob.data_flows SET next_run_at = v.next_run_at, last_scheduled_for = v.last_scheduled_for,"
    " last_run_at = CASE WHEN v.enqueued = 1 THEN CAST(? AS timestamp) ELSE data_flows.last_run_at END,"
    " last_run_status = CASE WHEN v.enqueued = 1 THEN 'in_progress' ELSE data_flows.last_run_status END"
    " FROM unnest(CAST(? AS bigint[]), CAST(? AS timestamp[]), CAST(? AS timestamp[]), CAST(? AS integer[]))"
    " AS v(id, next_run_at, last_scheduled_for, enqueued) WHERE data_flows.id = v.id"
)


LOG_DROP = (
    "DELETE FROM dfjob.run_logs USING unnest(CAST(? AS bigint[]), CAST(? AS integer[])) AS d(run_id, before)"
    " WHERE run_logs.run_id = d.run_id AND run_logs.part = 'tail' AND run_logs.seq < d.before"
)
LOG_INSERT = (
    "INSERT INTO dfjob.run_logs (run_id, seq, at, stream, text, part) SELECT * FROM unnest(CAST(? AS bigint[]),"
    " CAST(? AS integer[]), CAST(? AS timestamp[]), CAST(? AS text[]), CAST(? AS text[]), CAST(? AS text[]))"
)
LOG_TOTALS = (
    "UPDATE dfjob.data_flow_runs SET log_bytes = u.log_bytes, log_dropped_bytes = u.dropped"
    " FROM unnest(CAST(? AS bigint[]), CAST(? AS integer[]), CAST(? AS integer[])) AS u(run_id, log_bytes, dropped)"
    " WHERE data_flow_runs.id = u.run_id"
)


def _log_statements(logs: Sequence[LogWrite]) -> list[tuple[str, list[Any]]]:
    """What attempts printed since the last turn: lines out of their tail window leave, new ones
    come, the runs' totals follow."""
    if not logs:
        return []
    drops = [(write.run_id, write.drop_tail_before) for write in logs if write.drop_tail_before is not None]
    lines = [(write.run_id, *line) for write in logs for line in write.lines]
    statements: list[tuple[str, list[Any]]] = []
    if drops:
        statements.append((LOG_DROP, [[run_id for run_id, _ in drops], [before for _, before in drops]]))
    if lines:
        columns = [list(column) for column in zip(*lines, strict=True)]
        columns[2] = [to_db_time(at) for at in columns[2]]
        statements.append((LOG_INSERT, columns))
    totals = {write.run_id: (write.log_bytes, write.dropped_bytes) for write in logs}
    statements.append(
        (LOG_TOTALS, [list(totals), [kept for kept, _ in totals.values()], [cut for _, cut in totals.values()]])
    )
    return statements


class PostgresStore(Store):
    # Skip jobs another rescuer is taking back; never lock their flows (a heartbeat would wait).
    rescue_lock = " FOR UPDATE OF jobs SKIP LOCKED"
    slot_key_sql = "to_char({column}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00'"
    due_lock = " ORDER BY id FOR NO KEY UPDATE"

    def advance_flows(
        self, moves: Sequence[tuple[int, datetime | None, datetime | None]], enqueued: Collection[int], now: datetime
    ) -> None:
        if not moves:
            return
        ids = [flow_id for flow_id, _, _ in moves]
        nexts = [to_db_time(nxt) for _, nxt, _ in moves]
        lasts = [to_db_time(last) for _, _, last in moves]
        flags = [int(flow_id in enqueued) for flow_id in ids]
        execute(ADVANCE, [to_db_time(now), ids, nexts, lasts, flags])

    def limit_transaction(self) -> None:
        for statement, params in _limits():
            execute(statement, params)

    def in_values(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def renew(self, leases: Sequence[tuple[int, str]], now: datetime, lease_seconds: float) -> dict[int, bool]:
        ids, tokens = ([lease[0] for lease in leases], [lease[1] for lease in leases])
        renew = (
            "UPDATE dfjob.jobs SET lease_expires_at = ? FROM unnest(CAST(? AS bigint[]), CAST(? AS text[]))"
            " AS v(id, token) WHERE jobs.id = v.id AND jobs.lease_token = v.token AND jobs.status = 'running'"
            " RETURNING jobs.id, jobs.cancel_requested",
            [to_db_time(now + timedelta(seconds=lease_seconds)), ids, tokens],
        )
        return {row[0]: bool(row[1]) for row in pipeline([*_limits(), renew])[-1]}

    def database_now(self) -> datetime | None:
        value: datetime = execute("SELECT clock_timestamp()").fetchone()[0]
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def lock_flow(self, data_flow_id: int) -> None:
        # NO KEY UPDATE: the job rows' foreign keys take KEY SHARE on the flow, which it lets through.
        execute("SELECT id FROM dfjob.data_flows WHERE id = ? FOR NO KEY UPDATE", (data_flow_id,))

    def notify(self, queue: str) -> None:
        execute("SELECT pg_notify(?, ?)", (wakeup.channel(), queue))

    def wake_after_commit(self, said: str = "j") -> None:
        """NOTIFY already did it, on commit."""

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
        statements = _limits() + self._release_statements(releases) + _log_statements(logs)
        statements += [self._mark_started_statement(run_ids, stamp) for run_ids, stamp in starts if run_ids]
        finish_at = claim_at = -1
        if planned:
            finish_at = len(statements)
            columns = [list(column) for column in zip(*(row for _, row in planned), strict=True)]
            flows = [list(column) for column in zip(*self._flow_rows(planned), strict=True)]
            statements.append((FINISH, columns + flows))
        succeeded = [item.outcome.job.job_id for item, _ in planned if item.job_status == "succeeded"]
        downstream_at = -1
        if any(item.outcome.job.has_downstream for item, _ in planned if item.job_status == "succeeded"):
            downstream_at = len(statements)
            statements.append(self._downstream(succeeded, retry, request.now if request else clock.now()))
        if request is not None:
            statements += self._claim_statements(request, token)
            claim_at = len(statements) - 1
        if len(statements) == len(_limits()):
            return Turn([], [])
        results = pipeline(statements)
        changed = {row[0] for row in results[finish_at]} if finish_at >= 0 else set()
        claimed = results[claim_at] if claim_at >= 0 else []
        worker = request.worker if request is not None else ""
        downstream = [Downstream(*row[:4]) for row in results[downstream_at]] if downstream_at >= 0 else []
        return Turn(self._stale(planned, changed), [self._claimed(row, token, worker) for row in claimed], downstream)

    def _release_statements(self, jobs: Sequence[Claimed]) -> list[tuple[str, list[Any]]]:
        """See `Store.RELEASE_JOB`; other workers are woken for the jobs that went back."""
        if not jobs:
            return []
        sql = (
            "WITH v AS (SELECT * FROM unnest(CAST(? AS bigint[]), CAST(? AS text[]), CAST(? AS bigint[]))"
            "  AS v(id, token, run_id)),"
            f" j AS ({self.RELEASE_JOB} FROM v WHERE jobs.id = v.id AND jobs.lease_token = v.token"
            "  AND jobs.status = 'running' RETURNING jobs.id, jobs.queue),"
            " r AS (DELETE FROM dfjob.data_flow_runs USING v, j WHERE j.id = v.id AND data_flow_runs.id = v.run_id"
            "  AND data_flow_runs.status = 'pending')"
            " SELECT pg_notify(?, q.queue) FROM (SELECT DISTINCT queue FROM j) AS q"
        )
        params = [[job.job_id for job in jobs], [job.lease_token for job in jobs], [job.run_id for job in jobs]]
        return [(sql, [*params, wakeup.channel()])]

    def _downstream(self, succeeded: Sequence[int], retry: RetrySettings, now: datetime) -> tuple[str, list[Any]]:
        """The downstream INSERT, with the flows it enqueued stamped and their workers woken."""
        insert, params = self._downstream_statement(succeeded, retry, now)
        sql = (
            f"WITH ins AS ({insert}),"
            " f AS (UPDATE dfjob.data_flows SET last_run_at = CAST(? AS timestamp), last_run_status = 'in_progress'"
            "  FROM ins WHERE data_flows.id = ins.data_flow_id RETURNING data_flows.id, data_flows.name)"
            " SELECT ins.id, ins.data_flow_id, f.name, ins.queue, pg_notify(?, ins.queue)"
            " FROM ins JOIN f ON f.id = ins.data_flow_id ORDER BY ins.id"
        )
        return sql, [*params, to_db_time(now), wakeup.channel()]

    @staticmethod
    def _claim_statements(request: ClaimRequest, token: str) -> list[tuple[str, list[Any]]]:
        stamp = to_db_time(request.now)
        expires = to_db_time(request.now + timedelta(seconds=request.lease_seconds))
        queues, candidates = list(request.queues), claim_candidates(request.limit)
        return [
            (LOCK_LIMITS, [token, queues, stamp, candidates]),
            (CLAIM, [token, queues, stamp, candidates, request.limit, request.limit, request.worker, token, expires,
                     request.worker, stamp]),
        ]  # fmt: skip
