"""Single state changes the tests make without a worker, built on the store's turn."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dfjob.config import RetrySettings
from dfjob.store import job_key, store
from dfjob.store.rows import Claimed, ClaimRequest, Enqueued, Finished, JobRequest, Outcome


def claim(worker: str, queues: Sequence[str], limit: int, now: datetime, lease_seconds: float) -> list[Claimed]:
    """Claim up to `limit` due jobs from `queues`, creating each attempt's pending run."""
    return store().turn([], [], ClaimRequest(worker, tuple(queues), limit, now, lease_seconds), RetrySettings()).claimed


def mark_started(run_ids: Sequence[int], now: datetime) -> None:
    """Runs go `in_progress`, started at `now`."""
    store().turn([], [(run_ids, now)], None, RetrySettings())


def finish(outcomes: Sequence[Outcome], retry: RetrySettings) -> list[Finished]:
    """Record attempts' outcomes and move their jobs on."""
    return store().turn(outcomes, [], None, retry).finished


def enqueue(
    data_flow_id: int,
    *,
    queue: str = "default",
    priority: int = 0,
    params: dict[str, Any] | None = None,
    run_at: datetime | None = None,
    max_attempts: int = 3,
    now: datetime,
    key: str | None = None,
) -> Enqueued:
    """A plain trigger's job (keyed by its params unless `key` is given)."""
    request = JobRequest(
        data_flow_id=data_flow_id,
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        key=job_key(key=key, params=params),
        params=params or {},
        run_at=run_at,
    )
    return store().enqueue(request, now)
