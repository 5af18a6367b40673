"""Taking back jobs whose lease ran out, for the workers' poll loops and every heartbeat."""

from __future__ import annotations

from datetime import datetime

from dfjob import events
from dfjob.config import RetrySettings
from dfjob.store import store


def take_back_expired(now: datetime, retry: RetrySettings) -> int:
    """Rescue every job whose lease expired (see `Store.rescue_expired`), say so; returns how many."""
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
    return len(rescued)
