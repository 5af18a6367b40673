"""`dfjob trigger`, `backfill`, `runs`, `jobs` and `prune`: enqueue work and read its history."""

from __future__ import annotations

from datetime import datetime, timedelta

import click

from dfjob import clock, history
from dfjob.backfill import backfill
from dfjob.cli.app import cli, current_app, emit, json_option, table
from dfjob.config import check_queue_name, is_id
from dfjob.errors import DfjobError
from dfjob.registry import get_flow
from dfjob.schedule import parse_duration
from dfjob.store import check_finished_statuses, store
from dfjob.store.rows import FINISHED
from dfjob.trigger import check_key, parse_iso_option, parse_params, parse_run_at, retry_job
from dfjob.trigger import request as request_trigger

# -- trigger -------------------------------------------------------------------------------------


@cli.command()
@click.argument("ref", metavar="ID|NAME")
@click.option("--queue", "queue_name", help="Queue for this job (default: the flow's).")
@click.option("--priority", type=int, help="Priority for this job (default: the flow's).")
@click.option("--param", "param_pairs", multiple=True, metavar="K=V", help="A parameter (string value).")
@click.option("--params-json", metavar="JSON", help="Parameters as a JSON object.")
@click.option("--run-at", metavar="ISO8601", help="Run no earlier than this (UTC unless a zone is given).")
@click.option("--key", metavar="K", help="Job key: an active job of the flow with this key is this request.")
@json_option
def trigger(
    ref: str, queue_name: str | None, priority: int | None, param_pairs: tuple[str, ...],
    params_json: str | None, run_at: str | None, key: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Enqueue a job for a data flow now (returns at once)."""
    params = parse_params(param_pairs, params_json)
    when = parse_run_at(run_at) if run_at is not None else None
    if key is not None:
        check_key(key)
    settings = current_app().open()
    result, flow = request_trigger(
        settings, ref, params=params, queue_name=queue_name, priority=priority, run_at=when, key=key
    )
    data = {
        "job_id": result.job_id,
        "data_flow_id": result.data_flow_id,
        "queue": result.queue,
        "deduplicated": result.deduplicated,
    }
    if result.deduplicated:
        message = f"Data flow {flow.name} already has active job {result.job_id} (queue {result.queue})"
    else:
        message = f"Enqueued job {result.job_id} for data flow {flow.name} on queue {result.queue}"
    emit(as_json, data, lambda: message)


@cli.command("backfill")
@click.argument("ref", metavar="ID|NAME")
@click.option("--from", "start", required=True, metavar="ISO8601", help="First slot (UTC unless a zone is given).")
@click.option("--to", "end", required=True, metavar="ISO8601", help="End of the range (not included).")
@click.option("--every", metavar="DUR", help="Slots every DUR from --from, instead of the flow's schedule.")
@click.option("--cron", metavar="EXPR", help="Slots of this cron expression, instead of the flow's schedule.")
@click.option("--parallel", type=int, default=1, show_default=True, help="Jobs of this backfill running at once.")
@json_option
def backfill_command(
    ref: str, start: str, end: str, every: str | None, cron: str | None, parallel: int, as_json: bool
) -> None:
    """Enqueue one job per slot in [--from, --to), oldest first, each with its scheduled_for."""
    begin, until = parse_iso_option(start, "--from"), parse_iso_option(end, "--to")
    settings = current_app().open()
    flow = get_flow(ref)
    done = backfill(settings, flow, begin, until, every=every, cron=cron, parallel=parallel)
    data = {"slots": done.slots, "enqueued": done.enqueued, "deduplicated": done.deduplicated}
    message = f"{done.slots} slots: {done.enqueued} enqueued, {done.deduplicated} already there"
    emit(as_json, data, lambda: message)


# -- history -------------------------------------------------------------------------------------


def _flow_id(ref: str | None) -> int | None:
    return None if ref is None else int(get_flow(ref).id)


def _since(duration: str | None) -> datetime | None:
    return None if duration is None else clock.now() - timedelta(seconds=parse_duration(duration))


@cli.command()
@click.option("--flow", "flow_ref", metavar="ID|NAME", help="Only this data flow's runs.")
@click.option("--status", "status", multiple=True, help="pending, in_progress, success or failed (repeatable).")
@click.option("--since", metavar="DUR", help="Only runs created in the last DUR (90s, 5m, 2h, 1d, 1w).")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
def runs(flow_ref: str | None, status: tuple[str, ...], since: str | None, limit: int, as_json: bool) -> None:
    """Run history, newest first."""
    history.statuses(status, history.RUN_STATUSES, "run")
    history.check_limit(limit)
    after = _since(since)
    current_app().open(writes=False)
    rows = history.list_runs(_flow_id(flow_ref), status, limit, since=after)
    columns = ["id", "data_flow_name", "job_id", "attempt", "status", "started_at", "duration_ms", "error_message"]
    emit(as_json, rows, lambda: table(rows, columns))


@cli.group(invoke_without_command=True)
@click.option("--queue", "queue_name", help="Only this queue.")
@click.option("--status", "status", multiple=True, help="queued, running, succeeded, failed or cancelled (repeatable).")
@click.option("--flow", "flow_ref", metavar="ID|NAME", help="Only this data flow's jobs.")
@click.option("--since", metavar="DUR", help="Only jobs created in the last DUR (90s, 5m, 2h, 1d, 1w).")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
@click.pass_context
def jobs(
    ctx: click.Context, queue_name: str | None, status: tuple[str, ...], flow_ref: str | None, since: str | None,
    limit: int, as_json: bool,
) -> None:  # fmt: skip
    """The job table, newest first; `jobs show ID`, `jobs cancel ID`, `jobs retry ID`."""
    if ctx.invoked_subcommand is not None:
        ctx.meta["dfjob.json"] = as_json  # `dfjob jobs --json cancel 5` prints JSON too
        return
    if queue_name is not None:
        check_queue_name(queue_name, ())
    history.statuses(status, history.JOB_STATUSES, "job")
    history.check_limit(limit)
    after = _since(since)
    current_app().open(writes=False)
    rows = history.list_jobs(queue_name, status, _flow_id(flow_ref), limit, since=after)
    columns = [
        "id",
        "data_flow_name",
        "queue",
        "priority",
        "status",
        "attempts",
        "max_attempts",
        "run_at",
        "last_error",
    ]
    emit(as_json, rows, lambda: table(rows, columns))


def _job_id(text: str) -> int:
    if not is_id(text):
        raise DfjobError(f"a job id is a number in ASCII digits, not {text!r}")
    return int(text)


@jobs.command("cancel")
@click.argument("job_id", metavar="ID")
@json_option
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Cancel a queued job."""
    current_app().open()
    number = _job_id(job_id)
    store().cancel(number, clock.now())
    data = history.get_job(number)
    emit(as_json or ctx.meta.get("dfjob.json", False), data, lambda: f"Cancelled job {number}")


@jobs.command("retry")
@click.argument("job_id", metavar="ID")
@json_option
@click.pass_context
def jobs_retry(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Re-queue a failed or cancelled job to run now, with fresh attempts."""
    current_app().open()
    number = _job_id(job_id)
    retry_job(number)
    data = history.get_job(number)
    emit(as_json or ctx.meta.get("dfjob.json", False), data, lambda: f"Re-queued job {number}")


@cli.command()
@click.option("--older-than", metavar="DUR", help="Default: retention.finished_jobs.")
@click.option("--status", "statuses", multiple=True, help="Only jobs that ended so: succeeded, failed or cancelled.")
@json_option
def prune(older_than: str | None, statuses: tuple[str, ...], as_json: bool) -> None:
    """Delete finished jobs and their runs older than DUR."""
    settings = current_app().settings
    seconds = parse_duration(older_than or settings.retention.finished_jobs)
    check_finished_statuses(statuses or FINISHED)
    current_app().open()
    cutoff = clock.now() - timedelta(seconds=seconds)
    jobs_deleted, runs_deleted = store().prune(cutoff, statuses or FINISHED)
    data = {"jobs": jobs_deleted, "runs": runs_deleted}
    emit(as_json, data, lambda: f"Deleted {jobs_deleted} jobs and {runs_deleted} runs")
