"""`dfjob flows …`: register, change, inspect, import and export data flows."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click

from dfjob import flowfile, registry
from dfjob.cli import output
from dfjob.cli.app import cli, current_app, emit, json_option
from dfjob.errors import DfjobError
from dfjob.registry import FlowSpec, flow_to_dict, get_flow, parse_config_json
from dfjob.text import printable

# -- flows ---------------------------------------------------------------------------------------


def _next_run(flow: dict[str, Any]) -> str:
    """When a flow runs next, as people say it, and on the clock of its zone when it has one."""
    if flow["next_run_at"] is None:
        return "-"
    text = output.when(flow["next_run_at"])
    if flow.get("next_run_at_local") and flow.get("tz") not in (None, "UTC"):
        local = datetime.fromisoformat(flow["next_run_at_local"])
        text += f" ({local:%Y-%m-%d %H:%M} {flow['tz']})"
    return text


def _describe_flow(flow: dict[str, Any]) -> str:
    keys: list[tuple[str, output.Cell]] = [
        (key, output.plain)
        for key in ("id", "name", "class_path", "queue", "priority", "enabled", "schedule", "tz", "max_attempts",
                    "timeout", "max_running", "after", "catch_up", "late_after", "last_run_at", "last_run_status",
                    "next_run_at", "next_run_at_local")
    ]  # fmt: skip
    lines = [output.fields(flow, keys)]
    lines.append(f"configuration: {printable(json.dumps(flow['configuration'], ensure_ascii=False))}")
    return "\n".join(lines)


FLOW_COLUMNS: list[tuple[str, str, output.Cell]] = [
    ("ID", "id", output.plain),
    ("NAME", "name", output.plain),
    ("QUEUE", "queue", output.plain),
    ("SCHEDULE", "schedule", output.plain),
    ("NEXT RUN", "next", output.plain),
    ("LAST RUN", "last_run_at", output.when),
    ("LAST STATUS", "last_run_status", output.plain),
    ("ENABLED", "enabled", output.yes_no),
    ("CLASS", "class_path", output.plain),
]


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
    settings = current_app().settings
    # Everything that needs no database is checked before it is opened (or created).
    spec = _spec(name, class_path, options, enabled=not disabled)
    flow = registry.new_flow(settings, spec)
    current_app().open()
    registry.save([(flow, spec.after)])
    data = flow_to_dict(flow, settings.retry.max_attempts)
    emit(as_json, data, lambda: f"Added data flow {data['id']} ({data['name']})")


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
    settings = current_app().open()
    flow = registry.update_flow(settings, get_flow(ref), spec)
    data = flow_to_dict(flow, settings.retry.max_attempts)
    emit(as_json, data, lambda: _describe_flow(data))


@flows.command("list")
@json_option
def flows_list(as_json: bool) -> None:
    """All data flows."""
    settings = current_app().open(writes=False)
    rows = registry.flows_to_dicts(registry.all_flows(), settings.retry.max_attempts)
    emit(as_json, rows, lambda: output.table([{**row, "next": _next_run(row)} for row in rows], FLOW_COLUMNS))


@flows.command("show")
@click.argument("ref", metavar="ID|NAME")
@json_option
def flows_show(ref: str, as_json: bool) -> None:
    """One data flow."""
    settings = current_app().open(writes=False)
    data = flow_to_dict(get_flow(ref), settings.retry.max_attempts)
    emit(as_json, data, lambda: _describe_flow(data))


def _switch(ref: str, enabled: bool, as_json: bool) -> None:
    settings = current_app().open()
    data = flow_to_dict(registry.set_enabled(get_flow(ref), enabled), settings.retry.max_attempts)
    emit(as_json, data, lambda: f"Data flow {data['id']} ({data['name']}) {'enabled' if enabled else 'disabled'}")


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
    current_app().open()
    flow = get_flow(ref)
    data = {"id": flow.id, "name": flow.name, "removed": True}
    registry.remove_flow(flow)
    emit(as_json, data, lambda: f"Removed data flow {data['id']} ({data['name']})")


@flows.command("import")
@click.argument("file", metavar="FILE")
@json_option
def flows_import(file: str, as_json: bool) -> None:
    """Create or update data flows by name from a TOML file of [[flow]] tables (all or nothing)."""
    settings = current_app().open()
    created, updated = flowfile.import_flows(settings, file)
    data = {"created": created, "updated": updated}
    emit(as_json, data, lambda: f"Imported {created + updated} data flows ({created} created, {updated} updated)")


@flows.command("export")
@json_option
def flows_export(as_json: bool) -> None:
    """Print all data flows in the `flows import` format."""
    current_app().open(writes=False)
    text = flowfile.export_flows()
    if as_json:
        import tomllib

        click.echo(json.dumps(tomllib.loads(text), ensure_ascii=False))
    else:
        click.echo(text, nl=False)
