"""The heartbeat: one pass that enqueues every enabled data flow whose schedule is due.

Safe to run from any number of processes at once: on Postgres the due flows are locked with
`FOR UPDATE` (in id order, so heartbeats cannot deadlock), on SQLite the pass is one
`BEGIN IMMEDIATE` transaction; either way a flow's `next_run_at` moves forward in the same
transaction that enqueues its job, so a second heartbeat no longer sees it as due.
The one-active-job index backs this up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dfjob import clock, events, queue
from dfjob.config import Settings
from dfjob.db import write_transaction
from dfjob.rescue import take_back_expired
from dfjob.schedule import Schedule


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
        due = queue.lock_due_flows(now, settings.queues.allowed)
        next_times = _next_times(due, now)
        created = queue.enqueue_many(
            [(flow_id, flow_queue, priority, max_attempts or settings.retry.max_attempts)
             for flow_id, _, flow_queue, priority, max_attempts, _, _, _ in due],
            now,
        )  # fmt: skip
        queue.advance_flows(next_times, created, now)
    if created:
        queue.wake_after_commit()
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


def _next_times(due: list[queue.DueFlow], now: datetime) -> list[tuple[int, datetime | None]]:
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
