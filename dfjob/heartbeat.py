"""The heartbeat: one pass that enqueues every enabled data flow whose schedule is due.

Safe to run from any number of processes at once: on Postgres the due flows are locked with
`FOR NO KEY UPDATE` (in id order, so heartbeats cannot deadlock; a trigger takes the flow's row
first too), on SQLite the pass is one
`BEGIN IMMEDIATE` transaction; either way a flow's `next_run_at` moves forward in the same
transaction that enqueues its job, so a second heartbeat no longer sees it as due.
The one-active-job index backs this up.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dfjob import clock, events
from dfjob.config import Settings
from dfjob.db import is_postgres, write_transaction
from dfjob.leases import take_back_expired
from dfjob.models import from_db_time, to_db_time
from dfjob.schedule import Schedule
from dfjob.sql import execute, in_values
from dfjob.store import store


@dataclass(frozen=True)
class HeartbeatResult:
    due: int
    enqueued: int
    skipped: int


def heartbeat(settings: Settings, now: datetime | None = None) -> HeartbeatResult:
    """Enqueue every due flow once, move each one's `next_run_at` past now, take back lost jobs."""
    now = now or clock.now()
    take_back_expired(now, settings.retry)
    with write_transaction():
        due = lock_due_flows(now, settings.queues.allowed)
        next_times = _next_times(due, now)
        created = store().enqueue_many(
            [(flow_id, flow_queue, priority, max_attempts or settings.retry.max_attempts)
             for flow_id, _, flow_queue, priority, max_attempts, _, _, _ in due],
            now,
        )  # fmt: skip
        advance_flows(next_times, created, now)
    if created:
        store().wake_after_commit()
    for flow_id, name, flow_queue, *_ in due:
        if flow_id in created:
            events.emit(
                events.JOB_ENQUEUED,
                job_id=created[flow_id],
                data_flow_id=flow_id,
                data_flow_name=name,
                queue=flow_queue,
            )
    result = HeartbeatResult(due=len(due), enqueued=len(created), skipped=len(due) - len(created))
    events.emit(events.HEARTBEAT_FINISHED, due=result.due, enqueued=result.enqueued, skipped=result.skipped)
    return result


def _next_times(due: list[DueFlow], now: datetime) -> list[tuple[int, datetime | None]]:
    """Each due flow's next fire time after now; flows on the same schedule share one computation."""
    computed: dict[tuple[int | None, str | None, datetime | None], datetime | None] = {}
    times = []
    for flow_id, _, _, _, _, every_seconds, cron, next_run_at in due:
        # An interval keeps its cadence from the slot just served; a cron time depends on now only.
        key = (every_seconds, cron, next_run_at if every_seconds is not None else None)
        if key not in computed:
            computed[key] = Schedule(every_seconds=every_seconds, cron=cron).next_after(now, previous=next_run_at)
        times.append((flow_id, computed[key]))
    return times


DueFlow = tuple[int, str, str, int, "int | None", "int | None", "str | None", datetime]


def lock_due_flows(now: datetime, allowed_queues: Sequence[str] = ()) -> list[DueFlow]:
    """Enabled flows whose `next_run_at` has come, locked until the caller's transaction ends:
    (id, name, queue, priority, max_attempts, every_seconds, cron, next_run_at). With
    `allowed_queues` (`queues.allowed`), flows left on another queue are not due: a trigger would
    refuse them too.

    Postgres: plain `FOR NO KEY UPDATE` in id order, not SKIP LOCKED: a flow row is also locked briefly
    when its job finishes, and a skipped flow would wait a whole heartbeat. A second heartbeat
    waits here instead, then re-checks `next_run_at <= now` on the moved row and leaves it alone.
    """
    lock = " ORDER BY id FOR NO KEY UPDATE" if is_postgres() else ""
    where = ""
    params: list[Any] = []
    if allowed_queues:
        condition, params = in_values("queue", allowed_queues)
        where = f" AND {condition}"
    rows = execute(
        "SELECT id, name, queue, priority, max_attempts, every_seconds, cron, next_run_at FROM dfjob.data_flows"
        f" WHERE enabled AND next_run_at <= ?{where}{lock}",
        (to_db_time(now), *params),
    ).fetchall()
    return [(*row[:7], from_db_time(row[7])) for row in rows]


def advance_flows(next_times: Sequence[tuple[int, datetime | None]], enqueued: Collection[int], now: datetime) -> None:
    """Move each flow's `next_run_at`; those that got a job are stamped like a trigger stamps them."""
    if not next_times:
        return
    stamp = to_db_time(now)
    setter = (
        "SET next_run_at = v.next_run_at,"
        " last_run_at = CASE WHEN v.enqueued = 1 THEN ? ELSE data_flows.last_run_at END,"
        " last_run_status = CASE WHEN v.enqueued = 1 THEN 'in_progress' ELSE data_flows.last_run_status END"
    )
    rows = [(flow_id, to_db_time(next_run_at), int(flow_id in enqueued)) for flow_id, next_run_at in next_times]
    if is_postgres():
        ids, nexts, flags = (list(column) for column in zip(*rows, strict=True))
        execute(
            f"UPDATE dfjob.data_flows {setter.replace('?', 'CAST(? AS timestamp)')}"
            " FROM unnest(CAST(? AS bigint[]), CAST(? AS timestamp[]), CAST(? AS integer[]))"
            " AS v(id, next_run_at, enqueued) WHERE data_flows.id = v.id",
            [stamp, ids, nexts, flags],
        )
        return
    for start in range(0, len(rows), 300):
        chunk = rows[start : start + 300]
        values = ", ".join("(?, ?, ?)" for _ in chunk)
        execute(
            f"WITH v(id, next_run_at, enqueued) AS (VALUES {values})"
            f" UPDATE dfjob.data_flows {setter} FROM v WHERE data_flows.id = v.id",
            [*(value for row in chunk for value in row), stamp],
        )
