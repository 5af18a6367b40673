"""`dfjob status`, `workers`, `queues` and `doctor`: what runs, who runs it, and what is wrong."""

from __future__ import annotations

import sys

import click

from dfjob import clock, doctor, overview
from dfjob.cli import output
from dfjob.cli.app import cli, current_app, emit, json_option
from dfjob.config import check_queue_name
from dfjob.store import store

QUEUE_COLUMNS = [
    ("QUEUE", "queue", output.plain),
    ("READY", "ready", output.plain),
    ("SCHEDULED", "scheduled", output.plain),
    ("RUNNING", "running", output.plain),
    ("FAILED 24H", "failed_24h", output.plain),
    ("OLDEST READY", "oldest_ready_seconds", lambda value: "-" if value is None else output.span(value, coarse=True)),
    ("WORKERS", "workers", output.plain),
    ("PAUSED", "paused", output.yes_no),
]
WORKER_COLUMNS = [
    ("NAME", "name", output.plain),
    ("STATE", "state", output.plain),
    ("HOST", "host", output.plain),
    ("PID", "pid", output.plain),
    ("QUEUES", "queues", output.plain),
    ("CONCURRENCY", "concurrency", output.plain),
    ("RUNNING", "running_job_ids", output.plain),
    ("STARTED", "started_at", output.when),
    ("LAST SEEN", "last_seen_at", output.when),
]


@cli.command()
@json_option
def status(as_json: bool) -> None:
    """One screen: queues, workers, what is due next, recent failures, warnings."""
    current_app().open(writes=False)
    data = overview.status()

    def text() -> str:
        parts = ["Queues", output.table(data["queues"], QUEUE_COLUMNS), "", "Workers"]
        parts.append(output.table(data["workers"], WORKER_COLUMNS[:-2] + WORKER_COLUMNS[-1:]))
        due: list[tuple[str, str, output.Cell]] = [("FLOW", "data_flow_name", output.plain)]
        due += [("QUEUE", "queue", output.plain), ("DUE", "next_run_at", output.when)]
        parts += ["", "Next due", output.table(data["next_due"], due), "", "Recent failures"]
        failed: list[tuple[str, str, output.Cell]] = [("RUN", "run_id", output.plain), ("JOB", "job_id", output.plain)]
        failed += [("FLOW", "data_flow_name", output.plain), ("ENDED", "ended_at", output.when)]
        failed.append(("ERROR", "error_message", output.short(70)))
        parts.append(output.table(data["recent_failures"], failed))
        parts += ["", "Warnings"]
        parts += [f"! {output.plain(warning)}" for warning in data["warnings"]] or ["(none)"]
        return "\n".join(parts)

    emit(as_json, data, text)


@cli.command()
@json_option
def workers(as_json: bool) -> None:
    """Worker records: alive, stale (not seen for 2 x lease) or stopped."""
    current_app().open(writes=False)
    rows = overview.list_workers()
    emit(as_json, rows, lambda: output.table(rows, WORKER_COLUMNS))


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
def queues(ctx: click.Context, as_json: bool) -> None:
    """Per-queue counts and live workers; `queues pause Q`, `queues resume Q`."""
    if ctx.invoked_subcommand is not None:
        ctx.meta["dfjob.json"] = as_json
        return
    current_app().open(writes=False)
    rows = overview.list_queues()
    emit(as_json, rows, lambda: output.table(rows, QUEUE_COLUMNS))


def _set_paused(ctx: click.Context, queue: str, paused: bool, as_json: bool) -> None:
    settings = current_app().settings
    check_queue_name(queue, settings.queues.allowed)
    current_app().open()
    store().set_paused(queue, paused, clock.now())
    row = next(item for item in overview.list_queues() if item["queue"] == queue)
    word = "Paused" if paused else "Resumed"
    detail = f" ({row['ready']} ready jobs wait)" if paused and row["ready"] else ""
    emit(as_json or ctx.meta.get("dfjob.json", False), row, lambda: f"{word} queue {queue}{detail}")


@queues.command("pause")
@click.argument("queue")
@json_option
@click.pass_context
def queues_pause(ctx: click.Context, queue: str, as_json: bool) -> None:
    """Stop claiming this queue's jobs (they still get enqueued)."""
    _set_paused(ctx, queue, True, as_json)


@queues.command("resume")
@click.argument("queue")
@json_option
@click.pass_context
def queues_resume(ctx: click.Context, queue: str, as_json: bool) -> None:
    """Claim this queue's jobs again."""
    _set_paused(ctx, queue, False, as_json)


@cli.command("doctor")
@json_option
def doctor_command(as_json: bool) -> None:
    """Check the config, database, schema, clock, queues and workers; exit 1 when something is wrong."""
    app = current_app()
    app.configure_logging(daemon=False)
    report = doctor.diagnose(app.settings, lambda: app.connect(writes=False))
    data = report.as_dict()

    def text() -> str:
        marks = {"ok": "ok  ", "warning": "warn", "error": "FAIL"}
        lines = [f"[{marks[item.level]}] {output.plain(item.message)}" for item in report.findings]
        lines.append("All good." if report.ok else "Something is wrong (see FAIL above).")
        return "\n".join(lines)

    emit(as_json, data, text)
    if not report.ok:
        sys.exit(1)
