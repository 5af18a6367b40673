"""`trigger_run`: enqueue one job for a data flow now (or at `run_at`), and say so."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dfjob import clock, events
from dfjob.config import Settings, check_json_object, check_queue_name, parse_json_object
from dfjob.errors import DfjobError
from dfjob.models import DataFlow
from dfjob.registry import check_priority
from dfjob.store import store
from dfjob.store.rows import Enqueued


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


def parse_run_at(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        return clock.parse_iso(text)
    except ValueError:
        raise DfjobError(f"--run-at {text!r} is not an ISO 8601 time (e.g. 2026-01-01T09:00:00Z)") from None


def trigger_run(
    settings: Settings,
    flow: DataFlow,
    *,
    queue_name: str | None = None,
    priority: int | None = None,
    params: dict[str, Any] | None = None,
    run_at: datetime | None = None,
) -> Enqueued:
    """Enqueue a job for `flow` at once; returns the active job instead if there is one."""
    name = check_queue_name(queue_name or flow.queue, settings.queues.allowed)
    if priority is not None:
        check_priority(priority)
    now = clock.now()
    enqueued = store().enqueue(
        flow.id,
        queue=name,
        priority=flow.priority if priority is None else priority,
        params=params or {},
        run_at=run_at or now,
        max_attempts=flow.max_attempts or settings.retry.max_attempts,
        now=now,
    )
    if not enqueued.deduplicated:
        _announce(enqueued, flow)
    return enqueued


def retry_job(job_id: int) -> Enqueued:
    """Put a failed or cancelled job back on its queue with fresh attempts, and say so."""
    enqueued = store().retry(job_id, clock.now())
    _announce(enqueued, DataFlow.get_by_id(enqueued.data_flow_id))
    return enqueued


def _announce(enqueued: Enqueued, flow: DataFlow) -> None:
    events.emit(
        events.JOB_ENQUEUED,
        job_id=enqueued.job_id,
        data_flow_id=flow.id,
        data_flow_name=flow.name,
        queue=enqueued.queue,
    )
