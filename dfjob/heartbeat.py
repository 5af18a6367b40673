"""The heartbeat: one pass that enqueues every enabled data flow whose schedule is due.

Safe from any number of processes at once: the due flows are locked (Postgres: `FOR NO KEY
UPDATE` in id order, so heartbeats cannot deadlock, and a trigger takes a flow's row first too;
SQLite: one `BEGIN IMMEDIATE` transaction), and a flow's `next_run_at` moves on in the same
transaction that enqueues its jobs, so a second heartbeat no longer sees it as due. Each job is
keyed by its slot, so the job-key index backs this up.

- A flow whose own scheduled job (`triggered_by = schedule`) is still queued is skipped; triggered,
  backfilled and upstream jobs never block it, and a running job does not either.
- After downtime, a flow enqueues only the latest slot it missed (`catch_up = "skip"`), or every
  missed slot, oldest first, at most `CATCH_UP_LIMIT` a pass (`catch_up = "all"`); slots passed over
  while it was skipped are caught up once it is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dfjob import clock, events, state
from dfjob.config import Settings
from dfjob.db import write_transaction
from dfjob.leases import take_back_expired
from dfjob.schedule import Schedule
from dfjob.store import DueFlow, job_key, store
from dfjob.store.rows import JobRequest, TriggeredBy

CATCH_UP_LIMIT = 100


@dataclass(frozen=True)
class HeartbeatResult:
    due: int
    enqueued: int
    skipped: int


@dataclass(frozen=True)
class Plan:
    """What a pass does for one due flow: the slots it enqueues and where its schedule moves."""

    flow: DueFlow
    slots: list[datetime]
    next_run_at: datetime | None
    last_scheduled_for: datetime | None
    skipped: bool = False


def plan(flow: DueFlow, now: datetime, waiting: bool) -> Plan:
    """The slots a due flow gets now (`waiting`: its own scheduled job is still queued)."""
    schedule = Schedule(every_seconds=flow.every_seconds, cron=flow.cron, tz=flow.tz)
    due = flow.next_run_at
    if waiting:
        if flow.catch_up == "all":
            # It stays due: the slots it passes over now are caught up once its queued job is not.
            return Plan(flow, [], due, flow.last_scheduled_for, skipped=True)
        return Plan(flow, [], schedule.next_after(now, previous=due), flow.last_scheduled_for, skipped=True)
    if flow.catch_up == "all":
        last = flow.last_scheduled_for
        first = schedule.next_after(last, previous=last) if last is not None else due
        slots = schedule.slots(first, now, CATCH_UP_LIMIT) if first is not None else []
    else:
        latest = schedule.latest_slot(due, now)
        slots = [latest] if latest is not None else []
    if not slots:
        return Plan(flow, [], schedule.next_after(now, previous=due), flow.last_scheduled_for)
    following = schedule.next_after(slots[-1], previous=slots[-1])
    # More missed slots than one pass takes: the flow stays due, and the next pass goes on.
    next_run_at = following if following is not None and following <= now else schedule.next_after(now, slots[-1])
    return Plan(flow, slots, next_run_at, slots[-1])


def heartbeat(settings: Settings, now: datetime | None = None, housekeeping: bool = True) -> HeartbeatResult:
    """Enqueue every due flow's slots, move each one's `next_run_at` on, take back lost jobs; then
    (`housekeeping`) prune once a day and raise and deliver alerts (see `housekeeping`)."""
    now = now or clock.now()
    take_back_expired(now, settings.retry)
    with write_transaction():
        due = store().lock_due_flows(now, settings.queues.allowed)
        waiting = store().flows_with_queued_schedule_jobs([flow.id for flow in due])
        plans = [plan(flow, now, flow.id in waiting) for flow in due]
        requests = [
            JobRequest(
                data_flow_id=item.flow.id,
                queue=item.flow.queue,
                priority=item.flow.priority,
                max_attempts=item.flow.max_attempts or settings.retry.max_attempts,
                key=job_key(slot=slot),
                scheduled_for=slot,
                triggered_by=TriggeredBy.SCHEDULE,
            )
            for item in plans
            for slot in item.slots
        ]
        created = store().enqueue_many(requests, now)
        enqueued_flows = {flow_id for flow_id, _ in created}
        store().advance_flows(
            [(item.flow.id, item.next_run_at, item.last_scheduled_for) for item in plans], enqueued_flows, now
        )
        state.put(state.LAST_HEARTBEAT, None, now)
    if created:
        store().wake_after_commit()
    flows = {item.flow.id: item.flow for item in plans}
    for flow_id, job_id in created:
        flow = flows[flow_id]
        events.emit(
            events.JOB_ENQUEUED, job_id=job_id, data_flow_id=flow_id, data_flow_name=flow.name, queue=flow.queue
        )
    result = HeartbeatResult(due=len(due), enqueued=len(created), skipped=sum(item.skipped for item in plans))
    events.emit(events.HEARTBEAT_FINISHED, due=result.due, enqueued=result.enqueued, skipped=result.skipped)
    if housekeeping:
        from dfjob import housekeeping as chores  # imports the HTTP client: only where alerts are sent

        chores.run(settings, now)
    return result
