"""`dfjob trigger`, `backfill`, `runs`, `jobs` and `prune`: enqueue work and read its history."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import click

from dfjob import clock, history, overview, runlogs
from dfjob.backfill import backfill
from dfjob.cli import output
from dfjob.cli.app import cli, current_app, emit, json_option
from dfjob.config import check_queue_name, parse_id
from dfjob.errors import DfjobError
from dfjob.registry import get_flow
from dfjob.schedule import parse_duration
from dfjob.store import check_finished_statuses, store
from dfjob.store.rows import FINISHED, JobStatus
from dfjob.trigger import cancel_job, check_key, parse_iso_option, parse_params, parse_run_at, retry_job
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
    if not overview.live_workers(result.queue):
        # A plain line in every log format: a misspelt queue must not go unnoticed.
        click.echo(f"Warning: no live worker serves queue {result.queue}", err=True)
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


RUN_COLUMNS = [
    ("ID", "id", output.plain),
    ("FLOW", "data_flow_name", output.plain),
    ("JOB", "job_id", output.plain),
    ("ATTEMPT", "attempt", output.plain),
    ("STATUS", "status", output.plain),
    ("STARTED", "started_at", output.when),
    ("DURATION", "duration_ms", output.duration_ms),
    ("ERROR", "error_message", output.short(60)),
]
JOB_COLUMNS = [
    ("ID", "id", output.plain),
    ("FLOW", "data_flow_name", output.plain),
    ("QUEUE", "queue", output.plain),
    ("PRIORITY", "priority", output.plain),
    ("STATUS", "status", output.plain),
    ("ATTEMPTS", "attempts_text", output.plain),
    ("RUN AT", "run_at", output.when),
    ("FINISHED", "finished_at", output.when),
    ("ERROR", "last_error", output.short(60)),
]


def _with_attempts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "attempts_text": f"{row['attempts']}/{row['max_attempts']}"} for row in rows]


def _json(ctx: click.Context, as_json: bool) -> bool:
    """`--json` given to the subcommand or to its group (`dfjob jobs --json cancel 5`)."""
    return as_json or bool(ctx.meta.get("dfjob.json", False))


@cli.group(invoke_without_command=True)
@click.option("--flow", "flow_ref", metavar="ID|NAME", help="Only this data flow's runs.")
@click.option("--status", "status", multiple=True, help="pending, in_progress, success or failed (repeatable).")
@click.option("--since", metavar="DUR", help="Only runs created in the last DUR (90s, 5m, 2h, 1d, 1w).")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
@click.pass_context
def runs(
    ctx: click.Context, flow_ref: str | None, status: tuple[str, ...], since: str | None, limit: int, as_json: bool
) -> None:
    """Run history, newest first; `runs show ID`, `runs logs ID [--follow]`."""
    if ctx.invoked_subcommand is not None:
        ctx.meta["dfjob.json"] = as_json
        return
    history.statuses(status, history.RUN_STATUSES, "run")
    history.check_limit(limit)
    after = _since(since)
    current_app().open(writes=False)
    flow_id = _flow_id(flow_ref)
    rows = history.list_runs(flow_id, status, limit, since=after)
    if as_json:
        emit(True, rows, str)
        return
    total = history.count_runs(flow_id, status, since=after) if len(rows) == limit else len(rows)
    emit(False, rows, lambda: output.table(rows, RUN_COLUMNS, total, history.COUNT_CAP))


RUN_FIELDS = [
    ("id", output.plain),
    ("data_flow_name", output.plain),
    ("job_id", output.plain),
    ("attempt", output.plain),
    ("status", output.plain),
    ("queue", output.plain),
    ("worker", output.plain),
    ("triggered_by", output.plain),
    ("scheduled_for", output.plain),
    ("created_at", output.plain),
    ("started_at", output.plain),
    ("ended_at", output.plain),
    ("duration_ms", output.duration_ms),
    ("cpu_seconds", lambda value: "-" if value is None else f"{value:.2f}s"),
    ("max_rss_kb", lambda value: "-" if value is None else output.size(value * 1024)),
    ("log_bytes", lambda value: output.size(value or 0)),
    ("log_dropped_bytes", lambda value: output.size(value or 0)),
    ("error_message", output.plain),
]


def describe_run(run: dict[str, Any]) -> str:
    lines = [output.fields(run, RUN_FIELDS)]
    if run["result"] is not None:
        lines.append(f"result: {output.plain(json.dumps(run['result'], ensure_ascii=False))}")
    if run["error_backtrace"]:
        lines += ["backtrace:", *(output.plain(line) for line in run["error_backtrace"].rstrip().splitlines())]
    return "\n".join(lines)


@runs.command("show")
@click.argument("run_id", metavar="ID")
@json_option
@click.pass_context
def runs_show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Everything about one run: times, resources, result, error and backtrace."""
    number = parse_id(run_id, "run")
    current_app().open(writes=False)
    data = history.get_run(number)
    emit(_json(ctx, as_json), data, lambda: describe_run(data))


@runs.command("logs")
@click.argument("run_id", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="Keep printing while the run is in progress.")
@json_option
@click.pass_context
def runs_logs(ctx: click.Context, run_id: str, follow: bool, as_json: bool) -> None:
    """What the attempt printed and logged, in order."""
    number = parse_id(run_id, "run")
    as_json = _json(ctx, as_json)
    if follow and as_json:
        raise DfjobError("--follow prints lines as they come; it does not take --json")
    current_app().open(writes=False)
    if follow:
        for line in runlogs.follow(number):
            click.echo(line)
        return
    log = runlogs.read(number)
    emit(as_json, log, lambda: "\n".join(runlogs.render(log)))


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
    flow_id = _flow_id(flow_ref)
    rows = history.list_jobs(queue_name, status, flow_id, limit, since=after)
    if as_json:
        emit(True, rows, str)
        return
    total = history.count_jobs(queue_name, status, flow_id, since=after) if len(rows) == limit else len(rows)
    emit(False, rows, lambda: output.table(_with_attempts(rows), JOB_COLUMNS, total, history.COUNT_CAP))


JOB_FIELDS = [
    ("id", output.plain),
    ("data_flow_name", output.plain),
    ("queue", output.plain),
    ("priority", output.plain),
    ("status", output.plain),
    ("attempts", output.plain),
    ("max_attempts", output.plain),
    ("rescues", output.plain),
    ("key", output.plain),
    ("triggered_by", output.plain),
    ("scheduled_for", output.plain),
    ("upstream_job_id", output.plain),
    ("run_at", output.plain),
    ("created_at", output.plain),
    ("finished_at", output.plain),
    ("locked_by", output.plain),
    ("cancel_requested", output.yes_no),
    ("last_error", output.plain),
]


def describe_job(job: dict[str, Any]) -> str:
    lines = [output.fields(job, JOB_FIELDS)]
    lines.append(f"params: {output.plain(json.dumps(job['params'], ensure_ascii=False))}")
    lines += ["", "Runs", output.table(job["runs"], RUN_COLUMNS)]
    return "\n".join(lines)


@jobs.command("show")
@click.argument("job_id", metavar="ID")
@json_option
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """One job with every attempt's run."""
    number = parse_id(job_id, "job")
    current_app().open(writes=False)
    data = history.get_job(number, with_runs=True)
    emit(_json(ctx, as_json), data, lambda: describe_job(data))


@jobs.command("cancel")
@click.argument("job_id", metavar="ID")
@json_option
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Cancel a queued job, or stop a running one (its run ends failed, "cancelled")."""
    number = parse_id(job_id, "job")
    current_app().open()
    status = cancel_job(number)
    data = history.get_job(number)
    if status == JobStatus.RUNNING:
        message = f"Asked the worker of job {number} to stop it; the job ends cancelled"
    else:
        message = f"Cancelled job {number}"
    emit(_json(ctx, as_json), data, lambda: message)


@jobs.command("retry")
@click.argument("job_id", metavar="ID")
@json_option
@click.pass_context
def jobs_retry(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Re-queue a failed or cancelled job to run now, with fresh attempts."""
    number = parse_id(job_id, "job")
    current_app().open()
    retry_job(number)
    data = history.get_job(number)
    emit(_json(ctx, as_json), data, lambda: f"Re-queued job {number}")


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
