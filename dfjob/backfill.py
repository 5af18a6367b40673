"""`dfjob backfill`: one job per slot of a range, oldest first, each with its `scheduled_for`.

The slots are the flow's schedule (or the `--every`/`--cron` given) in [from, to). Each job is
keyed by its slot, and a slot that already has a job waiting, running or succeeded is left alone,
so running the same backfill again enqueues nothing twice. The jobs of one backfill run at most
`--parallel` at once, counted apart from the flow's own `max_running`, so the flow's schedule
keeps running beside them. Works on a disabled flow, as `trigger` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from dfjob import clock, events
from dfjob.config import Settings
from dfjob.errors import DfjobError
from dfjob.models import DataFlow
from dfjob.registry import check_max_running, schedule_of
from dfjob.schedule import Schedule, parse_duration
from dfjob.store import job_key, store
from dfjob.store.rows import JobRequest, TriggeredBy

MAX_SLOTS = 10_000
EPSILON = timedelta(microseconds=1)


@dataclass(frozen=True)
class BackfillResult:
    slots: int
    enqueued: int
    deduplicated: int


def slots_of(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """The fire times of `schedule` in [start, end): an interval counts from `start`."""
    if end <= start:
        raise DfjobError("--to must be after --from")
    # A cron slot at `start` itself belongs to the range.
    first = start if schedule.every_seconds is not None else schedule.next_after(start - EPSILON, previous=None)
    if first is None:
        return []
    found = schedule.slots(first, end, MAX_SLOTS + 1)
    found = [slot for slot in found if slot < end]
    if len(found) > MAX_SLOTS:
        raise DfjobError(f"the range holds more than {MAX_SLOTS:,} slots: backfill it in parts")
    return found


def backfill(
    settings: Settings,
    flow: DataFlow,
    start: datetime,
    end: datetime,
    every: str | None = None,
    cron: str | None = None,
    parallel: int = 1,
) -> BackfillResult:
    """Enqueue the slots of [start, end) for `flow` (see the module docstring)."""
    if every is not None and cron is not None:
        raise DfjobError("give --every or --cron, not both")
    check_max_running(parallel, "--parallel")
    if every is not None:
        schedule = Schedule(every_seconds=parse_duration(every))
    elif cron is not None:
        schedule = Schedule(cron=cron, tz=flow.tz)
    else:
        schedule = schedule_of(flow)
        if not schedule.is_set:
            raise DfjobError(f"data flow {flow.name!r} has no schedule: give --every or --cron")
    slots = slots_of(schedule, start, end)
    requests = [
        JobRequest(
            data_flow_id=flow.id,
            queue=flow.queue,
            priority=flow.priority,
            max_attempts=flow.max_attempts or settings.retry.max_attempts,
            key=job_key(slot=slot),
            scheduled_for=slot,
            triggered_by=TriggeredBy.BACKFILL,
        )
        for slot in slots
    ]
    created, skipped = store().backfill(requests, parallel, clock.now())
    for _, job_id in created:
        events.emit(
            events.JOB_ENQUEUED, job_id=job_id, data_flow_id=flow.id, data_flow_name=flow.name, queue=flow.queue
        )
    return BackfillResult(slots=len(slots), enqueued=len(created), deduplicated=skipped)
