"""`trigger_run`: enqueue one job for a data flow now (or at `run_at`), and say so."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dfjob import clock, events
from dfjob.config import Settings, check_json_object, check_queue_name, parse_json_object
from dfjob.errors import DfjobError
from dfjob.models import DataFlow, Job
from dfjob.registry import check_priority, get_flow
from dfjob.store import job_key, store
from dfjob.store.rows import Enqueued, JobRequest, JobStatus, TriggeredBy
from dfjob.text import printable


def parse_params(pairs: tuple[str, ...], params_json: str | None) -> dict[str, Any]:
    """`--params-json` (a JSON object) first, then each `--param K=V` (string values) on top."""
    params: dict[str, Any] = {}
    if params_json is not None:
        params.update(parse_json_object(params_json, "--params-json"))
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DfjobError(f"--param {pair!r} must look like KEY=VALUE")
        params[key] = value
    return check_json_object(params, "--param")


def parse_iso_option(text: str, option: str) -> datetime:
    """An ISO 8601 time given to `option`; without a zone it is UTC."""
    try:
        return clock.parse_iso(text)
    except ValueError:
        raise DfjobError(f"{option} {text!r} is not an ISO 8601 time (e.g. 2026-01-01T09:00:00Z)") from None


def parse_run_at(text: str) -> datetime:
    """`--run-at`: an ISO 8601 time; without a zone it is UTC."""
    return parse_iso_option(text, "--run-at")


KEY_LIMIT = 256


def check_key(key: str) -> str:
    """A job key given with `--key`: 1-256 characters, none of them control characters."""
    if not 1 <= len(key) <= KEY_LIMIT or not key.isprintable() or not check_json_object({"key": key}, "--key"):
        raise DfjobError(f"--key must be 1-{KEY_LIMIT} printable characters, not {printable(key)!r}")
    return key


def trigger_run(
    settings: Settings,
    flow: DataFlow,
    *,
    queue_name: str | None = None,
    priority: int | None = None,
    params: dict[str, Any] | None = None,
    run_at: datetime | None = None,
    key: str | None = None,
    triggered_by: TriggeredBy = TriggeredBy.TRIGGER,
) -> Enqueued:
    """Enqueue a job for `flow`, or find the active one with the same key (`deduplicated`).

    The key is `key` if given, else a digest of `params`: the same params deduplicate, different
    ones queue up."""
    name = check_queue_name(queue_name or flow.queue, settings.queues.allowed)
    if priority is not None:
        check_priority(priority)
    params = params or {}
    request = JobRequest(
        data_flow_id=flow.id,
        queue=name,
        priority=flow.priority if priority is None else priority,
        max_attempts=flow.max_attempts or settings.retry.max_attempts,
        key=job_key(key=check_key(key) if key is not None else None, params=params),
        params=params,
        run_at=run_at,
        triggered_by=triggered_by,
    )
    enqueued = store().enqueue(request, clock.now())
    if not enqueued.deduplicated:
        _announce(enqueued, flow)
    return enqueued


def request(
    settings: Settings,
    ref: str | int,
    *,
    params: dict[str, Any] | None = None,
    queue_name: str | None = None,
    priority: int | None = None,
    run_at: datetime | None = None,
    key: str | None = None,
    triggered_by: TriggeredBy = TriggeredBy.TRIGGER,
) -> tuple[Enqueued, DataFlow]:
    """A trigger as the CLI, `dfjob.Client` and the web API ask for it: the flow by id or name,
    everything checked before anything is written."""
    if params is not None:
        if not isinstance(params, dict):
            raise DfjobError("params must be a JSON object (a dict)")
        check_json_object(params, "params")
    if queue_name is not None:
        check_queue_name(queue_name, settings.queues.allowed)
    if priority is not None:
        check_priority(priority)
    if key is not None:
        check_key(key)
    flow = get_flow(str(ref))
    enqueued = trigger_run(
        settings, flow, queue_name=queue_name, priority=priority, params=params, run_at=run_at, key=key,
        triggered_by=triggered_by,
    )  # fmt: skip
    return enqueued, flow


def retry_job(job_id: int) -> Enqueued:
    """Put a failed or cancelled job back on its queue with fresh attempts, and say so."""
    enqueued = store().retry(job_id, clock.now())
    _announce(enqueued, DataFlow.get_by_id(enqueued.data_flow_id))
    return enqueued


def cancel_job(job_id: int) -> str:
    """Cancel a queued job at once (`job.cancelled`), or ask its worker to stop a running one (the
    worker writes the outcome and says `job.cancelled`). Returns the job's status afterwards."""
    status = store().cancel(job_id, clock.now())
    if status == JobStatus.CANCELLED:
        job = Job.select(Job, DataFlow).join(DataFlow).where(Job.id == job_id).get()
        events.emit(
            events.JOB_CANCELLED,
            job_id=job_id,
            data_flow_id=job.data_flow_id,
            data_flow_name=job.data_flow.name,
            queue=job.queue,
        )
    return status


def _announce(enqueued: Enqueued, flow: DataFlow) -> None:
    events.emit(
        events.JOB_ENQUEUED,
        job_id=enqueued.job_id,
        data_flow_id=flow.id,
        data_flow_name=flow.name,
        queue=enqueued.queue,
    )
