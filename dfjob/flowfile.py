"""Data flows as a TOML file of `[[flow]]` tables: `flows export` writes it, `flows import` reads
it back, all or nothing. An import makes each flow exactly what the file says: a key it leaves
out takes its default. A `config` is a TOML table, or a JSON object in a string where TOML cannot
hold a value (a null, an integer over 64 bits)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from dfjob import clock
from dfjob.config import Settings, parse_json_object
from dfjob.errors import DfjobError
from dfjob.models import DataFlow
from dfjob.registry import FlowSpec, apply, flows_to_dicts, save
from dfjob.schedule import format_duration
from dfjob.text import printable

# Each key and the type TOML gives it.
KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str, "class": str, "queue": str, "priority": int, "every": str, "cron": str, "tz": str,
    "config": (dict, str), "max_attempts": int, "timeout": str, "max_running": int, "after": list,
    "catch_up": str, "late_after": str, "enabled": bool,
}  # fmt: skip


def _spec(index: int, table: Any) -> FlowSpec:
    where = f"flow #{index + 1}"
    if not isinstance(table, dict):
        raise DfjobError(f"{where}: must be a table")
    if isinstance(table.get("name"), str):
        where = f"flow #{index + 1} ({printable(table['name'])})"
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise DfjobError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    for key in ("name", "class"):
        if key not in table:
            raise DfjobError(f"{where}: missing key {key!r}")
    for key, value in table.items():
        if not isinstance(value, KEYS[key]) or (KEYS[key] is int and isinstance(value, bool)):
            raise DfjobError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    after = table.get("after", [])
    if not all(isinstance(name, str) for name in after):
        raise DfjobError(f"{where}: 'after' must be a list of data flow names")
    return FlowSpec(
        name=table["name"],
        class_path=table["class"],
        queue=table.get("queue", "default"),
        priority=table.get("priority", 0),
        every=table.get("every"),
        cron=table.get("cron"),
        no_schedule="every" not in table and "cron" not in table,
        tz=table.get("tz", "UTC"),
        configuration=_import_config(table.get("config", {}), where),
        max_attempts=table.get("max_attempts"),
        no_max_attempts="max_attempts" not in table,
        timeout=table.get("timeout"),
        no_timeout="timeout" not in table,
        max_running=table.get("max_running", 1),
        after=tuple(after),
        catch_up=table.get("catch_up", "skip"),
        late_after=table.get("late_after"),
        no_late_after="late_after" not in table,
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
    """Create or update data flows by name from a TOML file of [[flow]] tables; all or nothing.
    Returns (created, updated)."""
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
    specs = [_spec(index, table) for index, table in enumerate(tables)]
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1 and name is not None})
    if duplicates:
        raise DfjobError(f"{path}: data flow {duplicates[0]!r} appears more than once")
    now = clock.now()
    prepared: list[tuple[DataFlow, bool, FlowSpec]] = []
    for index, spec in enumerate(specs):
        existing = DataFlow.get_or_none(DataFlow.name == spec.name)
        flow = existing or DataFlow(created_at=now, max_running=1)
        try:
            apply(settings, flow, spec, now)
        except DfjobError as exc:
            raise DfjobError(f"{path}: flow #{index + 1} ({printable(spec.name or '')}): {exc}") from None
        prepared.append((flow, existing is None, spec))
    try:
        save([(flow, spec.after) for flow, _, spec in prepared])
    except DfjobError as exc:
        raise DfjobError(f"{path}: {exc}") from None
    created = sum(1 for _, new, _ in prepared if new)
    return created, len(prepared) - created


def export_flows() -> str:
    """All data flows as TOML [[flow]] tables, in the format `import_flows` reads."""
    flows = list(DataFlow.select().order_by(DataFlow.id))
    tables = []
    for flow, shown in zip(flows, flows_to_dicts(flows), strict=True):
        entries: dict[str, Any] = {
            "name": flow.name,
            "class": flow.class_path,
            "queue": flow.queue,
            "priority": flow.priority,
            "every": format_duration(flow.every_seconds) if flow.every_seconds is not None else None,
            "cron": flow.cron,
            "tz": flow.tz,
            "max_attempts": flow.max_attempts,
            "timeout": format_duration(flow.timeout_seconds) if flow.timeout_seconds is not None else None,
            "max_running": flow.max_running,
            "after": shown["after"] or None,
            "catch_up": flow.catch_up,
            "late_after": shown["late_after"],
            "enabled": bool(flow.enabled),
            "config": _export_config(flow.configuration),
        }
        tables.append({key: value for key, value in entries.items() if value is not None})
    return tomli_w.dumps({"flow": tables}) if tables else ""
