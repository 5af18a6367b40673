"""All job-table SQL behind one interface, with one store per database (`SqliteStore`,
`PostgresStore`); `store()` is the one for the database in use.

The contract of every state change, each one short transaction:
- `enqueue`: a new `queued` job unless the data flow already has a queued or running one; the
  partial unique index decides (INSERT … ON CONFLICT DO NOTHING), never a check-then-insert.
- `enqueue_many`: the heartbeat's jobs, inside its transaction, in as few statements as the
  database allows.
- `turn`: a worker's round trip. It marks the runs that started (`in_progress`), records the
  attempts that ended, then claims due jobs: `queued` jobs in (priority, run_at, id) order become
  `running` under a fresh lease token, each claim counts an attempt and creates its `pending` run.
- `renew`: pushes `lease_expires_at` forward for the leases a worker still holds.
- Every write about a running job is fenced by its lease token: a worker whose lease was taken
  back changes nothing, and its outcome comes back `stale`.
- `rescue_expired`: takes back `running` jobs whose lease ran out; the open run ends `failed`
  ("worker lost"), and the job follows the retry rules (`policy.decide`), counting a rescue.
- `cancel`, `retry`, `prune`: the operator's changes.
On Postgres the claim uses `FOR UPDATE SKIP LOCKED`; on SQLite every write transaction is
`BEGIN IMMEDIATE` (one writer), so the same UPDATE … RETURNING needs no row locks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import peewee

from dfjob import clock, policy, wakeup
from dfjob.config import RetrySettings
from dfjob.db import is_postgres, write_transaction
from dfjob.errors import DfjobError
from dfjob.models import from_db_time, to_db_time
from dfjob.sql import dump_json, execute, marks
from dfjob.store.rows import (
    FINISHED,
    Claimed,
    ClaimRequest,
    Enqueued,
    Finished,
    JobRequest,
    JobStatus,
    LogWrite,
    Outcome,
    Rescued,
    Retry,
    RunStatus,
    Turn,
)
from dfjob.text import storable

ERROR_MESSAGE_LIMIT = 4000
INSERT_CHUNK = 200
# A start to write: the runs handed to runners, and when.
Start = tuple[Sequence[int], datetime]


class DueFlow(NamedTuple):
    """A flow whose schedule is due, as a heartbeat sees it (locked until its transaction ends)."""

    id: int
    name: str
    queue: str
    priority: int
    max_attempts: int | None
    every_seconds: int | None
    cron: str | None
    tz: str | None
    catch_up: str
    next_run_at: datetime
    last_scheduled_for: datetime | None


def params_key(params: dict[str, Any]) -> str:
    """The key of a plain trigger: a digest of its params, so the same params deduplicate and
    different ones queue up."""
    return "params:" + hashlib.sha256(dump_json(params).encode()).hexdigest()[:24]


def job_key(*, key: str | None = None, slot: datetime | None = None, params: dict[str, Any] | None = None) -> str:
    """What makes two active jobs of a flow the same request: `--key` if given; else the slot
    (scheduled, caught-up and backfilled jobs); else a digest of the params."""
    if key is not None:
        return key
    if slot is not None:
        return clock.iso(slot) or ""
    return params_key(params or {})


def claim_candidates(limit: int) -> int:
    """How many due jobs a claim for `limit` looks at: more than it takes, since some may belong
    to a limit that is full or to a flow another claim holds."""
    return limit * 4 + 8


def add_alert(event: str, payload: dict[str, Any], now: datetime) -> None:
    """Put an alert in the outbox, inside the caller's transaction (the state change that caused it)."""
    execute(
        "INSERT INTO dfjob.alert_outbox (event, payload, created_at) VALUES (?, ?, ?)",
        (event, dump_json(payload), to_db_time(now)),
    )


def error_line(message: str) -> str:
    """An error message as stored on the job: one bounded line."""
    return message if len(message) <= ERROR_MESSAGE_LIMIT else message[: ERROR_MESSAGE_LIMIT - 1] + "…"


class Store(ABC):
    """The job table's state changes; subclasses hold what differs between databases."""

    # -- enqueue -----------------------------------------------------------------------------

    def enqueue(self, request: JobRequest, now: datetime) -> Enqueued:
        """A new queued job, or the active one of its flow with the same key (`deduplicated`)."""
        for _ in range(10):
            enqueued: Enqueued | None = None
            with write_transaction():
                # The flow row first, as a heartbeat takes it: a trigger and a heartbeat on the same
                # flow wait for each other in one order, and never deadlock.
                self.lock_flow(request.data_flow_id)
                created = self._insert_jobs([request], now)
                if created:
                    execute(
                        "UPDATE dfjob.data_flows SET last_run_at = ?, last_run_status = 'in_progress' WHERE id = ?",
                        (to_db_time(now), request.data_flow_id),
                    )
                    self.notify(request.queue)
                    enqueued = Enqueued(created[0][1], request.data_flow_id, request.queue, deduplicated=False)
                else:
                    active = self._active_job(request.data_flow_id, request.key)
                    if active:
                        return Enqueued(active[0], request.data_flow_id, active[1], deduplicated=True)
            if enqueued is not None:
                self.wake_after_commit()
                return enqueued
            # The active job finished between our INSERT and SELECT: try again.
        raise DfjobError(f"could not enqueue data flow {request.data_flow_id}: its active job keeps changing")

    def _insert_jobs(
        self, requests: Sequence[JobRequest], now: datetime, run_limit_id: int | None = None
    ) -> list[tuple[int, int]]:
        """INSERT … ON CONFLICT DO NOTHING, inside the caller's transaction: a request whose key is
        taken by an active job of its flow creates nothing. Returns (data_flow_id, job_id) created.
        Each job counts toward `run_limit_id`, else its flow's own limit (`max_running`)."""
        created: list[tuple[int, int]] = []
        stamp = to_db_time(now)
        for start in range(0, len(requests), INSERT_CHUNK):
            chunk = requests[start : start + INSERT_CHUNK]
            row = (
                "(?, ?, ?, 'queued', 0, ?, 0, ?, ?, ?, ?, ?, ?, ?,"
                " COALESCE(?, (SELECT id FROM dfjob.run_limits WHERE data_flow_id = ? AND kind = 'flow')))"
            )
            params: list[Any] = []
            for request in chunk:
                params += [
                    request.data_flow_id, request.queue, request.priority, request.max_attempts,
                    to_db_time(request.run_at) or stamp, dump_json(request.params or {}), stamp, request.key,
                    to_db_time(request.scheduled_for), str(request.triggered_by), request.upstream_job_id,
                    run_limit_id, request.data_flow_id,
                ]  # fmt: skip
            created += execute(
                "INSERT INTO dfjob.jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues,"
                " run_at, params, created_at, key, scheduled_for, triggered_by, upstream_job_id, run_limit_id)"
                f" VALUES {', '.join([row] * len(chunk))} ON CONFLICT DO NOTHING RETURNING data_flow_id, id",
                params,
            ).fetchall()
        return [(int(flow_id), int(job_id)) for flow_id, job_id in created]

    def backfill(
        self, requests: Sequence[JobRequest], parallel: int, now: datetime
    ) -> tuple[list[tuple[int, int]], int]:
        """A backfill's jobs (one per slot, all of one flow) under a run limit of their own
        (`--parallel`). A slot that already has a job waiting, running or succeeded is left
        alone, so the same backfill twice enqueues nothing twice. Returns the (flow, job) ids
        created and how many slots were left alone."""
        if not requests:
            return [], 0
        flow_id = requests[0].data_flow_id
        with write_transaction():
            self.lock_flow(flow_id)
            slots = [to_db_time(request.scheduled_for) for request in requests]
            done: set[str | None] = set()
            for start in range(0, len(slots), INSERT_CHUNK):
                where, params = self.in_values("scheduled_for", slots[start : start + INSERT_CHUNK])
                done.update(
                    to_db_time(from_db_time(row[0]))
                    for row in execute(
                        f"SELECT scheduled_for FROM dfjob.jobs WHERE data_flow_id = ? AND {where}"
                        " AND status IN ('queued', 'running', 'succeeded')",
                        [flow_id, *params],
                    ).fetchall()
                )
            todo = [request for request, slot in zip(requests, slots, strict=True) if slot not in done]
            created: list[tuple[int, int]] = []
            if todo:
                limit_id = execute(
                    "INSERT INTO dfjob.run_limits (data_flow_id, kind, max_running, created_at)"
                    " VALUES (?, 'backfill', ?, ?) RETURNING id",
                    (flow_id, parallel, to_db_time(now)),
                ).fetchone()[0]
                created = self._insert_jobs(todo, now, run_limit_id=limit_id)
            if created:
                execute(
                    "UPDATE dfjob.data_flows SET last_run_at = ?, last_run_status = 'in_progress' WHERE id = ?",
                    (to_db_time(now), flow_id),
                )
                self.notify(requests[0].queue)
        if created:
            self.wake_after_commit()
        return created, len(requests) - len(created)

    def _active_job(self, data_flow_id: int, key: str | None = None) -> tuple[int, str] | None:
        """The flow's active job (with `key`, if given): (id, queue)."""
        with_key = "" if key is None else " AND key = ?"
        row = execute(
            f"SELECT id, queue FROM dfjob.jobs WHERE data_flow_id = ? AND status IN ('queued', 'running'){with_key}"
            " ORDER BY id LIMIT 1",
            (data_flow_id,) if key is None else (data_flow_id, key),
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def active_job_id(self, data_flow_id: int) -> int | None:
        active = self._active_job(data_flow_id)
        return None if active is None else active[0]

    def enqueue_many(self, requests: Sequence[JobRequest], now: datetime) -> list[tuple[int, int]]:
        """Enqueue jobs inside the caller's write transaction (a heartbeat's); a request whose key
        an active job of its flow holds creates nothing. Returns (data_flow_id, job_id) created."""
        created = self._insert_jobs(requests, now)
        made = {job_id for _, job_id in created}
        flows = {flow_id for flow_id, _ in created}
        for queue in sorted({request.queue for request in requests if request.data_flow_id in flows}):
            self.notify(queue)
        return created if made else []

    @abstractmethod
    def lock_flow(self, data_flow_id: int) -> None:
        """Inside a transaction that enqueues for a flow: take its row's lock first."""

    @abstractmethod
    def notify(self, queue: str) -> None:
        """Inside an enqueue's transaction: wake idle workers of `queue` once it commits."""

    @abstractmethod
    def wake_after_commit(self, said: str = "j") -> None:
        """After an enqueue (or a cancel) committed: wake workers where the database cannot do it itself."""

    # -- the heartbeat's statements -------------------------------------------------------------

    # Postgres locks the due flows in id order (heartbeats then cannot deadlock); SQLite's
    # BEGIN IMMEDIATE holds the one write lock already.
    due_lock = ""

    def lock_due_flows(self, now: datetime, allowed_queues: Sequence[str] = ()) -> list[DueFlow]:
        """Inside the heartbeat's transaction: enabled flows whose `next_run_at` has come, locked
        until it ends. With `allowed_queues` (`queues.allowed`), flows left on another queue are
        not due: a trigger would refuse them too.

        Postgres: not SKIP LOCKED, since a flow row is also locked briefly by a trigger; a second
        heartbeat waits here instead, then re-checks `next_run_at <= now` on the moved row and
        leaves it alone.
        """
        where, params = "", list[Any]()
        if allowed_queues:
            condition, params = self.in_values("queue", allowed_queues)
            where = f" AND {condition}"
        rows = execute(
            "SELECT id, name, queue, priority, max_attempts, every_seconds, cron, tz, catch_up, next_run_at,"
            f" last_scheduled_for FROM dfjob.data_flows WHERE enabled AND next_run_at <= ?{where}{self.due_lock}",
            (to_db_time(now), *params),
        ).fetchall()
        return [
            DueFlow._make([*row[:9], from_db_time(row[9]) or now, from_db_time(row[10])])  # times read as UTC
            for row in rows
        ]

    def flows_with_queued_schedule_jobs(self, flow_ids: Sequence[int]) -> set[int]:
        """The flows among these whose own scheduled job is still waiting in the queue."""
        if not flow_ids:
            return set()
        where, params = self.in_values("data_flow_id", flow_ids)
        rows = execute(
            f"SELECT DISTINCT data_flow_id FROM dfjob.jobs WHERE {where} AND status = 'queued'"
            " AND triggered_by = 'schedule'",
            params,
        ).fetchall()
        return {row[0] for row in rows}

    @abstractmethod
    def advance_flows(
        self, moves: Sequence[tuple[int, datetime | None, datetime | None]], enqueued: Collection[int], now: datetime
    ) -> None:
        """Inside the heartbeat's transaction: each flow's (id, next_run_at, last_scheduled_for);
        those that got a job are stamped as a trigger stamps them."""

    # -- a worker's turn -----------------------------------------------------------------------

    @abstractmethod
    def turn(
        self,
        outcomes: Sequence[Outcome],
        starts: Sequence[Start],
        request: ClaimRequest | None,
        retry: RetrySettings,
        logs: Sequence[LogWrite] = (),
        releases: Sequence[Claimed] = (),
    ) -> Turn:
        """Write what attempts printed, mark the runs that started, record the attempts that
        ended, hand back claimed jobs that never started (`releases`), then claim more jobs, in
        one round trip (Postgres) or one transaction (SQLite).

        A run's start is written before its end, so a run that started and ended between two
        turns still gets its `started_at`.
        """

    # Handing back a claimed job that never started, fenced by its lease: queued again, its
    # attempt given back, its pending run gone, as if it had never been claimed.
    RELEASE_JOB = (
        "UPDATE dfjob.jobs SET status = 'queued', attempts = attempts - 1, locked_by = NULL, lease_token = NULL,"
        " lease_expires_at = NULL"
    )

    def _plan(self, outcome: Outcome, retry: RetrySettings) -> tuple[Finished, tuple[Any, ...]]:
        """What an outcome does to its job (`policy.decide`), and the row the finish writes for it."""
        job = outcome.job
        decision = policy.decide(
            succeeded=outcome.status == RunStatus.SUCCESS,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            retry=outcome.retry,
            ended_at=outcome.ended_at,
            settings=retry,
        )
        ended = to_db_time(outcome.ended_at)
        duration_ms = max(0, int((outcome.ended_at - outcome.started_at).total_seconds() * 1000))
        # Runners send storable text already; what a worker writes must be storable whatever sent it.
        error = storable(error_line(outcome.error_message)) if outcome.error_message else None
        backtrace = storable(outcome.error_backtrace) if outcome.error_backtrace else None
        finished_at = None if decision.will_retry else ended
        finished = Finished(outcome, decision.job_status, decision.will_retry, duration_ms, decision.retry_at)
        # A job that failed for good raises the `job.failed` alert, written with the outcome.
        alert = dump_json(finished.event_fields()) if decision.job_status == JobStatus.FAILED else None
        row = (
            job.job_id, job.lease_token, job.run_id, job.data_flow_id, str(decision.job_status),
            to_db_time(decision.retry_at), finished_at, error, str(outcome.status), to_db_time(outcome.started_at),
            ended, duration_ms, None if outcome.result is None else dump_json(outcome.result), error, backtrace,
            outcome.cpu_seconds, outcome.max_rss_kb, alert,
        )  # fmt: skip
        return finished, row

    # The stored form of a slot, turned into the slot's key (`job_key`): dialects store times differently.
    slot_key_sql = ""

    def _downstream_statement(
        self, succeeded: Sequence[int], retry: RetrySettings, now: datetime
    ) -> tuple[str, list[Any]]:
        """INSERT … SELECT of the jobs these successes make due (`after`): for every enabled flow
        that runs after one of their flows, once each of its upstreams has succeeded for the same
        slot (slotless: since the downstream last ran). Keyed like any job, so a slot is enqueued
        once. Runs in the turn's transaction, after the outcomes are written."""
        where, ids = self.in_values("j.id", succeeded)
        stamp = to_db_time(now)
        sql = (
            "INSERT INTO dfjob.jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues, run_at,"
            " params, created_at, key, scheduled_for, triggered_by, upstream_job_id, run_limit_id)"
            " SELECT d.id, d.queue, d.priority, 'queued', 0, COALESCE(d.max_attempts, ?), 0, ?, '{}', ?,"
            f" CASE WHEN j.scheduled_for IS NULL THEN ? ELSE {self.slot_key_sql.format(column='j.scheduled_for')} END,"
            " j.scheduled_for, 'upstream', j.id,"
            " (SELECT l.id FROM dfjob.run_limits l WHERE l.data_flow_id = d.id AND l.kind = 'flow')"
            " FROM dfjob.jobs j JOIN dfjob.flow_upstreams e ON e.upstream_id = j.data_flow_id"
            " JOIN dfjob.data_flows d ON d.id = e.data_flow_id"
            f" WHERE {where} AND j.status = 'succeeded' AND d.enabled AND NOT EXISTS ("
            "  SELECT 1 FROM dfjob.flow_upstreams u WHERE u.data_flow_id = d.id AND NOT EXISTS ("
            "   SELECT 1 FROM dfjob.jobs s WHERE s.data_flow_id = u.upstream_id AND s.status = 'succeeded' AND ("
            "    (j.scheduled_for IS NOT NULL AND s.scheduled_for = j.scheduled_for)"
            "    OR (j.scheduled_for IS NULL AND s.finished_at > COALESCE(d.last_run_at, ?)))))"
            " ORDER BY j.id ON CONFLICT DO NOTHING RETURNING id, data_flow_id, queue"
        )
        params = [retry.max_attempts, stamp, stamp, params_key({}), *ids, "1970-01-01 00:00:00.000000"]
        return sql, params

    @staticmethod
    def _flow_rows(planned: Sequence[tuple[Finished, Any]]) -> list[tuple[Any, ...]]:
        """Per flow, what a batch of outcomes does to it: (flow id, last run status, 1 if its
        failure streak starts over, failures to add, last success). The streak counts the
        failures in a row up to the latest run."""
        flows: dict[int, list[Outcome]] = {}
        for item, _ in planned:
            flows.setdefault(item.outcome.job.data_flow_id, []).append(item.outcome)
        rows = []
        for flow_id, outcomes in flows.items():
            outcomes.sort(key=lambda outcome: outcome.ended_at)
            successes = [index for index, outcome in enumerate(outcomes) if outcome.status == RunStatus.SUCCESS]
            after = outcomes[successes[-1] + 1 :] if successes else outcomes
            last_success = to_db_time(outcomes[successes[-1]].ended_at) if successes else None
            rows.append((flow_id, str(outcomes[-1].status), int(bool(successes)), len(after), last_success))
        return rows

    @staticmethod
    def _stale(planned: Sequence[tuple[Finished, Any]], changed: set[int]) -> list[Finished]:
        """The finished attempts, those whose lease had been taken back marked `stale`."""
        return [item if item.outcome.job.job_id in changed else item._replace(stale=True) for item, _ in planned]

    @staticmethod
    def _claimed(row: Sequence[Any], token: str, worker: str) -> Claimed:
        job_id, flow_id, queue, attempts, max_attempts, params, name, class_path, configuration, timeout, run_id = row[
            :11
        ]
        scheduled_for, triggered_by, has_downstream = row[11:14]
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
            scheduled_for=from_db_time(scheduled_for),
            triggered_by=triggered_by,
            has_downstream=bool(has_downstream),
        )

    @staticmethod
    def new_token() -> str:
        return uuid.uuid4().hex

    @abstractmethod
    def limit_transaction(self) -> None:
        """At the start of a transaction: apply the process's statement limit, if any."""

    @abstractmethod
    def in_values(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """`column IN (…)` and its parameters."""

    def _mark_started_statement(self, run_ids: Sequence[int], stamp: datetime) -> tuple[str, list[Any]]:
        where, params = self.in_values("id", run_ids)
        return (
            f"UPDATE dfjob.data_flow_runs SET status = 'in_progress', started_at = ? WHERE {where}"
            " AND status = 'pending'",
            [to_db_time(stamp), *params],
        )

    # -- leases --------------------------------------------------------------------------------

    @abstractmethod
    def renew(self, leases: Sequence[tuple[int, str]], now: datetime, lease_seconds: float) -> dict[int, bool]:
        """Extend the leases (job id, lease token) that are still what they were: returns the job
        ids renewed, each with whether an operator asked it to stop. A lease taken back, or taken
        back and claimed again, is not renewed."""

    def release_lost_claims(self, worker: str, keep_tokens: Sequence[str]) -> set[int]:
        """Put back jobs claimed in `worker`'s name whose lease token it does not know: a round
        trip that claimed them committed, but its answer never reached the worker. They go back
        to `queued` with the attempt they never started returned, and their pending runs go."""
        where, params = self.in_values("lease_token", keep_tokens)
        lost = f"locked_by = ? AND status = 'running' AND NOT ({where})"
        with write_transaction():
            self.limit_transaction()
            execute(
                f"DELETE FROM dfjob.data_flow_runs WHERE status = 'pending' AND job_id IN"
                f" (SELECT id FROM dfjob.jobs WHERE {lost})",
                [worker, *params],
            )
            rows = execute(
                "UPDATE dfjob.jobs SET status = 'queued', attempts = attempts - 1, locked_by = NULL,"
                f" lease_token = NULL, lease_expires_at = NULL WHERE {lost} RETURNING id",
                [worker, *params],
            ).fetchall()
        return {row[0] for row in rows}

    # Postgres locks the expired job rows it takes back, skipping those another rescuer holds.
    rescue_lock = ""

    def rescue_expired(self, now: datetime, retry: RetrySettings, limit: int = 100) -> list[Rescued]:
        """Take back running jobs whose lease ran out: the lost attempt fails, the job retries or fails."""
        stamp = to_db_time(now)
        # Usually nothing has expired: find that out with a read, not a write lock (BEGIN IMMEDIATE).
        expired = "SELECT 1 FROM dfjob.jobs WHERE status = 'running' AND lease_expires_at < ? LIMIT 1"
        if not execute(expired, (stamp,)).fetchone():
            return []
        rescued = []
        with write_transaction():
            self.limit_transaction()
            # Only the job rows are locked: a flow row locked here would make a heartbeat wait.
            rows = execute(
                "SELECT jobs.id, jobs.data_flow_id, jobs.attempts, jobs.max_attempts, jobs.locked_by, data_flows.name,"
                " jobs.cancel_requested"
                " FROM dfjob.jobs JOIN dfjob.data_flows ON data_flows.id = jobs.data_flow_id"
                " WHERE jobs.status = 'running' AND jobs.lease_expires_at < ?"
                f" ORDER BY jobs.id LIMIT ?{self.rescue_lock}",
                (stamp, limit),
            ).fetchall()
            for row in rows:
                rescued.append(self._rescue_one(now, retry, *row))
        return rescued

    def _rescue_one(
        self,
        now: datetime,
        retry: RetrySettings,
        job_id: int,
        flow_id: int,
        attempts: int,
        max_attempts: int,
        locked_by: str | None,
        flow_name: str,
        cancel_requested: bool,
    ) -> Rescued:
        """Inside the rescue's transaction: end one lost attempt and move its job on."""
        stamp = to_db_time(now)
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
            started = from_db_time(run[1]) or from_db_time(run[2]) or now
            duration_ms = max(0, int((now - started).total_seconds() * 1000))
            execute(
                "UPDATE dfjob.data_flow_runs SET status = 'failed', ended_at = ?, duration_ms = ?, error_message = ?"
                " WHERE job_id = ? AND status IN ('pending', 'in_progress')",
                (stamp, duration_ms, message, job_id),
            )
        decision = policy.decide(
            succeeded=False,
            attempt=attempts,
            max_attempts=max_attempts,
            retry=Retry.CANCEL if cancel_requested else Retry.NORMAL,
            ended_at=now,
            settings=retry,
        )
        release = "locked_by = NULL, lease_token = NULL, lease_expires_at = NULL, rescues = rescues + 1"
        finished_at = None if decision.will_retry else stamp
        execute(
            "UPDATE dfjob.jobs SET status = ?, run_at = COALESCE(?, run_at), finished_at = ?, last_error = ?,"
            f" {release} WHERE id = ?",
            (str(decision.job_status), to_db_time(decision.retry_at), finished_at, message, job_id),
        )
        execute(
            "UPDATE dfjob.data_flows SET last_run_status = 'failed', failure_streak = failure_streak + 1 WHERE id = ?",
            (flow_id,),
        )
        if decision.job_status == JobStatus.FAILED:
            queue = execute("SELECT queue FROM dfjob.jobs WHERE id = ?", (job_id,)).fetchone()[0]
            alert = {
                "job_id": job_id, "run_id": run_id, "data_flow_id": flow_id, "data_flow_name": flow_name,
                "queue": queue, "attempt": attempts, "status": "failed", "error": message, "will_retry": False,
                "job_status": "failed", "lost_worker": lost,
            }  # fmt: skip
            add_alert("job.failed", alert, now)
        return Rescued(job_id, run_id, flow_id, flow_name, lost, decision.job_status, decision.will_retry)

    def set_flow_limit(self, data_flow_id: int, max_running: int, now: datetime) -> None:
        """A flow's own run limit (`max_running`), made or changed, inside the caller's transaction."""
        execute(
            "INSERT INTO dfjob.run_limits (data_flow_id, kind, max_running, created_at) VALUES (?, 'flow', ?, ?)"
            " ON CONFLICT (data_flow_id) WHERE kind = 'flow' DO UPDATE SET max_running = excluded.max_running",
            (data_flow_id, max_running, to_db_time(now)),
        )

    # -- worker records --------------------------------------------------------------------------

    def register_worker(
        self,
        name: str,
        host: str,
        pid: int,
        queues: Sequence[str],
        concurrency: int,
        lease_seconds: float,
        now: datetime,
    ) -> None:
        """A worker says it is there."""
        from dfjob import __version__

        stamp = to_db_time(now)
        execute(
            "INSERT INTO dfjob.workers (name, host, pid, queues, concurrency, version, lease_seconds, started_at,"
            " last_seen_at, running_job_ids) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '[]')",
            (name, host, pid, dump_json(list(queues)), concurrency, __version__, lease_seconds, stamp, stamp),
        )

    def worker_seen(self, name: str, now: datetime, running_job_ids: Sequence[int]) -> None:
        """A worker is alive, running these jobs (with its lease renewals)."""
        execute(
            "UPDATE dfjob.workers SET last_seen_at = ?, running_job_ids = ? WHERE name = ?",
            (to_db_time(now), dump_json(sorted(running_job_ids)), name),
        )

    def worker_stopped(self, name: str, now: datetime) -> None:
        execute(
            "UPDATE dfjob.workers SET stopped_at = ?, last_seen_at = ?, running_job_ids = '[]' WHERE name = ?",
            (to_db_time(now), to_db_time(now), name),
        )

    def database_now(self) -> datetime | None:
        """The database server's clock, where it is not this host's (Postgres); else None."""
        return None

    # -- the operator's changes ----------------------------------------------------------------

    def cancel(self, job_id: int, now: datetime) -> str:
        """A queued job becomes `cancelled`; a running one is asked to stop (`cancel_requested`):
        its worker stops the attempt and writes it so, and is woken to do it at once. Returns the
        job's status afterwards; a job that has ended is refused."""
        with write_transaction():
            row = execute("SELECT status, data_flow_id FROM dfjob.jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise DfjobError(f"no job with id {job_id}")
            running = row[0] == JobStatus.RUNNING
            if running:
                execute("UPDATE dfjob.jobs SET cancel_requested = TRUE WHERE id = ? AND status = 'running'", (job_id,))
                self.notify(wakeup.CANCEL)
            elif row[0] == JobStatus.QUEUED:
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
            else:
                raise DfjobError(f"job {job_id} is {row[0]}; only a queued or running job can be cancelled")
        if running:
            self.wake_after_commit(wakeup.CANCEL)  # its worker, if on this host (SQLite)
            return JobStatus.RUNNING
        return JobStatus.CANCELLED

    def set_paused(self, queue: str, paused: bool, now: datetime) -> None:
        """Pause a queue (its jobs stay queued, unclaimed) or resume it (workers are woken)."""
        with write_transaction():
            execute(
                "INSERT INTO dfjob.queue_states (name, paused, changed_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, changed_at = excluded.changed_at",
                (queue, paused, to_db_time(now)),
            )
            if not paused:
                self.notify(queue)
        if not paused:
            self.wake_after_commit()

    def cancel_requested(self, job_ids: Sequence[int]) -> set[int]:
        """The jobs among these an operator asked to stop."""
        if not job_ids:
            return set()
        where, params = self.in_values("id", job_ids)
        rows = execute(f"SELECT id FROM dfjob.jobs WHERE {where} AND cancel_requested", params).fetchall()
        return {row[0] for row in rows}

    def retry(self, job_id: int, now: datetime) -> Enqueued:
        """A failed or cancelled job goes back to `queued`, to run now, with fresh attempts."""
        with write_transaction():
            row = execute("SELECT status, data_flow_id, queue FROM dfjob.jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise DfjobError(f"no job with id {job_id}")
            if row[0] not in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise DfjobError(f"job {job_id} is {row[0]}; only a failed or cancelled job can be retried")
            active = self.active_job_id(row[1])
            if active is not None:
                raise DfjobError(f"job {job_id}: its data flow already has an active job {active}")
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
                "UPDATE dfjob.data_flows SET last_run_at = ?, last_run_status = 'in_progress' WHERE id = ?",
                (stamp, row[1]),
            )
            self.notify(row[2])
        self.wake_after_commit()
        return Enqueued(job_id, row[1], row[2], deduplicated=False)

    def prune(self, older_than: datetime, statuses: Sequence[str] = FINISHED, batch: int = 1000) -> tuple[int, int]:
        """Delete finished jobs (and their runs) that finished before `older_than`, in batches of
        `batch` jobs, each its own short transaction. Returns (jobs, runs) deleted."""
        check_finished_statuses(statuses)
        jobs_deleted = runs_deleted = 0
        while True:
            with write_transaction():
                ids = [
                    row[0]
                    for row in execute(
                        f"SELECT id FROM dfjob.jobs WHERE finished_at < ? AND status IN ({marks(len(statuses))})"
                        " LIMIT ?",
                        (to_db_time(older_than), *statuses, batch),
                    ).fetchall()
                ]
                if not ids:
                    # Records of workers long gone go with the history they left, and alerts
                    # too, once they are past their day of retries.
                    stamp = to_db_time(older_than)
                    execute(
                        "DELETE FROM dfjob.workers WHERE (stopped_at IS NOT NULL AND stopped_at < ?)"
                        " OR last_seen_at < ?",
                        (stamp, stamp),
                    )
                    alerts_before = min(older_than, clock.now() - ALERTS_KEPT)
                    execute("DELETE FROM dfjob.alert_outbox WHERE created_at < ?", (to_db_time(alerts_before),))
                    return jobs_deleted, runs_deleted
                where, params = self.in_values("job_id", ids)
                # The runs' totals outlive them (`dfjob_runs_total` never goes down).
                execute(
                    "INSERT INTO dfjob.pruned_run_totals (data_flow_id, status, runs)"
                    f" SELECT data_flow_id, status, COUNT(*) FROM dfjob.data_flow_runs WHERE {where}"
                    " AND status IN ('success', 'failed') GROUP BY data_flow_id, status"
                    " ON CONFLICT (data_flow_id, status) DO UPDATE SET runs = pruned_run_totals.runs + excluded.runs",
                    params,
                )
                runs_deleted += execute(f"DELETE FROM dfjob.data_flow_runs WHERE {where}", params).rowcount
                where, params = self.in_values("id", ids)
                jobs_deleted += execute(f"DELETE FROM dfjob.jobs WHERE {where}", params).rowcount


# Alert events stay this long at least: a day of delivery retries, and a margin.
ALERTS_KEPT = timedelta(days=2)


def check_finished_statuses(statuses: Sequence[str]) -> None:
    """Only jobs that ended can be pruned."""
    unknown = sorted(set(statuses) - set(FINISHED))
    if unknown or not statuses:
        raise DfjobError(f"prune takes finished statuses only ({', '.join(FINISHED)}), not {unknown[:1] or 'none'}")


@functools.cache
def _instance(postgres: bool) -> Store:
    # The subclasses import this module: they are imported on first use.
    from dfjob.store.postgres import PostgresStore
    from dfjob.store.sqlite import SqliteStore

    return PostgresStore() if postgres else SqliteStore()


def store() -> Store:
    """The store of the database in use."""
    return _instance(is_postgres())
