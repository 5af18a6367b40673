"""What an operator looks at beyond the history: the workers that run, and what they hold."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from dfjob import clock
from dfjob.models import WorkerRecord

# A worker not seen for this many of its own leases is stale: probably gone without a goodbye.
STALE_LEASES = 2


def worker_state(record: WorkerRecord, now: datetime) -> str:
    """`stopped` (said goodbye), `stale` (not seen for 2 × its lease) or `alive`."""
    if record.stopped_at is not None:
        return "stopped"
    if now - record.last_seen_at > timedelta(seconds=STALE_LEASES * record.lease_seconds):
        return "stale"
    return "alive"


def worker_to_dict(record: WorkerRecord, now: datetime) -> dict[str, Any]:
    return {
        "name": record.name,
        "host": record.host,
        "pid": record.pid,
        "queues": record.queues,
        "concurrency": record.concurrency,
        "running_job_ids": record.running_job_ids,
        "started_at": clock.iso(record.started_at),
        "last_seen_at": clock.iso(record.last_seen_at),
        "stopped_at": clock.iso(record.stopped_at),
        "version": record.version,
        "state": worker_state(record, now),
    }


def list_workers(now: datetime | None = None) -> list[dict[str, Any]]:
    """Every worker record, those still running first, then the most recently started."""
    now = now or clock.now()
    records = [worker_to_dict(record, now) for record in WorkerRecord.select().order_by(WorkerRecord.started_at.desc())]
    order = {"alive": 0, "stale": 1, "stopped": 2}
    return sorted(records, key=lambda record: order[record["state"]])
