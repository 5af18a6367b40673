"""Leases: when a worker renews them, when its runners must stop without a renewal, and taking
back the expired leases of workers that are gone.

With `lease_seconds = L`, a worker renews every L/3. A runner stops its attempt `L/6` before the
lease its last confirmed renewal bought would run out: 5L/6 after that renewal was sent. A rescuer
takes a job back only once its lease itself has run out, L after the renewal by the database's
clock, so the two never overlap: there are L/6 in between for the kill to take effect. Every
renewal matches the lease token, not the worker's name: a lease taken back and claimed again,
even by the same worker, is a different lease.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from dfjob import clock, events
from dfjob.config import RetrySettings
from dfjob.store import store
from dfjob.store.rows import JobStatus, Rescued


class LeaseKeeper:
    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self.renew_every = max(0.5, lease_seconds / 3)
        self.margin = lease_seconds / 6
        self._next_renewal = 0.0

    def fence(self, sent: float) -> float:
        """The monotonic time by which an attempt must have stopped, for a lease stamped at the
        monotonic time `sent` and not renewed since."""
        return sent + self.lease_seconds - self.margin

    def due(self, now: float) -> bool:
        return now >= self._next_renewal

    def next_renewal(self) -> float:
        return self._next_renewal

    def renew(self, leases: Sequence[tuple[int, str]]) -> tuple[dict[int, bool], float]:
        """Renew the leases (job id, token) still ours; returns the job ids renewed (each with
        whether it was asked to stop) and the new fence."""
        sent = time.monotonic()
        held = store().renew(leases, clock.now(), self.lease_seconds) if leases else {}
        self._next_renewal = sent + self.renew_every
        return held, self.fence(sent)


def take_back_expired(now: datetime, retry: RetrySettings) -> list[Rescued]:
    """Rescue every job whose lease expired (see `Store.rescue_expired`) and say so."""
    rescued = store().rescue_expired(now, retry)
    for job in rescued:
        events.emit(
            events.JOB_RESCUED,
            job_id=job.job_id,
            run_id=job.run_id,
            data_flow_id=job.data_flow_id,
            data_flow_name=job.data_flow_name,
            lost_worker=job.lost_worker,
            will_retry=job.will_retry,
        )
        if job.job_status == JobStatus.CANCELLED:
            # Asked to stop while its worker was gone: it ends as asked.
            events.emit(
                events.JOB_CANCELLED,
                job_id=job.job_id,
                data_flow_id=job.data_flow_id,
                data_flow_name=job.data_flow_name,
                run_id=job.run_id,
            )
    return rescued
