"""`/healthz`, `/heartbeat` and `/api/*`: the command line's JSON objects over HTTP.

Lists take the CLI's filters as query parameters (`flow`, `status` (repeatable, or comma
separated), `queue`, `since`, `limit`) and page newest first with `before_id=<the last id seen>`;
`/api/flows` lists in id order like `flows list`, and pages on with `after_id` (`before_id` keeps
the flows below an id, in the same order). Bad input is 400 and
changes nothing; an unknown id or name is 404.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from flask import Blueprint, Response, jsonify, request

from dfjob import clock, history, overview, registry, runlogs
from dfjob.config import check_queue_name, is_id
from dfjob.errors import DfjobError
from dfjob.heartbeat import heartbeat as run_heartbeat
from dfjob.models import DataFlow
from dfjob.schedule import parse_duration
from dfjob.trigger import cancel_job, parse_run_at, retry_job
from dfjob.trigger import request as request_trigger
from dfjob.web import health
from dfjob.web.app import ApiError, context

blueprint = Blueprint("api", __name__)
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
TRIGGER_KEYS = ("params", "queue", "priority", "run_at", "key")
T = TypeVar("T")


# -- parameters ----------------------------------------------------------------------------------


def int_param(name: str, default: int | None = None, low: int = 1, high: int = 2**63 - 1) -> int | None:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    if not is_id(text) or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be a whole number between {low} and {high}, not {text!r}")
    return int(text)


def limit_param() -> int:
    limit = int_param("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    assert limit is not None
    return limit


def status_param() -> list[str]:
    return [part for value in request.args.getlist("status") for part in value.split(",") if part]


def since_param() -> Any:
    text = request.args.get("since")
    if not text:
        return None
    return clock.now() - timedelta(seconds=parse_duration(text))


def queue_param() -> str | None:
    text = request.args.get("queue")
    return check_queue_name(text, ()) if text else None


def found(lookup: Callable[[], T]) -> T:
    """The object `lookup` finds, or 404 with its message."""
    try:
        return lookup()
    except DfjobError as exc:
        raise ApiError(404, str(exc)) from None


def flow_param() -> int | None:
    ref = request.args.get("flow")
    return None if not ref else int(found(lambda: registry.get_flow(ref)).id)


def path_id(text: str, what: str) -> int:
    if not is_id(text) or len(text) > 18:
        raise ApiError(404, f"no {what} with id {text!r}")
    return int(text)


def json_body() -> dict[str, Any]:
    """The request's JSON object; an empty body is `{}`."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# -- health and heartbeat ------------------------------------------------------------------------


@blueprint.get("/healthz")
def healthz() -> Response:
    try:
        version = health.check()
    except health.Unhealthy as exc:
        response = jsonify({"ok": False, "error": str(exc)})
        response.status_code = 503
        return response
    return jsonify({"ok": True, "schema": version})


@blueprint.post("/heartbeat")
def heartbeat() -> Response:
    context().access.require_write()
    health.require_schema()
    result = run_heartbeat(context().settings)
    return jsonify({"due": result.due, "enqueued": result.enqueued, "skipped": result.skipped})


# -- reads ---------------------------------------------------------------------------------------


def _read() -> None:
    context().access.require_read()
    health.require_schema()


@blueprint.get("/api/status")
def status() -> Response:
    _read()
    return jsonify(overview.status())


@blueprint.get("/api/workers")
def workers() -> Response:
    _read()
    return jsonify(overview.list_workers())


@blueprint.get("/api/flows")
def flows() -> Response:
    _read()
    limit = int_param("limit", None, 1, MAX_LIMIT)
    flows = registry.flows_page(int_param("after_id", None, 0), limit, before_id=int_param("before_id"))
    return jsonify(registry.flows_to_dicts(flows, context().settings.retry.max_attempts))


@blueprint.get("/api/flows/<ref>")
def flow(ref: str) -> Response:
    _read()
    found_flow: DataFlow = found(lambda: registry.get_flow(ref))
    return jsonify(registry.flow_to_dict(found_flow, context().settings.retry.max_attempts))


@blueprint.get("/api/jobs")
def jobs() -> Response:
    _read()
    statuses = history.statuses(status_param(), history.JOB_STATUSES, "job")
    queue, since, limit, before = queue_param(), since_param(), limit_param(), int_param("before_id")
    rows = history.list_jobs(queue, statuses, flow_param(), limit, since=since, before_id=before)
    return jsonify(rows)


@blueprint.get("/api/jobs/<job_id>")
def job(job_id: str) -> Response:
    _read()
    number = path_id(job_id, "job")
    return jsonify(found(lambda: history.get_job(number, with_runs=True)))


@blueprint.get("/api/runs")
def runs() -> Response:
    _read()
    statuses = history.statuses(status_param(), history.RUN_STATUSES, "run")
    since, limit, before = since_param(), limit_param(), int_param("before_id")
    return jsonify(history.list_runs(flow_param(), statuses, limit, since=since, before_id=before))


@blueprint.get("/api/runs/<run_id>")
def run(run_id: str) -> Response:
    _read()
    number = path_id(run_id, "run")
    return jsonify(found(lambda: history.get_run(number)))


@blueprint.get("/api/runs/<run_id>/log")
def run_log(run_id: str) -> Response:
    """The run's log; `?after=SEQ`: only the lines after that one (what a follower has not seen)."""
    _read()
    number = path_id(run_id, "run")
    after = int_param("after", 0, 0)
    return jsonify(found(lambda: runlogs.read(number, after or 0)))


# -- writes --------------------------------------------------------------------------------------


def _write() -> None:
    context().access.require_write()
    health.require_schema()


def trigger_options(body: dict[str, Any]) -> dict[str, Any]:
    """The trigger body's fields, type-checked (all optional)."""
    unknown = sorted(set(body) - set(TRIGGER_KEYS))
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r} (known: {', '.join(TRIGGER_KEYS)})")
    params, queue, priority = body.get("params"), body.get("queue"), body.get("priority")
    run_at, key = body.get("run_at"), body.get("key")
    if params is not None and not isinstance(params, dict):
        raise ApiError(400, "params must be a JSON object")
    for name, value in (("queue", queue), ("run_at", run_at), ("key", key)):
        if value is not None and not isinstance(value, str):
            raise ApiError(400, f"{name} must be a string")
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
        raise ApiError(400, "priority must be a whole number")
    return {
        "params": params,
        "queue_name": queue,
        "priority": priority,
        "run_at": parse_run_at(run_at) if run_at is not None else None,
        "key": key,
    }


def trigger_flow(ref: str, options: dict[str, Any]) -> tuple[dict[str, Any], bool, str | None]:
    """Enqueue as `dfjob trigger` does: the `trigger --json` object, whether the job is new, and the
    warning the command would print (no live worker serves its queue)."""
    flow_id = found(lambda: registry.get_flow(ref)).id
    result, _ = request_trigger(context().settings, str(flow_id), **options)
    data = {
        "job_id": result.job_id,
        "data_flow_id": result.data_flow_id,
        "queue": result.queue,
        "deduplicated": result.deduplicated,
    }
    warning = None if overview.live_workers(result.queue) else f"no live worker serves queue {result.queue}"
    return data, not result.deduplicated, warning


@blueprint.post("/api/flows/<ref>/trigger")
def trigger(ref: str) -> Response:
    _write()
    data, created, _ = trigger_flow(ref, trigger_options(json_body()))
    response = jsonify(data)
    response.status_code = 201 if created else 200
    return response


@blueprint.post("/api/jobs/<job_id>/cancel")
def cancel(job_id: str) -> Response:
    return change_job(job_id, cancel_job)


@blueprint.post("/api/jobs/<job_id>/retry")
def retry(job_id: str) -> Response:
    return change_job(job_id, retry_job)


def change_job(job_id: str, action: Callable[[int], object]) -> Response:
    """A state change of one job, as the CLI makes it; the job afterwards. Its state may refuse
    the change (cancel a finished job): 409 with the reason."""
    _write()
    number = path_id(job_id, "job")
    found(lambda: history.get_job(number))
    try:
        action(number)
    except DfjobError as exc:
        raise ApiError(409, str(exc)) from None
    return jsonify(history.get_job(number))
