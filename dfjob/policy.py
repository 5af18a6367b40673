"""The retry rules, as pure functions: what an ended attempt does to its job.

Finishing an attempt and taking back a lost one both ask `decide`, so the two paths can never
disagree about whether a job retries, when, or fails for good.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import NamedTuple

from dfjob.config import RetrySettings
from dfjob.store.rows import JobStatus, Retry


class Decision(NamedTuple):
    job_status: JobStatus
    will_retry: bool
    # When the job is due again (None unless it retries).
    retry_at: datetime | None


def retry_delay(attempts: int, retry: RetrySettings) -> float:
    """Seconds before the next attempt: initial × 2^(attempts−1) plus up to 10% jitter, capped.

    The jitter only adds, so a retry never comes before the configured delay; it spreads out
    jobs that failed together (a database or an API that went away for all of them at once).
    """
    if retry.backoff_initial <= 0:
        return 0.0
    base = retry.backoff_initial * 2.0 ** min(attempts - 1, 40)
    return float(min(base * random.uniform(1.0, 1.1), retry.backoff_max))


def decide(
    *, succeeded: bool, attempt: int, max_attempts: int, retry: Retry, ended_at: datetime, settings: RetrySettings
) -> Decision:
    """What the attempt numbered `attempt` (of `max_attempts`), ended at `ended_at`, does to its job."""
    if succeeded:
        return Decision(JobStatus.SUCCEEDED, False, None)
    if retry == Retry.CANCEL:
        return Decision(JobStatus.CANCELLED, False, None)
    if retry == Retry.NOW:
        return Decision(JobStatus.QUEUED, True, ended_at)
    if retry == Retry.NORMAL and attempt < max_attempts:
        return Decision(JobStatus.QUEUED, True, ended_at + timedelta(seconds=retry_delay(attempt, settings)))
    return Decision(JobStatus.FAILED, False, None)
