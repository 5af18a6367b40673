"""Data flows: register, change, inspect and remove them.

A class path is imported and checked when a flow is added or its class changes, with
`flows.paths` on the import path and the module allow-list checked first. Every function either
does all it was asked or raises DfjobError having written nothing. A flow's `max_running` lives
in its run limit (`run_limits`), its `after` in `flow_upstreams`; both are written in the same
transaction as the flow, and a cycle of `after` is refused.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import peewee

from dfjob import clock, wakeup
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
from dfjob.models import DataFlow, FlowUpstream
from dfjob.schedule import Schedule, check_tz, format_duration, parse_duration
from dfjob.store import store

MAX_PRIORITY = 2**31 - 1
MAX_RUNNING = 1000
CATCH_UP = ("skip", "all")


@dataclass(frozen=True)
class FlowSpec:
    """Everything `flows add`, `flows set` and an import can say about a data flow (None: not
    given; the `no_*` flags clear a setting)."""

    name: str | None = None
    class_path: str | None = None
    queue: str | None = None
    priority: int | None = None
    every: str | None = None
    cron: str | None = None
    no_schedule: bool = False
    tz: str | None = None
    configuration: dict[str, Any] | None = None
    max_attempts: int | None = None
    no_max_attempts: bool = False
    timeout: str | None = None
    no_timeout: bool = False
    max_running: int | None = None
    after: tuple[str, ...] | None = None
    no_after: bool = False
    catch_up: str | None = None
    late_after: str | None = None
    no_late_after: bool = False
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


def check_max_running(value: int, where: str = "--max-running") -> int:
    if not 1 <= value <= MAX_RUNNING:
        raise DfjobError(f"{where} must be between 1 and {MAX_RUNNING}")
    return value


def all_flows() -> list[DataFlow]:
    return list(DataFlow.select().order_by(DataFlow.id))


def flows_page(after_id: int | None = None, limit: int | None = None, before_id: int | None = None) -> list[DataFlow]:
    """Flows in id order, those after `after_id` and before `before_id`, at most `limit` of them."""
    query = DataFlow.select().order_by(DataFlow.id)
    if after_id is not None:
        query = query.where(DataFlow.id > after_id)
    if before_id is not None:
        query = query.where(DataFlow.id < before_id)
    if limit is not None:
        query = query.limit(limit)
    return list(query)


def check_class_path(settings: Settings, class_path: str) -> None:
    """Import the class now, so a typo is refused at `add`, not at 3 a.m."""
    add_import_paths(tuple(resolve_path(settings, path) for path in settings.flows.paths))
    # User modules may print when imported; keep stdout for our own (JSON) output.
    with contextlib.redirect_stdout(sys.stderr):
        load_flow_class(class_path, settings.flows.allowed_modules)


def get_flow(ref: str) -> DataFlow:
    """A data flow by id (all ASCII digits) or by name."""
    flow = DataFlow.get_or_none(DataFlow.id == int(ref) if is_id(ref) else DataFlow.name == ref)
    if flow is None:
        raise DfjobError(f"no data flow with {'id' if is_id(ref) else 'name'} {ref!r}")
    return flow


def schedule_of(flow: DataFlow) -> Schedule:
    return Schedule(every_seconds=flow.every_seconds, cron=flow.cron, tz=flow.tz)


def apply(settings: Settings, flow: DataFlow, spec: FlowSpec, now: datetime) -> DataFlow:
    """Validate `spec` and copy what it gives onto `flow` (unsaved); needs no database but for
    nothing. `after` is checked here for its names only (see `save`)."""
    if spec.every is not None and spec.cron is not None:
        raise DfjobError("give --every or --cron, not both")
    if spec.no_schedule and (spec.every is not None or spec.cron is not None):
        raise DfjobError("--no-schedule cannot be combined with --every or --cron")
    for value, cleared, option in (
        (spec.max_attempts, spec.no_max_attempts, "--max-attempts"),
        (spec.timeout, spec.no_timeout, "--timeout"),
        (spec.after, spec.no_after, "--after"),
        (spec.late_after, spec.no_late_after, "--late-after"),
    ):
        if value is not None and cleared:
            raise DfjobError(f"{option} cannot be combined with --no-{option[2:]}")
    if spec.name is not None:
        flow.name = check_flow_name(spec.name)
    if spec.queue is not None:
        flow.queue = check_queue_name(spec.queue, settings.queues.allowed)
    if spec.priority is not None:
        flow.priority = check_priority(spec.priority)
    if spec.configuration is not None:
        flow.configuration = check_json_object(spec.configuration, "configuration")
    if spec.max_attempts is not None or spec.no_max_attempts:
        flow.max_attempts = None if spec.no_max_attempts else check_max_attempts(spec.max_attempts or 0)
    if spec.timeout is not None or spec.no_timeout:
        flow.timeout_seconds = None if spec.no_timeout else parse_duration(spec.timeout or "")
    if spec.max_running is not None:
        flow.max_running = check_max_running(spec.max_running)
    if spec.catch_up is not None:
        if spec.catch_up not in CATCH_UP:
            raise DfjobError(f"--catch-up must be skip or all, not {spec.catch_up!r}")
        flow.catch_up = spec.catch_up
    if spec.late_after is not None or spec.no_late_after:
        flow.late_after_seconds = None if spec.no_late_after else parse_duration(spec.late_after or "")
    for name in spec.after or ():
        check_flow_name(name)
    if spec.enabled is not None:
        flow.enabled = spec.enabled
    _apply_schedule(flow, spec, now)
    # A queue the flow got by default must pass `queues.allowed` too.
    check_queue_name(flow.queue, settings.queues.allowed)
    if spec.class_path is not None:
        check_class_path(settings, spec.class_path)
        flow.class_path = spec.class_path
    flow.updated_at = now
    return flow


def _apply_schedule(flow: DataFlow, spec: FlowSpec, now: datetime) -> None:
    """A new schedule never makes a flow due earlier than its last run plus the new interval."""
    old = schedule_of(flow) if flow.id else Schedule()
    if spec.every is not None:
        flow.every_seconds, flow.cron = parse_duration(spec.every), None
    elif spec.cron is not None:
        flow.every_seconds, flow.cron = None, " ".join(spec.cron.split())
    elif spec.no_schedule:
        flow.every_seconds, flow.cron = None, None
    if spec.tz is not None:
        flow.tz = None if spec.tz.upper() == "UTC" else check_tz(spec.tz)
    schedule = schedule_of(flow)
    if schedule.tz is not None and schedule.every_seconds is not None and spec.tz is not None:
        raise DfjobError("--tz applies to --cron schedules (an interval is the same in every zone)")
    if schedule == old and not (schedule.is_set and flow.next_run_at is None):
        return
    if schedule.every_seconds is not None and flow.last_run_at is not None:
        flow.next_run_at = max(now, flow.last_run_at + timedelta(seconds=schedule.every_seconds))
    else:
        flow.next_run_at = schedule.first_run_at(now)
    if schedule.is_set and flow.next_run_at is None:
        raise DfjobError(f"cron expression {flow.cron!r} never fires")
    # The schedule starts over: slots of the old one are not caught up.
    flow.last_scheduled_for = None


def new_flow(settings: Settings, spec: FlowSpec) -> DataFlow:
    """A validated, unsaved data flow: every check that needs no database (the class included)."""
    if spec.name is None or spec.class_path is None:
        raise DfjobError("a data flow needs a name and a class")
    now = clock.now()
    flow = DataFlow(queue="default", priority=0, enabled=True, configuration={}, max_running=1, created_at=now)
    return apply(settings, flow, spec, now)


def add_flow(settings: Settings, spec: FlowSpec) -> DataFlow:
    """Register a new data flow."""
    flow = new_flow(settings, spec)
    save([(flow, spec.after)])
    return flow


def update_flow(settings: Settings, flow: DataFlow, spec: FlowSpec) -> DataFlow:
    """Change a data flow; only what `spec` gives changes."""
    apply(settings, flow, spec, clock.now())
    save([(flow, () if spec.no_after else spec.after)])
    return flow


def save(flows: Sequence[tuple[DataFlow, Sequence[str] | None]]) -> None:
    """Store flows (new or changed) with their run limits and upstreams, in one transaction.
    Upstreams given as names (None: unchanged) must exist and must not close a cycle."""
    try:
        with write_transaction():
            for flow, _ in flows:
                _check_name_free(flow)
                flow.save()
                store().set_flow_limit(flow.id, flow.max_running, clock.now())
            for flow, after in flows:
                if after is not None:
                    _set_upstreams(flow, after)
            _check_no_cycle([flow for flow, after in flows if after])
            store().notify(wakeup.SCHEDULE)
    except peewee.IntegrityError:
        names = ", ".join(repr(flow.name) for flow, _ in flows)
        raise DfjobError(f"a data flow named {names} already exists") from None
    store().wake_after_commit(wakeup.SCHEDULE)


def _check_name_free(flow: DataFlow) -> None:
    taken = DataFlow.select().where(DataFlow.name == flow.name)
    if flow.id is not None:
        taken = taken.where(DataFlow.id != flow.id)
    if taken.exists():
        raise DfjobError(f"a data flow named {flow.name!r} already exists")


def _set_upstreams(flow: DataFlow, names: Sequence[str]) -> None:
    upstreams = []
    for name in dict.fromkeys(names):
        upstream = DataFlow.get_or_none(DataFlow.name == name)
        if upstream is None:
            raise DfjobError(f"--after: no data flow named {name!r}")
        if upstream.id == flow.id:
            raise DfjobError(f"--after: data flow {flow.name!r} cannot run after itself")
        upstreams.append(upstream.id)
    FlowUpstream.delete().where(FlowUpstream.data_flow == flow.id).execute()
    for upstream_id in upstreams:
        FlowUpstream.create(data_flow=flow.id, upstream=upstream_id)


def _check_no_cycle(changed: Iterable[DataFlow]) -> None:
    """Refuse an `after` that would make a flow wait, through its upstreams, for itself."""
    edges: dict[int, list[int]] = {}
    for edge in FlowUpstream.select(FlowUpstream.data_flow, FlowUpstream.upstream):
        edges.setdefault(edge.data_flow_id, []).append(edge.upstream_id)
    for flow in changed:
        seen: set[int] = set()
        stack = list(edges.get(flow.id, []))
        while stack:
            current = stack.pop()
            if current == flow.id:
                raise DfjobError(f"--after: data flow {flow.name!r} would wait for itself (a cycle of after)")
            if current not in seen:
                seen.add(current)
                stack.extend(edges.get(current, []))


def set_enabled(flow: DataFlow, enabled: bool) -> DataFlow:
    """Switch a flow's schedule on or off; an enabled flow whose schedule has no next time gets one."""
    now = clock.now()
    flow.enabled = enabled
    schedule = schedule_of(flow)
    if enabled and schedule.is_set and flow.next_run_at is None:
        flow.next_run_at = schedule.first_run_at(now)
    flow.updated_at = now
    with write_transaction():
        flow.save()
        store().notify(wakeup.SCHEDULE)
    store().wake_after_commit(wakeup.SCHEDULE)
    return flow


def remove_flow(flow: DataFlow) -> None:
    """Delete a data flow with its jobs and runs; refused while it has an active job, or while
    another flow runs after it."""
    with write_transaction():
        active = store().active_job_id(flow.id)
        if active is not None:
            raise DfjobError(f"data flow {flow.name!r} has an active job {active}; cancel it or wait for it first")
        downstream = [edge.data_flow.name for edge in FlowUpstream.select().where(FlowUpstream.upstream == flow.id)]
        if downstream:
            raise DfjobError(
                f"data flow {flow.name!r} is in --after of {', '.join(sorted(downstream))}; change those first"
            )
        flow.delete_instance()


def upstream_names(flow_ids: Collection[int]) -> dict[int, list[str]]:
    """Each flow's `after`, as names, in one query."""
    names: dict[int, list[str]] = {}
    if not flow_ids:
        return names
    query = (
        FlowUpstream.select(FlowUpstream.data_flow, DataFlow.name)
        .join(DataFlow, on=FlowUpstream.upstream == DataFlow.id)
        .where(FlowUpstream.data_flow.in_(list(flow_ids)))
        .order_by(DataFlow.name)
    )
    for edge in query:
        names.setdefault(edge.data_flow_id, []).append(edge.upstream.name)
    return names


def flow_to_dict(
    flow: DataFlow, default_max_attempts: int | None = None, after: Sequence[str] | None = None
) -> dict[str, Any]:
    """The data flow object. `max_attempts` is the flow's own, else the default that applies to it
    (`retry.max_attempts`) when one is given; `after` is looked up unless given."""
    schedule = schedule_of(flow)
    local_next = None
    if flow.next_run_at is not None and flow.tz:
        local_next = flow.next_run_at.astimezone(ZoneInfo(flow.tz)).isoformat(timespec="microseconds")
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
        "tz": flow.tz or "UTC",
        "configuration": flow.configuration,
        "max_attempts": flow.max_attempts or default_max_attempts,
        "timeout": format_duration(flow.timeout_seconds) if flow.timeout_seconds is not None else None,
        "max_running": flow.max_running,
        "after": list(after) if after is not None else upstream_names([flow.id]).get(flow.id, []),
        "catch_up": flow.catch_up,
        "late_after": format_duration(flow.late_after_seconds) if flow.late_after_seconds is not None else None,
        "last_run_at": clock.iso(flow.last_run_at),
        "last_run_status": flow.last_run_status,
        "next_run_at": clock.iso(flow.next_run_at),
        "next_run_at_local": local_next,
        "created_at": clock.iso(flow.created_at),
        "updated_at": clock.iso(flow.updated_at),
    }


def flows_to_dicts(flows: Sequence[DataFlow], default_max_attempts: int | None = None) -> list[dict[str, Any]]:
    """Data flow objects for many flows, their `after` read in one query."""
    after = upstream_names([flow.id for flow in flows])
    return [flow_to_dict(flow, default_max_attempts, after.get(flow.id, [])) for flow in flows]
