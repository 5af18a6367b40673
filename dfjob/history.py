"""Reading the run history and the job table, newest first, as the contract's JSON objects.

Filters: any number of statuses (`success` and `succeeded` mean the same on runs and jobs alike),
a flow, a queue, and `since` (only what was created after it). Lists page by id (`before_id`),
so a page costs the same with a million rows behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from dfjob import clock
from dfjob.db import is_postgres
from dfjob.errors import DfjobError
from dfjob.models import DataFlow, DataFlowRun, Job, to_db_time
from dfjob.sql import execute
from dfjob.store.rows import JobStatus, RunStatus

RUN_STATUSES = tuple(RunStatus)
# Beyond this many rows, a total is shown as "more than".
COUNT_CAP = 100_000
JOB_STATUSES = tuple(JobStatus)
# The words people use for the same outcome, on either list.
_SYNONYMS = {"success": ("success", "succeeded"), "succeeded": ("success", "succeeded")}


def statuses(given: Sequence[str] | None, allowed: Sequence[str], what: str) -> list[str] | None:
    """The statuses a filter stands for on this list, or DfjobError for an unknown one."""
    if not given:
        return None
    found: list[str] = []
    for status in given:
        options = [option for option in _SYNONYMS.get(status, (status,)) if option in allowed]
        if not options:
            raise DfjobError(f"invalid {what} status {status!r} (one of {', '.join(allowed)})")
        found += options
    return sorted(set(found))


def check_limit(limit: int) -> None:
    if limit < 1:
        raise DfjobError(f"--limit must be at least 1, not {limit}")


def runs_query(
    flow_id: int | None = None,
    status: Sequence[str] | None = None,
    since: datetime | None = None,
    before_id: int | None = None,
    job_id: int | None = None,
    ids_only: bool = False,
) -> Any:
    """Runs that pass the filters (not ordered); `ids_only`: their ids alone, joined to nothing
    (for `count_runs`: an index answers it)."""
    wanted = statuses(status, RUN_STATUSES, "run")
    query = DataFlowRun.select(DataFlowRun.id) if ids_only else _runs()
    if flow_id is not None:
        query = query.where(DataFlowRun.data_flow == flow_id)
    if job_id is not None:
        query = query.where(DataFlowRun.job == job_id)
    if wanted is not None:
        query = query.where(DataFlowRun.status.in_(wanted))
    if since is not None:
        query = query.where(DataFlowRun.created_at >= since)
    if before_id is not None:
        query = query.where(DataFlowRun.id < before_id)
    return query


def list_runs(
    flow_id: int | None = None,
    status: Sequence[str] | None = None,
    limit: int = 50,
    since: datetime | None = None,
    before_id: int | None = None,
    job_id: int | None = None,
) -> list[dict[str, Any]]:
    """Runs, newest first (highest id first)."""
    check_limit(limit)
    query = runs_query(flow_id, status, since, before_id, job_id)
    return [run_to_dict(run) for run in query.order_by(DataFlowRun.id.desc()).limit(limit)]


def jobs_query(
    queue: str | None = None,
    status: Sequence[str] | None = None,
    flow_id: int | None = None,
    since: datetime | None = None,
    before_id: int | None = None,
    ids_only: bool = False,
) -> Any:
    """Jobs that pass the filters (not ordered); `ids_only`: their ids alone, joined to nothing
    (for `count_jobs`: an index answers it)."""
    wanted = statuses(status, JOB_STATUSES, "job")
    query = Job.select(Job.id) if ids_only else Job.select(Job, DataFlow.id, DataFlow.name).join(DataFlow)
    if queue is not None:
        query = query.where(Job.queue == queue)
    if wanted is not None:
        query = query.where(Job.status.in_(wanted))
    if flow_id is not None:
        query = query.where(Job.data_flow == flow_id)
    if since is not None:
        query = query.where(Job.created_at >= since)
    if before_id is not None:
        query = query.where(Job.id < before_id)
    return query


def list_jobs(
    queue: str | None = None,
    status: Sequence[str] | None = None,
    flow_id: int | None = None,
    limit: int = 50,
    since: datetime | None = None,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Jobs, newest first (highest id first)."""
    check_limit(limit)
    query = jobs_query(queue, status, flow_id, since, before_id)
    return [job_to_dict(job) for job in query.order_by(Job.id.desc()).limit(limit)]


def count_runs(flow_id: int | None = None, status: Sequence[str] | None = None, since: datetime | None = None) -> int:
    """How many runs pass the filters, at most `COUNT_CAP + 1` (see `_count`)."""
    return _count(runs_query(flow_id, status, since, ids_only=True))


def count_jobs(
    queue: str | None = None,
    status: Sequence[str] | None = None,
    flow_id: int | None = None,
    since: datetime | None = None,
) -> int:
    """How many jobs pass the filters, at most `COUNT_CAP + 1` (see `_count`)."""
    return _count(jobs_query(queue, status, flow_id, since, ids_only=True))


def _count(query: Any) -> int:
    """How many rows `query` matches, counting at most `COUNT_CAP + 1` of them: a text table's
    "showing 50 of N" must not cost a scan of the whole history. The query selects ids alone,
    joined to nothing, so an index on the filtered columns answers it."""
    return int(query.limit(COUNT_CAP + 1).count())


def runs_per_hour(now: datetime, hours: int = 24) -> list[tuple[datetime, dict[str, int]]]:
    """Runs created in each of the last `hours` hours, by status, oldest hour first: counted from
    the `runs_created` index alone (it holds the status too), grouped by hour."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    hour = "date_trunc('hour', created_at)" if is_postgres() else "substr(created_at, 1, 13)"
    rows = execute(
        f"SELECT {hour} AS hour, status, COUNT(*) FROM dfjob.data_flow_runs WHERE created_at >= ? GROUP BY 1, 2",
        (to_db_time(start),),
    ).fetchall()
    found: list[tuple[datetime, dict[str, int]]] = [(start + timedelta(hours=i), {}) for i in range(hours)]
    for value, status, count in rows:
        began = value if isinstance(value, datetime) else datetime.strptime(value, "%Y-%m-%d %H")
        index = int((began.replace(tzinfo=UTC) - start).total_seconds() // 3600)
        if 0 <= index < hours:  # a run stamped a moment after `now` counts in no hour shown
            found[index][1][status] = int(count)
    return found


RECENT_DURATIONS = (
    "SELECT id, duration_ms, status FROM dfjob.data_flow_runs WHERE data_flow_id = ? AND duration_ms IS NOT NULL"
    " ORDER BY id DESC LIMIT ?"
)


def recent_durations(flow_ids: Sequence[int], per_flow: int = 20) -> dict[int, list[tuple[int, str]]]:
    """Each flow's last `per_flow` finished runs as (duration_ms, status), oldest first: a short
    read of the `runs_flow` index per flow, so a page of flows costs the same with any history
    (on Postgres all in one round trip)."""
    if is_postgres():
        rows = execute(
            "SELECT f.id, r.duration_ms, r.status FROM unnest(CAST(? AS bigint[])) AS f(id) CROSS JOIN LATERAL ("
            + RECENT_DURATIONS.replace("data_flow_id = ?", "data_flow_id = f.id")
            + ") AS r ORDER BY f.id, r.id",
            (list(flow_ids), per_flow),
        ).fetchall()
    else:
        rows = [
            (flow_id, duration, status)
            for flow_id in flow_ids
            for _, duration, status in reversed(execute(RECENT_DURATIONS, (flow_id, per_flow)).fetchall())
        ]
    found: dict[int, list[tuple[int, str]]] = {flow_id: [] for flow_id in flow_ids}
    for flow_id, duration, status in rows:
        found[flow_id].append((int(duration), status))
    return found


def get_job(job_id: int, with_runs: bool = False) -> dict[str, Any]:
    """One job; `with_runs`: with every attempt's run (`jobs show`)."""
    job = Job.select(Job, DataFlow.id, DataFlow.name).join(DataFlow).where(Job.id == job_id).first()
    if job is None:
        raise DfjobError(f"no job with id {job_id}")
    data = job_to_dict(job)
    if with_runs:
        data["runs"] = list(reversed(list_runs(job_id=job_id, limit=100_000)))
    return data


def get_run(run_id: int) -> dict[str, Any]:
    """One run (`runs show`)."""
    run = _runs().where(DataFlowRun.id == run_id).first()
    if run is None:
        raise DfjobError(f"no run with id {run_id}")
    return run_to_dict(run)


def _runs() -> Any:
    """Runs with their flow's name and their job's slot and origin."""
    # The joined models' ids too: peewee reads `run.job_id` and `run.data_flow_id` from them.
    query = DataFlowRun.select(DataFlowRun, DataFlow.id, DataFlow.name, Job.id, Job.scheduled_for, Job.triggered_by)
    query = query.join(DataFlow, on=DataFlowRun.data_flow == DataFlow.id).switch(DataFlowRun)
    return query.join(Job, on=DataFlowRun.job == Job.id)


def run_to_dict(run: DataFlowRun) -> dict[str, Any]:
    """The run object."""
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
        "scheduled_for": clock.iso(run.job.scheduled_for),
        "triggered_by": run.job.triggered_by,
        "log_bytes": run.log_bytes,
        "log_dropped_bytes": run.log_dropped_bytes,
        "cpu_seconds": run.cpu_seconds,
        "max_rss_kb": run.max_rss_kb,
    }


def job_to_dict(job: Job) -> dict[str, Any]:
    """The job object."""
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
        "key": job.key,
        "scheduled_for": clock.iso(job.scheduled_for),
        "triggered_by": job.triggered_by,
        "upstream_job_id": job.upstream_job_id,
        "cancel_requested": bool(job.cancel_requested),
    }
