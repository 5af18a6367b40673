"""The heartbeat: one pass that enqueues every enabled data flow whose schedule is due.

Safe to run from any number of processes at once: on Postgres the due flows are locked with
`FOR UPDATE` (in id order, so heartbeats cannot deadlock), on SQLite the pass is one
`BEGIN IMMEDIATE` transaction; either way a flow's `next_run_at` moves forward in the same
transaction that enqueues its job, so a second heartbeat no longer sees it as due.
The one-active-job index backs this up.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from dfjob import clock, events, queue
from dfjob.config import Settings
from dfjob.db import is_postgres, write_transaction
from dfjob.models import DataFlow
from dfjob.schedule import Schedule


@dataclass(frozen=True)
class HeartbeatResult:
    due: int
    enqueued: int
    skipped: int


def heartbeat(settings: Settings, now: datetime | None = None) -> HeartbeatResult:
    """Enqueue every due flow once, move each one's `next_run_at` past now, take back lost jobs."""
    now = now or clock.now()
    for rescued in queue.rescue_expired(now, settings.retry):
        events.emit(
            events.JOB_RESCUED,
            job_id=rescued.job_id,
            run_id=rescued.run_id,
            data_flow_id=rescued.data_flow_id,
            data_flow_name=rescued.data_flow_name,
            lost_worker=rescued.lost_worker,
            will_retry=rescued.will_retry,
        )
    with write_transaction():
        query = DataFlow.select(
            DataFlow.id,
            DataFlow.name,
            DataFlow.queue,
            DataFlow.priority,
            DataFlow.max_attempts,
            DataFlow.every_seconds,
            DataFlow.cron,
            DataFlow.next_run_at,
        ).where(DataFlow.enabled == True, DataFlow.next_run_at <= now)  # noqa: E712 (SQL, not Python)
        if is_postgres():
            # Not SKIP LOCKED: a flow row is also locked briefly when its job finishes, and a
            # skipped flow would wait a whole heartbeat. A second heartbeat waits here instead,
            # then re-checks `next_run_at <= now` on the moved row and leaves it alone.
            query = query.order_by(DataFlow.id).for_update()
        due = list(query)
        next_times: dict[datetime | None, list[int]] = defaultdict(list)
        for flow in due:
            schedule = Schedule(every_seconds=flow.every_seconds, cron=flow.cron)
            next_times[schedule.next_after(now, previous=flow.next_run_at)].append(flow.id)
        for next_run_at, ids in next_times.items():
            for start in range(0, len(ids), 500):
                DataFlow.update(next_run_at=next_run_at).where(DataFlow.id.in_(ids[start : start + 500])).execute()
        created = queue.enqueue_many(
            [(f.id, f.queue, f.priority, f.max_attempts or settings.retry.max_attempts) for f in due], now
        )
    if created:
        queue.wake_after_commit()
    for flow in due:
        if flow.id in created:
            events.emit(
                events.JOB_ENQUEUED,
                job_id=created[flow.id],
                data_flow_id=flow.id,
                data_flow_name=flow.name,
                queue=flow.queue,
            )
    result = HeartbeatResult(due=len(due), enqueued=len(created), skipped=len(due) - len(created))
    events.emit(events.HEARTBEAT_FINISHED, due=result.due, enqueued=result.enqueued, skipped=result.skipped)
    return result
