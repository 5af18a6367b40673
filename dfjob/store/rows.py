"""What travels between the store and its callers: statuses as StrEnums, rows as NamedTuples."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunStatus(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    SUCCESS = "success"
    FAILED = "failed"


class Retry(StrEnum):
    """What an ended attempt asks of the retry rules."""

    NORMAL = "normal"  # retry while attempts are left, after the backoff
    NEVER = "never"  # fail the job now (Discard, a refused class, a bad result)
    NOW = "now"  # back to the queue at once: the attempt was interrupted, not the flow's fault
    CANCEL = "cancel"  # an operator cancelled it: the job ends `cancelled`


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Enqueued(NamedTuple):
    job_id: int
    data_flow_id: int
    queue: str
    deduplicated: bool


class TriggeredBy(StrEnum):
    TRIGGER = "trigger"
    SCHEDULE = "schedule"
    BACKFILL = "backfill"
    UPSTREAM = "upstream"
    API = "api"


class JobRequest(NamedTuple):
    """One job to enqueue. Two active jobs of a flow never share a `key` (see `job_key`)."""

    data_flow_id: int
    queue: str
    priority: int
    max_attempts: int
    key: str
    params: dict[str, Any] | None = None
    run_at: datetime | None = None  # None: now
    scheduled_for: datetime | None = None
    triggered_by: TriggeredBy = TriggeredBy.TRIGGER
    upstream_job_id: int | None = None


class ClaimRequest(NamedTuple):
    """What a worker asks for: up to `limit` due jobs from `queues`, leased for `lease_seconds`."""

    worker: str
    queues: tuple[str, ...]
    limit: int
    now: datetime
    lease_seconds: float


class Claimed(NamedTuple):
    """One claimed job with everything needed to run its attempt."""

    job_id: int
    run_id: int
    data_flow_id: int
    data_flow_name: str
    class_path: str
    configuration: dict[str, Any]
    params: dict[str, Any]
    queue: str
    attempt: int
    max_attempts: int
    timeout_seconds: int | None
    lease_token: str
    worker: str
    scheduled_for: datetime | None = None
    triggered_by: str = TriggeredBy.TRIGGER
    # Flows list this one in `after`: its success may enqueue them.
    has_downstream: bool = False

    def event_fields(self) -> dict[str, Any]:
        """What every lifecycle event about this attempt carries."""
        return {
            "job_id": self.job_id,
            "run_id": self.run_id,
            "data_flow_id": self.data_flow_id,
            "data_flow_name": self.data_flow_name,
            "queue": self.queue,
            "attempt": self.attempt,
        }


class Outcome(NamedTuple):
    """How one attempt ended."""

    job: Claimed
    status: RunStatus
    started_at: datetime
    ended_at: datetime
    result: dict[str, Any] | None = None
    error_message: str | None = None
    error_backtrace: str | None = None
    retry: Retry = Retry.NORMAL
    cpu_seconds: float | None = None
    max_rss_kb: int | None = None


class Finished(NamedTuple):
    """An outcome as recorded: what it did to its job."""

    outcome: Outcome
    job_status: JobStatus
    will_retry: bool
    duration_ms: int
    # When a retried job is due again.
    retry_at: datetime | None = None
    # The lease had been taken back: nothing was written.
    stale: bool = False

    def event_fields(self) -> dict[str, Any]:
        """The keys of its `job.finished` event (and of the `job.failed` alert)."""
        fields: dict[str, Any] = {
            **self.outcome.job.event_fields(),
            "status": str(self.outcome.status),
            "duration_ms": self.duration_ms,
            "will_retry": self.will_retry,
            "job_status": str(self.job_status),
        }
        if self.outcome.status == RunStatus.FAILED:
            fields["error"] = self.outcome.error_message
        return fields


class Rescued(NamedTuple):
    """A job taken back from a worker whose lease ran out."""

    job_id: int
    run_id: int | None
    data_flow_id: int
    data_flow_name: str
    lost_worker: str
    job_status: JobStatus
    will_retry: bool


class LogWrite(NamedTuple):
    """Lines an attempt wrote, to add to its run's log: (seq, at, stream, text, part) each; tail
    lines before `drop_tail_before` leave it; `log_bytes`/`dropped_bytes` are the run's totals."""

    run_id: int
    lines: list[tuple[int, datetime, str, str, str]]
    drop_tail_before: int | None
    log_bytes: int
    dropped_bytes: int


class Downstream(NamedTuple):
    """A job an upstream's success enqueued (`after`)."""

    job_id: int
    data_flow_id: int
    data_flow_name: str
    queue: str


class Turn(NamedTuple):
    """What one worker turn wrote and claimed."""

    finished: list[Finished]
    claimed: list[Claimed]
    downstream: Sequence[Downstream] = ()
