"""Reading the run history and the job table, newest first, as the contract's JSON objects."""

from __future__ import annotations

from typing import Any

from dfjob import clock
from dfjob.errors import DfjobError
from dfjob.models import DataFlow, DataFlowRun, Job

RUN_STATUSES = ("pending", "in_progress", "success", "failed")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _check_status(status: str | None, allowed: tuple[str, ...], what: str) -> None:
    if status is not None and status not in allowed:
        raise DfjobError(f"invalid {what} status {status!r} (one of {', '.join(allowed)})")


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise DfjobError(f"--limit must be at least 1, not {limit}")


def check_query(status: str | None, limit: int, statuses: tuple[str, ...]) -> None:
    """Refuse a `--status` or `--limit` that cannot select anything, before any database work."""
    _check_status(status, statuses, "run" if statuses is RUN_STATUSES else "job")
    _check_limit(limit)


def list_runs(flow_id: int | None = None, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Runs, newest first (highest id first)."""
    _check_status(status, RUN_STATUSES, "run")
    _check_limit(limit)
    query = DataFlowRun.select(DataFlowRun, DataFlow.id, DataFlow.name).join(DataFlow)
    if flow_id is not None:
        query = query.where(DataFlowRun.data_flow == flow_id)
    if status is not None:
        query = query.where(DataFlowRun.status == status)
    return [run_to_dict(run) for run in query.order_by(DataFlowRun.id.desc()).limit(limit)]


def list_jobs(
    queue: str | None = None, status: str | None = None, flow_id: int | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Jobs, newest first (highest id first)."""
    _check_status(status, JOB_STATUSES, "job")
    _check_limit(limit)
    query = Job.select(Job, DataFlow.id, DataFlow.name).join(DataFlow)
    if queue is not None:
        query = query.where(Job.queue == queue)
    if status is not None:
        query = query.where(Job.status == status)
    if flow_id is not None:
        query = query.where(Job.data_flow == flow_id)
    return [job_to_dict(job) for job in query.order_by(Job.id.desc()).limit(limit)]


def get_job(job_id: int) -> dict[str, Any]:
    job = Job.select(Job, DataFlow.id, DataFlow.name).join(DataFlow).where(Job.id == job_id).first()
    if job is None:
        raise DfjobError(f"no job with id {job_id}")
    return job_to_dict(job)


def run_to_dict(run: DataFlowRun) -> dict[str, Any]:
    """The contract's run object."""
    return {
        "id": run.id,
        "data_flow_id": run.data_flow_id,
        "data_flow_name": run.data_flow.name,
        "job_id": run.job_id,
        "attempt": run.attempt,
        "status": run.status,
        "queue": run.queue,
        "created_at": clock.iso(run.created_at),
        "started_at": clock.iso(run.started_at),
        "ended_at": clock.iso(run.ended_at),
        "duration_ms": run.duration_ms,
        "error_message": run.error_message,
        "error_backtrace": run.error_backtrace,
        "result": run.result,
        "worker": run.worker,
    }


def job_to_dict(job: Job) -> dict[str, Any]:
    """The contract's job object."""
    return {
        "id": job.id,
        "data_flow_id": job.data_flow_id,
        "data_flow_name": job.data_flow.name,
        "queue": job.queue,
        "priority": job.priority,
        "status": job.status,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "rescues": job.rescues,
        "run_at": clock.iso(job.run_at),
        "params": job.params,
        "last_error": job.last_error,
        "locked_by": job.locked_by,
        "lease_expires_at": clock.iso(job.lease_expires_at),
        "created_at": clock.iso(job.created_at),
        "finished_at": clock.iso(job.finished_at),
    }
