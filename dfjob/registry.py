"""Data flows: register, change, inspect, remove, and import/export them as TOML.

A class path is imported and checked when a flow is added or its class changes, with
`flows.paths` on the import path and the module allow-list checked first. Every function either
does all it was asked or raises DfjobError having written nothing.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import peewee
import tomli_w

from dfjob import clock
from dfjob.config import (
    Settings,
    check_flow_name,
    check_json_object,
    check_queue_name,
    is_id,
    parse_json_object,
    resolve_path,
)
from dfjob.db import write_transaction
from dfjob.errors import DfjobError
from dfjob.flow import add_import_paths, load_flow_class
from dfjob.models import DataFlow
from dfjob.schedule import Schedule, format_duration, parse_duration
from dfjob.store import store
from dfjob.text import printable

IMPORT_KEYS = ("name", "class", "queue", "priority", "every", "cron", "config", "max_attempts", "timeout", "enabled")
MAX_PRIORITY = 2**31 - 1


@dataclass(frozen=True)
class FlowSpec:
    """Everything `flows add` and `flows set` can say about a data flow (None: not given)."""

    name: str | None = None
    class_path: str | None = None
    queue: str | None = None
    priority: int | None = None
    every: str | None = None
    cron: str | None = None
    no_schedule: bool = False
    configuration: dict[str, Any] | None = None
    max_attempts: int | None = None
    timeout: str | None = None
    enabled: bool | None = None


def parse_config_json(text: str) -> dict[str, Any]:
    """A `--config-json` value: a JSON object."""
    return parse_json_object(text, "--config-json")


def check_priority(value: int, where: str = "--priority") -> int:
    if not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise DfjobError(f"{where} must be between {-MAX_PRIORITY} and {MAX_PRIORITY}")
    return value


def check_max_attempts(value: int, where: str = "--max-attempts") -> int:
    if not 1 <= value <= 1000:
        raise DfjobError(f"{where} must be between 1 and 1000")
    return value


def all_flows() -> list[DataFlow]:
    return list(DataFlow.select().order_by(DataFlow.id))


def check_class_path(settings: Settings, class_path: str) -> None:
    """Import the class now, so a typo is refused at `add`, not at 3 a.m."""
    add_import_paths(tuple(resolve_path(settings, path) for path in settings.flows.paths))
    # User modules may print when imported; keep stdout for our own (JSON) output.
    with contextlib.redirect_stdout(sys.stderr):
        load_flow_class(class_path, settings.flows.allowed_modules)


def get_flow(ref: str) -> DataFlow:
    """A data flow by id (all digits) or by name."""
    found = DataFlow.id == int(ref) if is_id(ref) else DataFlow.name == ref
    flow = DataFlow.get_or_none(found)
    if flow is None:
        raise DfjobError(f"no data flow with {'id' if is_id(ref) else 'name'} {ref!r}")
    return flow


def _schedule_of(flow: DataFlow) -> Schedule:
    return Schedule(every_seconds=flow.every_seconds, cron=flow.cron)


def _apply(settings: Settings, flow: DataFlow, spec: FlowSpec, now: datetime) -> DataFlow:
    """Validate `spec` and copy what it gives onto `flow` (unsaved)."""
    if spec.every is not None and spec.cron is not None:
        raise DfjobError("give --every or --cron, not both")
    if spec.no_schedule and (spec.every is not None or spec.cron is not None):
        raise DfjobError("--no-schedule cannot be combined with --every or --cron")
    if spec.name is not None:
        flow.name = check_flow_name(spec.name)
    if spec.queue is not None:
        flow.queue = check_queue_name(spec.queue, settings.queues.allowed)
    if spec.priority is not None:
        flow.priority = check_priority(spec.priority)
    if spec.configuration is not None:
        flow.configuration = check_json_object(spec.configuration, "configuration")
    if spec.max_attempts is not None:
        flow.max_attempts = check_max_attempts(spec.max_attempts)
    if spec.timeout is not None:
        flow.timeout_seconds = parse_duration(spec.timeout)
    if spec.enabled is not None:
        flow.enabled = spec.enabled
    old_schedule = _schedule_of(flow) if flow.id else Schedule()
    if spec.every is not None:
        flow.every_seconds, flow.cron = parse_duration(spec.every), None
    elif spec.cron is not None:
        flow.every_seconds, flow.cron = None, " ".join(spec.cron.split())
    elif spec.no_schedule:
        flow.every_seconds, flow.cron = None, None
    schedule = _schedule_of(flow)
    if schedule != old_schedule or (schedule.is_set and flow.next_run_at is None):
        flow.next_run_at = schedule.first_run_at(now)
        if schedule.is_set and flow.next_run_at is None:
            raise DfjobError(f"cron expression {flow.cron!r} never fires")
    # A queue the flow got by default must pass `queues.allowed` too.
    check_queue_name(flow.queue, settings.queues.allowed)
    if spec.class_path is not None:
        check_class_path(settings, spec.class_path)
        flow.class_path = spec.class_path
    flow.updated_at = now
    return flow


def add_flow(settings: Settings, spec: FlowSpec) -> DataFlow:
    """Register a new data flow."""
    return save_new_flow(new_flow(settings, spec))


def new_flow(settings: Settings, spec: FlowSpec) -> DataFlow:
    """A validated, unsaved data flow: every check that needs no database (the class included)."""
    if spec.name is None or spec.class_path is None:
        raise DfjobError("a data flow needs a name and a class")
    now = clock.now()
    flow = DataFlow(queue="default", priority=0, enabled=True, configuration={}, created_at=now)
    return _apply(settings, flow, spec, now)


def save_new_flow(flow: DataFlow) -> DataFlow:
    """Store a flow from `new_flow`; its name must be free."""
    if DataFlow.select().where(DataFlow.name == flow.name).exists():
        raise DfjobError(f"a data flow named {flow.name!r} already exists")
    try:
        with write_transaction():
            flow.save()
    except peewee.IntegrityError:
        raise DfjobError(f"a data flow named {flow.name!r} already exists") from None
    return flow


def update_flow(settings: Settings, flow: DataFlow, spec: FlowSpec) -> DataFlow:
    """Change a data flow; only what `spec` gives changes."""
    _apply(settings, flow, spec, clock.now())
    if spec.name is not None and DataFlow.select().where(DataFlow.name == flow.name, DataFlow.id != flow.id).exists():
        raise DfjobError(f"a data flow named {flow.name!r} already exists")
    try:
        with write_transaction():
            flow.save()
    except peewee.IntegrityError:
        raise DfjobError(f"a data flow named {flow.name!r} already exists") from None
    return flow


def set_enabled(flow: DataFlow, enabled: bool) -> DataFlow:
    """Switch a flow's schedule on or off; an enabled flow whose schedule has no next time gets one."""
    now = clock.now()
    flow.enabled = enabled
    schedule = _schedule_of(flow)
    if enabled and schedule.is_set and flow.next_run_at is None:
        flow.next_run_at = schedule.first_run_at(now)
    flow.updated_at = now
    with write_transaction():
        flow.save()
    return flow


def remove_flow(flow: DataFlow) -> None:
    """Delete a data flow with its jobs and runs; refused while it has an active job."""
    with write_transaction():
        active = store().active_job_id(flow.id)
        if active is not None:
            raise DfjobError(f"data flow {flow.name!r} has an active job {active}; cancel it or wait for it first")
        flow.delete_instance()


def flow_to_dict(flow: DataFlow, default_max_attempts: int | None = None) -> dict[str, Any]:
    """The contract's data flow object. `max_attempts` is the flow's own, else the default that
    applies to it (`retry.max_attempts`) when one is given."""
    schedule = _schedule_of(flow)
    return {
        "id": flow.id,
        "name": flow.name,
        "class_path": flow.class_path,
        "queue": flow.queue,
        "priority": flow.priority,
        "enabled": bool(flow.enabled),
        "schedule": schedule.describe(),
        "every": format_duration(flow.every_seconds) if flow.every_seconds is not None else None,
        "cron": flow.cron,
        "configuration": flow.configuration,
        "max_attempts": flow.max_attempts or default_max_attempts,
        "timeout": format_duration(flow.timeout_seconds) if flow.timeout_seconds is not None else None,
        "last_run_at": clock.iso(flow.last_run_at),
        "last_run_status": flow.last_run_status,
        "next_run_at": clock.iso(flow.next_run_at),
        "created_at": clock.iso(flow.created_at),
        "updated_at": clock.iso(flow.updated_at),
    }


# -- import / export -----------------------------------------------------------------------------


def _spec_from_table(index: int, table: Any) -> FlowSpec:
    where = f"flow #{index + 1}"
    if not isinstance(table, dict):
        raise DfjobError(f"{where}: must be a table")
    if isinstance(table.get("name"), str):
        where = f"flow #{index + 1} ({printable(table['name'])})"
    unknown = sorted(set(table) - set(IMPORT_KEYS))
    if unknown:
        raise DfjobError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(IMPORT_KEYS)})")
    for key in ("name", "class"):
        if key not in table:
            raise DfjobError(f"{where}: missing key {key!r}")
    types: dict[str, type | tuple[type, ...]] = {
        "name": str, "class": str, "queue": str, "priority": int, "every": str, "cron": str,
        "config": (dict, str), "max_attempts": int, "timeout": str, "enabled": bool,
    }  # fmt: skip
    for key, value in table.items():
        if not isinstance(value, types[key]) or (types[key] is int and isinstance(value, bool)):
            raise DfjobError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return FlowSpec(
        name=table["name"],
        class_path=table["class"],
        queue=table.get("queue", "default"),
        priority=table.get("priority", 0),
        every=table.get("every"),
        cron=table.get("cron"),
        no_schedule="every" not in table and "cron" not in table,
        configuration=_import_config(table.get("config", {}), where),
        max_attempts=table.get("max_attempts"),
        timeout=table.get("timeout"),
        enabled=table.get("enabled", True),
    )


def _import_config(value: dict[str, Any] | str, where: str) -> dict[str, Any]:
    """`config` is a TOML table, or a JSON object in a string (for what TOML cannot hold: null)."""
    return parse_json_object(value, f"{where}: config") if isinstance(value, str) else value


def _export_config(configuration: dict[str, Any]) -> dict[str, Any] | str:
    """A TOML table, unless TOML cannot hold it (a null, an integer over 64 bits): then the JSON
    text, which import also reads."""

    def fits(value: Any) -> bool:
        if value is None:
            return False
        if isinstance(value, int) and not isinstance(value, bool):
            return -(2**63) <= value < 2**63
        if isinstance(value, dict):
            return all(fits(item) for item in value.values())
        if isinstance(value, list):
            return all(fits(item) for item in value)
        return True

    return configuration if fits(configuration) else json.dumps(configuration, sort_keys=True, ensure_ascii=False)


def import_flows(settings: Settings, path: str) -> tuple[int, int]:
    """Create or update data flows by name from a TOML file of [[flow]] tables; all or nothing."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DfjobError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DfjobError(f"{path}: invalid TOML: {exc}") from None
    extra = sorted(set(data) - {"flow"})
    if extra:
        raise DfjobError(f"{path}: unknown top-level key {extra[0]!r} (expected [[flow]] tables)")
    tables = data.get("flow", [])
    if not isinstance(tables, list):
        raise DfjobError(f"{path}: 'flow' must be an array of tables ([[flow]])")
    specs = [_spec_from_table(index, table) for index, table in enumerate(tables)]
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1 and name is not None})
    if duplicates:
        raise DfjobError(f"{path}: data flow {duplicates[0]!r} appears more than once")
    now = clock.now()
    prepared: list[tuple[DataFlow, bool]] = []
    for index, spec in enumerate(specs):
        existing = DataFlow.get_or_none(DataFlow.name == spec.name)
        flow = existing or DataFlow(created_at=now)
        # The file is the whole truth about a flow: a key it leaves out takes its default.
        flow.max_attempts = flow.timeout_seconds = None
        try:
            _apply(settings, flow, spec, now)
        except DfjobError as exc:
            raise DfjobError(f"{path}: flow #{index + 1} ({printable(spec.name or '')}): {exc}") from None
        prepared.append((flow, existing is None))
    with write_transaction():
        for flow, _ in prepared:
            flow.save()
    created = sum(1 for _, new in prepared if new)
    return created, len(prepared) - created


def export_flows() -> str:
    """All data flows as TOML [[flow]] tables, in the format `import_flows` reads."""
    tables = []
    for flow in DataFlow.select().order_by(DataFlow.id):
        entries: dict[str, Any] = {
            "name": flow.name,
            "class": flow.class_path,
            "queue": flow.queue,
            "priority": flow.priority,
            "every": format_duration(flow.every_seconds) if flow.every_seconds is not None else None,
            "cron": flow.cron,
            "max_attempts": flow.max_attempts,
            "timeout": format_duration(flow.timeout_seconds) if flow.timeout_seconds is not None else None,
            "enabled": bool(flow.enabled),
            "config": _export_config(flow.configuration),
        }
        tables.append({key: value for key, value in entries.items() if value is not None})
    return tomli_w.dumps({"flow": tables}) if tables else ""
