"""Taking back jobs whose lease ran out, for the workers' poll loops and every heartbeat."""

from __future__ import annotations

from datetime import datetime

from dfjob import events, queue
from dfjob.config import RetrySettings


def take_back_expired(now: datetime, retry: RetrySettings) -> int:
    """Rescue every job whose lease expired (see `queue.rescue_expired`), say so; returns how many."""
    rescued = queue.rescue_expired(now, retry)
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
