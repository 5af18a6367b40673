"""What an operator looks at beyond the history: queues, workers, what is due, what failed.

Everything here reads the active part of the job table (through its partial indexes), the
recent past (failed jobs of the last 24 h, the latest failed runs) and the small tables (flows,
workers, queue states), never the whole history: the status screen costs the same with a million
finished runs behind it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from dfjob import clock
from dfjob.models import DataFlow, DataFlowRun, QueueState, WorkerRecord, from_db_time, to_db_time
from dfjob.sql import execute

# A worker not seen for this many of its own leases is stale: probably gone without a goodbye.
STALE_LEASES = 2
# A flow whose runs failed this many times in a row gets a warning.
FAILING_STREAK = 3


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


def live_workers(queue: str, now: datetime | None = None) -> int:
    """How many live workers serve `queue`."""
    return sum(1 for worker in list_workers(now) if worker["state"] == "alive" and queue in worker["queues"])


def paused_queues() -> set[str]:
    return {state.name for state in QueueState.select().where(QueueState.paused)}


def list_queues(now: datetime | None = None) -> list[dict[str, Any]]:
    """Per queue: ready, scheduled (due later), running, failed in the last 24 h, how long the
    oldest ready job has waited, live workers serving it, and whether it is paused."""
    now = now or clock.now()
    stamp = to_db_time(now)
    counts: dict[str, dict[str, Any]] = {}

    def row(queue: str) -> dict[str, Any]:
        return counts.setdefault(
            queue,
            {"queue": queue, "ready": 0, "scheduled": 0, "running": 0, "failed_24h": 0,
             "oldest_ready_seconds": None, "workers": 0, "paused": False},
        )  # fmt: skip

    queued = execute(
        "SELECT queue, SUM(CASE WHEN run_at <= ? THEN 1 ELSE 0 END), SUM(CASE WHEN run_at > ? THEN 1 ELSE 0 END),"
        " MIN(CASE WHEN run_at <= ? THEN run_at END) FROM dfjob.jobs WHERE status = 'queued' GROUP BY queue",
        (stamp, stamp, stamp),
    ).fetchall()
    for queue, ready, scheduled, oldest in queued:
        item = row(queue)
        item["ready"], item["scheduled"] = int(ready or 0), int(scheduled or 0)
        oldest_at = from_db_time(oldest)
        if oldest_at is not None:
            item["oldest_ready_seconds"] = round(max(0.0, (now - oldest_at).total_seconds()), 1)
    for queue, running in execute(
        "SELECT queue, COUNT(*) FROM dfjob.jobs WHERE status = 'running' GROUP BY queue"
    ).fetchall():
        row(queue)["running"] = int(running)
    for queue, failed in execute(
        "SELECT queue, COUNT(*) FROM dfjob.jobs WHERE finished_at >= ? AND status = 'failed' GROUP BY queue",
        (to_db_time(now - timedelta(days=1)),),
    ).fetchall():
        row(queue)["failed_24h"] = int(failed)
    for queue in DataFlow.select(DataFlow.queue).distinct():
        row(queue.queue)
    for worker in list_workers(now):
        for queue in worker["queues"]:
            if worker["state"] == "alive":
                row(queue)["workers"] += 1
            elif worker["state"] == "stale":
                row(queue)
    for state in QueueState.select():
        row(state.name)["paused"] = bool(state.paused)
    return [counts[queue] for queue in sorted(counts)]


def next_due(limit: int = 5) -> list[dict[str, Any]]:
    """The enabled flows whose schedules come due next."""
    flows = (
        DataFlow.select(DataFlow.id, DataFlow.name, DataFlow.queue, DataFlow.next_run_at)
        .where(DataFlow.enabled, DataFlow.next_run_at.is_null(False))
        .order_by(DataFlow.next_run_at)
        .limit(limit)
    )
    return [
        {
            "data_flow_id": flow.id,
            "data_flow_name": flow.name,
            "queue": flow.queue,
            "next_run_at": clock.iso(flow.next_run_at),
        }
        for flow in flows
    ]


def recent_failures(limit: int = 10) -> list[dict[str, Any]]:
    """The latest failed runs, newest first."""
    runs = (
        DataFlowRun.select(DataFlowRun, DataFlow.id, DataFlow.name)
        .join(DataFlow)
        .where(DataFlowRun.status == "failed")
        .order_by(DataFlowRun.id.desc())
        .limit(limit)
    )
    return [
        {
            "run_id": run.id,
            "job_id": run.job_id,
            "data_flow_id": run.data_flow_id,
            "data_flow_name": run.data_flow.name,
            "ended_at": clock.iso(run.ended_at),
            "error_message": run.error_message,
        }
        for run in runs
    ]


def failing_flows() -> list[dict[str, Any]]:
    """Flows whose last runs failed, `FAILING_STREAK` times or more in a row."""
    flows = DataFlow.select(DataFlow.id, DataFlow.name, DataFlow.failure_streak).where(
        DataFlow.failure_streak >= FAILING_STREAK
    )
    return [{"data_flow_id": flow.id, "data_flow_name": flow.name, "failures": flow.failure_streak} for flow in flows]


def status(now: datetime | None = None) -> dict[str, Any]:
    """The one screen: queues, workers, what is due next, what failed lately, and warnings."""
    now = now or clock.now()
    queues = list_queues(now)
    workers = list_workers(now)
    warnings = []
    for queue in queues:
        if queue["ready"] and queue["paused"]:
            warnings.append(f"queue {queue['queue']} is paused with {queue['ready']} ready jobs")
        elif queue["ready"] and not queue["workers"]:
            warnings.append(f"queue {queue['queue']} has {queue['ready']} ready jobs and no live worker serves it")
    for worker in workers:
        if worker["state"] == "stale":
            warnings.append(f"worker {worker['name']} has not been seen since {worker['last_seen_at']} (stale)")
    failing = failing_flows()
    for flow in failing:
        warnings.append(f"data flow {flow['data_flow_name']}: its last {flow['failures']} runs failed")
    return {
        "queues": queues,
        "workers": [worker for worker in workers if worker["state"] != "stopped"],
        "next_due": next_due(),
        "recent_failures": recent_failures(),
        "failing_flows": failing,
        "warnings": warnings,
    }
