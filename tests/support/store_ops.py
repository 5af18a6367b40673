"""Single state changes the tests make without a worker, built on the store's turn."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from dfjob.config import RetrySettings
from dfjob.store import store
from dfjob.store.rows import Claimed, ClaimRequest, Finished, Outcome


def claim(worker: str, queues: Sequence[str], limit: int, now: datetime, lease_seconds: float) -> list[Claimed]:
    """Claim up to `limit` due jobs from `queues`, creating each attempt's pending run."""
    return store().turn([], [], ClaimRequest(worker, tuple(queues), limit, now, lease_seconds), RetrySettings()).claimed


def mark_started(run_ids: Sequence[int], now: datetime) -> None:
    """Runs go `in_progress`, started at `now`."""
    store().turn([], [(run_ids, now)], None, RetrySettings())


def finish(outcomes: Sequence[Outcome], retry: RetrySettings) -> list[Finished]:
    """Record attempts' outcomes and move their jobs on."""
    return store().turn(outcomes, [], None, retry).finished
