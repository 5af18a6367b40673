"""The `dfjob` command: parse, call one function, print text or JSON. No SQL, no business rules.

Every refused request ends as one `Error: …` line on stderr and exit status 1; exit 2 is left to
click's own parse errors; tracebacks appear only with `--debug`.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn

import click
import peewee

from dfjob import __version__, clock, dbclock, events, flowfile, history, migrations, overview, registry, signals
from dfjob.backfill import backfill
from dfjob.config import LOG_LEVELS, Settings, check_queue_name, is_id, load_settings, resolve_path
from dfjob.db import (
    DEFAULT_NETWORK_TIMEOUT,
    close_database,
    connect,
    describe_error,
    is_connection_error,
    redact_url,
    reset_connection,
    scrub,
    set_statement_limit,
    sqlite_path,
)
from dfjob.errors import DatabaseUnavailable, DfjobError
from dfjob.flow import add_import_paths
from dfjob.heartbeat import heartbeat as run_heartbeat
from dfjob.registry import FlowSpec, flow_to_dict, get_flow, parse_config_json
from dfjob.schedule import parse_duration
from dfjob.signals import on_stop
from dfjob.store import check_finished_statuses, store
from dfjob.store.rows import FINISHED
from dfjob.text import printable
from dfjob.trigger import check_key, parse_iso_option, parse_params, parse_run_at, retry_job
from dfjob.trigger import request as request_trigger

_debug = False
# Commands that run until stopped: SIGTERM/SIGINT stop them cleanly (see `signals`).
DAEMONS = frozenset({"worker", "scheduler", "serve"})
MAX_START_BACKOFF = 30.0


class App:
    """What every command shares: settings, read once; the database, opened on first need."""

    def __init__(self, config_path: str | None, database_url: str | None, log_format: str | None) -> None:
        self._args = (config_path, database_url, log_format)
        self._settings: Settings | None = None
        self._open = False

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(*self._args)
        return self._settings

    def open(
        self, writes: bool = True, daemon: bool = False, network_timeout: float = DEFAULT_NETWORK_TIMEOUT
    ) -> Settings:
        """Settings, logging, monitoring callbacks and a database at this release's schema.

        A command that writes creates the tables of an empty database; one that only reads
        (`writes=False`) creates nothing and refuses a database that is not there.
        """
        settings = self.settings
        if not self._open:
            level = settings.log.level
            if not daemon and events.resolved_format(settings.log.format) == "console" and level != "debug":
                # At a terminal a command's own line says what happened; its lifecycle events
                # (still given to callbacks, and to JSON logs) would only say it twice.
                level = max(level, "warning", key=LOG_LEVELS.index)
            events.configure_logging(settings.log.format, level)
            # Flow folders first: monitoring callbacks may live there too.
            add_import_paths(tuple(resolve_path(settings, path) for path in settings.flows.paths))
            events.load_callbacks(settings)
            self._prepare(writes, daemon, network_timeout)
            dbclock.sync()
            self._open = True
        return settings

    def _prepare(self, writes: bool, daemon: bool, network_timeout: float) -> None:
        """Open the database and check its schema. A daemon whose database cannot be reached
        waits for it (`db.unavailable`, with backoff) instead of exiting; a stop ends the wait."""
        backoff = 0.0
        while True:
            try:
                migrations.prepare(create=writes, where=self.connect(writes, network_timeout))
                return
            except Exception as exc:
                if not daemon or not (isinstance(exc, DatabaseUnavailable) or is_connection_error(exc)):
                    raise
                backoff = min(MAX_START_BACKOFF, max(1.0, backoff * 2))
                events.emit(events.DB_UNAVAILABLE, error=str(exc) or describe_error(exc), retry_in=backoff)
                reset_connection()
                if signals.stopped.wait(backoff):
                    raise SystemExit(0) from None

    def connect(self, writes: bool, network_timeout: float = DEFAULT_NETWORK_TIMEOUT) -> str:
        """Open the database without checking its schema; returns how to name it in messages.
        Without `writes`, a SQLite file that does not exist is refused rather than created."""
        settings = self.settings
        url = settings.database.url
        if url.startswith("sqlite:"):
            where = sqlite_path(url, settings.base_dir)
            if not writes and where != ":memory:" and not os.path.exists(where):
                raise DfjobError(f"no dfjob database at {where} (run `dfjob db init`)")
        else:
            where = f"{redact_url(url)} (schema {settings.database.schema})"
        database = settings.database
        connect(url, settings.base_dir, database.schema, network_timeout, database.prepared_statements)
        return where


def _app() -> App:
    app = click.get_current_context().find_object(App)
    if app is None:
        raise RuntimeError("a dfjob command ran outside the `dfjob` group")
    return app


def _emit(as_json: bool, value: Any, text: Callable[[], str]) -> None:
    # Callbacks print to stderr only while stdout is theirs to borrow: let them finish first.
    events.flush()
    if as_json:
        click.echo(json.dumps(value, ensure_ascii=False))
    else:
        click.echo(text())


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if row.get(col) is None else printable(str(row.get(col)))) for col in columns] for row in rows]
    widths = [max(len(col), *(len(line[i]) for line in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(width) for col, width in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells]
    return "\n".join(lines)


def _describe_flow(flow: dict[str, Any]) -> str:
    keys = [
        "id", "name", "class_path", "queue", "priority", "enabled", "schedule", "max_attempts", "timeout",
        "last_run_at", "last_run_status", "next_run_at",
    ]  # fmt: skip
    lines = [f"{key}: {'' if flow[key] is None else printable(str(flow[key]))}" for key in keys]
    lines.append(f"configuration: {printable(json.dumps(flow['configuration'], ensure_ascii=False))}")
    return "\n".join(lines)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", help="Config file (default: $DFJOB_CONFIG, ./dfjob.toml).")
@click.option("--database-url", metavar="URL", help="Overrides database.url and $DFJOB_DATABASE_URL.")
@click.option("--log-format", type=click.Choice(["json", "console", "auto"]), help="Overrides log.format.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="dfjob")
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, database_url: str | None, log_format: str | None, debug: bool
) -> None:
    """dfjob: run Python data flows on a schedule and on demand, with a full run history."""
    global _debug
    _debug = debug
    if ctx.invoked_subcommand not in DAEMONS:
        signals.release()
    ctx.obj = App(config_path, database_url, log_format)


# -- db ------------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """The database."""


@db.command("init")
@json_option
def db_init(as_json: bool) -> None:
    """Create the tables (idempotent)."""
    settings = _app().open()
    url = redact_url(settings.database.url)
    data = {"database": url, "schema": "ready", "version": migrations.LATEST}
    _emit(as_json, data, lambda: f"Tables ready in {url} (schema version {migrations.LATEST})")


def _step(step: migrations.Step) -> dict[str, Any]:
    return {"version": step.version, "name": step.name}


@db.command("upgrade")
@json_option
def db_upgrade(as_json: bool) -> None:
    """Bring the database to this release's schema, one transaction per step."""
    _app().connect(writes=True)
    done = migrations.upgrade()
    data = {"from": done.before, "to": done.after, "applied": [_step(step) for step in done.applied]}

    def text() -> str:
        if done.before == 0:
            return f"Created the schema at version {done.after}"
        if not done.applied:
            return f"Schema version {done.after}: nothing to do"
        lines = [f"Applied {step.version}: {step.name}" for step in done.applied]
        return "\n".join([*lines, f"Schema version {done.before} -> {done.after}"])

    _emit(as_json, data, text)


@db.command("status")
@json_option
def db_status(as_json: bool) -> None:
    """The database's schema version and the steps `db upgrade` would apply."""
    _app().connect(writes=False)
    version = migrations.database_version()
    steps = migrations.pending(version) if version else []
    data = {"version": version, "latest": migrations.LATEST, "pending": [_step(step) for step in steps]}

    def text() -> str:
        if version == 0:
            return f"No dfjob tables yet (this dfjob creates version {migrations.LATEST}: `dfjob db init`)"
        if version > migrations.LATEST:
            return f"Schema version {version}, newer than this dfjob ({migrations.LATEST}): upgrade dfjob"
        lines = [f"Schema version {version} (this dfjob: {migrations.LATEST})"]
        lines += [f"pending {step.version}: {step.name}" for step in steps] or ["up to date"]
        return "\n".join(lines)

    _emit(as_json, data, text)


# -- flows ---------------------------------------------------------------------------------------


@cli.group()
def flows() -> None:
    """Register and inspect data flows."""


def _flow_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--queue", help="Queue its jobs go to (default: default)."),
        click.option("--priority", type=int, help="Lower runs first (default 0)."),
        click.option("--every", metavar="DUR", help="Run every DUR (90s, 5m, 2h, 1d)."),
        click.option("--cron", metavar="EXPR", help="Run on a five-field cron expression (UTC)."),
        click.option("--tz", metavar="ZONE", help="IANA time zone of --cron (default UTC), e.g. Europe/Berlin."),
        click.option("--config-json", metavar="JSON", help="The flow's configuration, a JSON object."),
        click.option("--max-attempts", type=int, help="Attempts per job (default: retry.max_attempts)."),
        click.option("--timeout", metavar="DUR", help="Stop a run that takes longer than DUR."),
        click.option("--max-running", type=int, help="Attempts of it running at once, on any host (default 1)."),
        click.option("--after", multiple=True, metavar="NAME", help="Run after this flow succeeds (repeatable)."),
        click.option("--catch-up", type=click.Choice(["skip", "all"]), help="After downtime: latest slot, or all."),
        click.option("--late-after", metavar="DUR", help="Alert (flow.late) when no run succeeded for DUR."),
        click.option("--disabled", is_flag=True, help="Switch its schedule off."),
        json_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _spec(name: str | None, class_path: str | None, options: dict[str, Any], **extra: Any) -> FlowSpec:
    config_json = options.get("config_json")
    return FlowSpec(
        name=name,
        class_path=class_path,
        queue=options.get("queue"),
        priority=options.get("priority"),
        every=options.get("every"),
        cron=options.get("cron"),
        tz=options.get("tz"),
        configuration=parse_config_json(config_json) if config_json is not None else None,
        max_attempts=options.get("max_attempts"),
        timeout=options.get("timeout"),
        max_running=options.get("max_running"),
        after=tuple(options["after"]) if options.get("after") else None,
        catch_up=options.get("catch_up"),
        late_after=options.get("late_after"),
        **extra,
    )


@flows.command("add")
@click.argument("name")
@click.option("--class", "class_path", required=True, metavar="PATH", help="package.module:ClassName")
@_flow_options
def flows_add(name: str, class_path: str, as_json: bool, disabled: bool, **options: Any) -> None:
    """Register a data flow; its class is imported and checked now."""
    settings = _app().settings
    # Everything that needs no database is checked before it is opened (or created).
    spec = _spec(name, class_path, options, enabled=not disabled)
    flow = registry.new_flow(settings, spec)
    _app().open()
    registry.save([(flow, spec.after)])
    data = flow_to_dict(flow, settings.retry.max_attempts)
    _emit(as_json, data, lambda: f"Added data flow {data['id']} ({data['name']})")


@flows.command("set")
@click.argument("ref", metavar="ID|NAME")
@click.option("--name", help="Rename it.")
@click.option("--class", "class_path", metavar="PATH", help="package.module:ClassName")
@click.option("--no-schedule", is_flag=True, help="Remove its schedule.")
@click.option("--no-timeout", is_flag=True, help="Remove its timeout.")
@click.option("--no-max-attempts", is_flag=True, help="Use retry.max_attempts again.")
@click.option("--no-after", is_flag=True, help="Run after no other flow.")
@click.option("--no-late-after", is_flag=True, help="Never alert that it is late.")
@click.option("--enabled", is_flag=True, help="Switch its schedule on.")
@_flow_options
def flows_set(
    ref: str, name: str | None, class_path: str | None, no_schedule: bool, no_timeout: bool, no_max_attempts: bool,
    no_after: bool, no_late_after: bool, enabled: bool, disabled: bool, as_json: bool, **options: Any,
) -> None:  # fmt: skip
    """Change a data flow."""
    if enabled and disabled:
        raise DfjobError("give --enabled or --disabled, not both")
    state = True if enabled else False if disabled else None
    spec = _spec(
        name, class_path, options, no_schedule=no_schedule, no_timeout=no_timeout, no_max_attempts=no_max_attempts,
        no_after=no_after, no_late_after=no_late_after, enabled=state,
    )  # fmt: skip
    settings = _app().open()
    flow = registry.update_flow(settings, get_flow(ref), spec)
    data = flow_to_dict(flow, settings.retry.max_attempts)
    _emit(as_json, data, lambda: _describe_flow(data))


@flows.command("list")
@json_option
def flows_list(as_json: bool) -> None:
    """All data flows."""
    settings = _app().open(writes=False)
    rows = registry.flows_to_dicts(registry.all_flows(), settings.retry.max_attempts)
    columns = ["id", "name", "queue", "priority", "enabled", "schedule", "last_run_status", "next_run_at", "class_path"]
    _emit(as_json, rows, lambda: _table(rows, columns))


@flows.command("show")
@click.argument("ref", metavar="ID|NAME")
@json_option
def flows_show(ref: str, as_json: bool) -> None:
    """One data flow."""
    settings = _app().open(writes=False)
    data = flow_to_dict(get_flow(ref), settings.retry.max_attempts)
    _emit(as_json, data, lambda: _describe_flow(data))


def _switch(ref: str, enabled: bool, as_json: bool) -> None:
    settings = _app().open()
    data = flow_to_dict(registry.set_enabled(get_flow(ref), enabled), settings.retry.max_attempts)
    _emit(as_json, data, lambda: f"Data flow {data['id']} ({data['name']}) {'enabled' if enabled else 'disabled'}")


@flows.command("enable")
@click.argument("ref", metavar="ID|NAME")
@json_option
def flows_enable(ref: str, as_json: bool) -> None:
    """Switch a data flow's schedule on."""
    _switch(ref, True, as_json)


@flows.command("disable")
@click.argument("ref", metavar="ID|NAME")
@json_option
def flows_disable(ref: str, as_json: bool) -> None:
    """Switch a data flow's schedule off (trigger still works)."""
    _switch(ref, False, as_json)


@flows.command("remove")
@click.argument("ref", metavar="ID|NAME")
@json_option
def flows_remove(ref: str, as_json: bool) -> None:
    """Delete a data flow with its jobs and runs (refused while it has an active job)."""
    _app().open()
    flow = get_flow(ref)
    data = {"id": flow.id, "name": flow.name, "removed": True}
    registry.remove_flow(flow)
    _emit(as_json, data, lambda: f"Removed data flow {data['id']} ({data['name']})")


@flows.command("import")
@click.argument("file", metavar="FILE")
@json_option
def flows_import(file: str, as_json: bool) -> None:
    """Create or update data flows by name from a TOML file of [[flow]] tables (all or nothing)."""
    settings = _app().open()
    created, updated = flowfile.import_flows(settings, file)
    data = {"created": created, "updated": updated}
    _emit(as_json, data, lambda: f"Imported {created + updated} data flows ({created} created, {updated} updated)")


@flows.command("export")
@json_option
def flows_export(as_json: bool) -> None:
    """Print all data flows in the `flows import` format."""
    _app().open(writes=False)
    text = flowfile.export_flows()
    if as_json:
        import tomllib

        click.echo(json.dumps(tomllib.loads(text), ensure_ascii=False))
    else:
        click.echo(text, nl=False)


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
    settings = _app().open()
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
    _emit(as_json, data, lambda: message)


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
    settings = _app().open()
    flow = get_flow(ref)
    done = backfill(settings, flow, begin, until, every=every, cron=cron, parallel=parallel)
    data = {"slots": done.slots, "enqueued": done.enqueued, "deduplicated": done.deduplicated}
    message = f"{done.slots} slots: {done.enqueued} enqueued, {done.deduplicated} already there"
    _emit(as_json, data, lambda: message)


# -- daemons -------------------------------------------------------------------------------------


@cli.command()
@click.option("--queue", "queues", multiple=True, help="A queue to serve (repeatable; default worker.queues).")
@click.option("--concurrency", type=int, help="Jobs run at once (default worker.concurrency).")
@click.option("--burst", is_flag=True, help="Exit 0 once no job is ready.")
@click.option("--max-jobs", type=int, help="Exit after this many jobs.")
def worker(queues: tuple[str, ...], concurrency: int | None, burst: bool, max_jobs: int | None) -> None:
    """Claim and run jobs (the daemon). SIGTERM/SIGINT stop it gracefully; a second one at once."""
    from dfjob.worker import Worker

    settings = _app().settings
    for name in queues or settings.worker.queues:
        check_queue_name(name, settings.queues.allowed, "--queue" if queues else "worker.queues")
    if concurrency is not None and not 1 <= concurrency <= 256:
        raise DfjobError(f"--concurrency must be between 1 and 256, not {concurrency}")
    if max_jobs is not None and max_jobs < 1:
        raise DfjobError(f"--max-jobs must be at least 1, not {max_jobs}")
    # A dead network path must be noticed well within a lease (see `leases`).
    _app().open(daemon=True, network_timeout=settings.worker.lease_seconds / 4)
    set_statement_limit(settings.worker.lease_seconds / 3)
    daemon = Worker(settings, queues or None, concurrency, max_jobs)
    with on_stop(lambda count: daemon.request_stop(force=count > 1)):
        daemon.run(burst=burst)


@cli.command()
@json_option
def heartbeat(as_json: bool) -> None:
    """One pass: enqueue every enabled data flow whose schedule is due (for cron)."""
    settings = _app().open()
    result = run_heartbeat(settings)
    data = {"due": result.due, "enqueued": result.enqueued, "skipped": result.skipped}
    _emit(as_json, data, lambda: f"{result.due} due, {result.enqueued} enqueued, {result.skipped} skipped")


@cli.command()
@click.option("--interval", type=float, default=60.0, show_default=True, help="Seconds between heartbeats.")
def scheduler(interval: float) -> None:
    """Run the heartbeat every --interval seconds (the daemon); prunes history daily."""
    from dfjob.scheduler import Scheduler

    if not 0.1 <= interval <= 86400:
        raise DfjobError(f"--interval must be between 0.1 and 86400 seconds, not {interval:g}")
    settings = _app().open(daemon=True)
    daemon = Scheduler(settings, interval)
    with on_stop(lambda count: daemon.request_stop()):
        daemon.run()


@cli.command()
@json_option
def workers(as_json: bool) -> None:
    """Worker records: alive, stale (not seen for 2 x lease) or stopped."""
    _app().open(writes=False)
    rows = overview.list_workers()
    for row in rows:
        row["queues_text"] = ",".join(row["queues"])
        row["running"] = ",".join(str(job_id) for job_id in row["running_job_ids"])
    columns = ["name", "state", "host", "pid", "queues_text", "concurrency", "running", "last_seen_at"]
    shown = [{key: value for key, value in row.items() if key not in ("queues_text", "running")} for row in rows]
    _emit(as_json, shown, lambda: _table(rows, columns))


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
    _app().open(writes=False)
    rows = history.list_runs(_flow_id(flow_ref), status, limit, since=after)
    columns = ["id", "data_flow_name", "job_id", "attempt", "status", "started_at", "duration_ms", "error_message"]
    _emit(as_json, rows, lambda: _table(rows, columns))


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
    _app().open(writes=False)
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
    _emit(as_json, rows, lambda: _table(rows, columns))


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
    _app().open()
    number = _job_id(job_id)
    store().cancel(number, clock.now())
    data = history.get_job(number)
    _emit(as_json or ctx.meta.get("dfjob.json", False), data, lambda: f"Cancelled job {number}")


@jobs.command("retry")
@click.argument("job_id", metavar="ID")
@json_option
@click.pass_context
def jobs_retry(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Re-queue a failed or cancelled job to run now, with fresh attempts."""
    _app().open()
    number = _job_id(job_id)
    retry_job(number)
    data = history.get_job(number)
    _emit(as_json or ctx.meta.get("dfjob.json", False), data, lambda: f"Re-queued job {number}")


@cli.command()
@click.option("--older-than", metavar="DUR", help="Default: retention.finished_jobs.")
@click.option("--status", "statuses", multiple=True, help="Only jobs that ended so: succeeded, failed or cancelled.")
@json_option
def prune(older_than: str | None, statuses: tuple[str, ...], as_json: bool) -> None:
    """Delete finished jobs and their runs older than DUR."""
    settings = _app().settings
    seconds = parse_duration(older_than or settings.retention.finished_jobs)
    check_finished_statuses(statuses or FINISHED)
    _app().open()
    cutoff = clock.now() - timedelta(seconds=seconds)
    jobs_deleted, runs_deleted = store().prune(cutoff, statuses or FINISHED)
    data = {"jobs": jobs_deleted, "runs": runs_deleted}
    _emit(as_json, data, lambda: f"Deleted {jobs_deleted} jobs and {runs_deleted} runs")


# -- entry point ---------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    if _debug:
        click.echo(scrub(traceback.format_exc()).rstrip(), err=True)
    click.echo(f"Error: {printable(' '.join(message.split()))}", err=True)
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; every failure is one `Error: …` line and exit status 1."""
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="dfjob", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted")
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DfjobError as exc:
        _fail(str(exc))
    except peewee.DatabaseError as exc:
        _fail(f"database error: {describe_error(exc)}")
    except KeyboardInterrupt:
        _fail("interrupted")
    except Exception as exc:  # noqa: BLE001 (a bug still ends as one Error line; --debug shows it)
        _fail(f"{type(exc).__name__}: {describe_error(exc)}")
    finally:
        events.flush()
        close_database()
    sys.exit(result if isinstance(result, int) else 0)
