"""The dashboard: server-rendered pages linked with plain links, and forms that post back.

Reading needs a signed-in session (or a bearer token, or `serve.public_read`); every form needs a
signed-in session and the session's CSRF token, public or not. The pages call the same functions
as the command line and the API; lists page by id like the API does.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from dfjob import clock, history, overview, registry, runlogs
from dfjob.cli import output
from dfjob.config import check_queue_name, is_id
from dfjob.errors import DfjobError
from dfjob.trigger import cancel_job, retry_job
from dfjob.web import auth, charts, health
from dfjob.web.api import found, path_id, trigger_flow
from dfjob.web.app import ApiError, context
from dfjob.web.auth import Refused

blueprint = Blueprint("pages", __name__)
PAGE_SIZE = 50
FLOWS_PAGE_SIZE = 50
SPARK_RUNS = 20
CHART_RUNS = 100
FOLLOW_STATUSES = ("pending", "in_progress")


@blueprint.app_template_filter("when")
def when(value: str | None) -> str:
    return output.when(value)


@blueprint.app_template_filter("duration")
def duration(value: int | None) -> str:
    return output.duration_ms(value)


@blueprint.app_template_filter("pretty_json")
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


@blueprint.app_template_filter("logline")
def logline(line: dict[str, Any]) -> str:
    return runlogs.format_line(line)


@blueprint.app_context_processor
def page_globals() -> dict[str, Any]:
    access = context().access
    return {
        "csrf_token": auth.csrf_token,
        "signed_in": auth.signed_in(),
        "can_sign_in": access.can_sign_in(),
        "colour": charts.colour,
    }


def _read() -> BaseResponse | None:
    """Anonymous readers go to the sign-in page, unless reading is public; then the schema check."""
    try:
        context().access.require_read()
    except Refused:
        return redirect(url_for("pages.login", next=request.full_path.rstrip("?")))
    health.require_schema()
    return None


def _form() -> None:
    """A form post: signed in (a public dashboard still signs in to change things), CSRF token good."""
    auth.check_csrf()
    if not auth.signed_in():
        raise Refused(403, "sign in to change anything")
    health.require_schema()


def _local(target: str | None) -> str:
    """Where to go after signing in: a path on this site only."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


# -- signing in ----------------------------------------------------------------------------------


@blueprint.get("/login")
def login() -> str:
    return render_template("login.html", next=_local(request.args.get("next")))


@blueprint.post("/login")
def login_post() -> BaseResponse | tuple[str, int]:
    auth.check_csrf()
    target = _local(request.form.get("next"))
    if not context().access.token_valid(request.form.get("token", "").strip()):
        flash("That token is not valid.", "error")
        return render_template("login.html", next=target), 401
    auth.sign_in()
    return redirect(target)


@blueprint.post("/logout")
def logout() -> BaseResponse:
    auth.check_csrf()
    auth.sign_out()
    return redirect(url_for("pages.login"))


# -- pages ---------------------------------------------------------------------------------------


@blueprint.get("/")
def index() -> BaseResponse | str:
    refused = _read()
    if refused is not None:
        return refused
    now = clock.now()
    data = overview.status(now)
    chart = charts.runs_per_hour(history.runs_per_hour(now))
    return render_template("overview.html", data=data, chart=chart)


@blueprint.get("/flows")
def flows() -> BaseResponse | str:
    refused = _read()
    if refused is not None:
        return refused
    after = _int_arg("after_id")
    page = registry.flows_page(after, FLOWS_PAGE_SIZE + 1)
    more = len(page) > FLOWS_PAGE_SIZE
    page = page[:FLOWS_PAGE_SIZE]
    rows = registry.flows_to_dicts(page, context().settings.retry.max_attempts)
    sparks = history.recent_durations([row["id"] for row in rows], SPARK_RUNS)
    for row in rows:
        row["spark"] = charts.sparkline(sparks[row["id"]])
    next_after = rows[-1]["id"] if more else None
    return render_template("flows.html", flows=rows, next_after=next_after)


@blueprint.get("/flows/<ref>")
def flow(ref: str) -> BaseResponse | str:
    refused = _read()
    if refused is not None:
        return refused
    found_flow = found(lambda: registry.get_flow(ref))
    data = registry.flow_to_dict(found_flow, context().settings.retry.max_attempts)
    before = _int_arg("before_id")
    runs = history.list_runs(int(found_flow.id), limit=PAGE_SIZE, before_id=before)
    recent = runs if before is None else history.list_runs(int(found_flow.id), limit=CHART_RUNS)
    if before is None and len(runs) < CHART_RUNS:
        recent = history.list_runs(int(found_flow.id), limit=CHART_RUNS)
    chart = charts.durations(recent)
    next_before = runs[-1]["id"] if len(runs) == PAGE_SIZE else None
    return render_template("flow.html", flow=data, runs=runs, chart=chart, next_before=next_before)


@blueprint.post("/flows/<ref>/trigger")
def trigger(ref: str) -> BaseResponse:
    _form()
    text = request.form.get("params", "").strip()
    try:
        params = json.loads(text) if text else {}
    except ValueError as exc:
        raise ApiError(400, f"params: not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise ApiError(400, "params must be a JSON object")
    options: dict[str, Any] = {"params": params, "queue_name": None, "priority": None, "run_at": None, "key": None}
    queue = request.form.get("queue", "").strip()
    if queue:
        options["queue_name"] = queue
    data, created, warning = trigger_flow(ref, options)
    if created:
        flash(f"Enqueued job {data['job_id']} on queue {data['queue']}.", "success")
    else:
        flash(f"An active job with the same params is already there: job {data['job_id']}.", "info")
    if warning is not None:
        flash(f"Warning: {warning}.", "warning")
    return redirect(url_for("pages.flow", ref=ref))


@blueprint.get("/runs/<run_id>")
def run(run_id: str) -> BaseResponse | str:
    refused = _read()
    if refused is not None:
        return refused
    number = path_id(run_id, "run")
    data = found(lambda: history.get_run(number))
    log = runlogs.read(number)
    rendered = runlogs.render(log)
    last_seq = log["lines"][-1]["seq"] if log["lines"] else 0
    following = data["status"] in FOLLOW_STATUSES
    return render_template("run.html", run=data, log=rendered, last_seq=last_seq, following=following)


@blueprint.get("/jobs")
def jobs() -> BaseResponse | str:
    refused = _read()
    if refused is not None:
        return refused
    status = request.args.get("status", "")
    queue = request.args.get("queue", "").strip()
    flow_ref = request.args.get("flow", "").strip()
    statuses = history.statuses([status] if status else None, history.JOB_STATUSES, "job")
    if queue:
        check_queue_name(queue, ())
    flow_id = int(found(lambda: registry.get_flow(flow_ref)).id) if flow_ref else None
    before = _int_arg("before_id")
    rows = history.list_jobs(queue or None, statuses, flow_id, PAGE_SIZE, before_id=before)
    next_before = rows[-1]["id"] if len(rows) == PAGE_SIZE else None
    filters = {"status": status, "queue": queue, "flow": flow_ref}
    return render_template(
        "jobs.html", jobs=rows, filters=filters, statuses=history.JOB_STATUSES, next_before=next_before
    )


@blueprint.get("/jobs/<job_id>")
def job(job_id: str) -> BaseResponse | str:
    refused = _read()
    if refused is not None:
        return refused
    number = path_id(job_id, "job")
    return render_template("job.html", job=found(lambda: history.get_job(number, with_runs=True)))


@blueprint.post("/jobs/<job_id>/<action>")
def job_action(job_id: str, action: str) -> BaseResponse:
    _form()
    number = path_id(job_id, "job")
    found(lambda: history.get_job(number))
    try:
        if action == "retry":
            retry_job(number)
            flash(f"Re-queued job {number}.", "success")
        elif action == "cancel":
            cancel_job(number)
            flash(f"Asked to cancel job {number}.", "success")
        else:
            raise ApiError(404, f"no action {action!r}")
    except DfjobError as exc:
        flash(str(exc), "error")
    return redirect(_local(request.form.get("next")) if request.form.get("next") else url_for("pages.jobs"))


def _int_arg(name: str) -> int | None:
    text = request.args.get(name, "")
    if not text:
        return None
    if not is_id(text) or len(text) > 18:
        raise ApiError(400, f"{name} must be a whole number, not {text!r}")
    return int(text)
