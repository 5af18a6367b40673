"""The app factory: settings and rules in, a Flask app out, with errors as JSON under the API and
as pages on the dashboard, and the network check before anything else."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import peewee
from flask import Flask, Response, current_app, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from dfjob import events
from dfjob.config import Settings
from dfjob.db import describe_error, is_connection_error, reset_connection
from dfjob.errors import DfjobError
from dfjob.web import health
from dfjob.web.auth import Access, Refused

# Paths that always answer JSON (or Prometheus text), errors included.
MACHINE_PREFIXES = ("/api/", "/healthz", "/heartbeat", "/metrics")
MAX_BODY_BYTES = 1024 * 1024
REQUEST = "serve.request"
REQUEST_FAILED = "serve.request_failed"


class ApiError(Exception):
    """A request the API refuses: its status and one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class WebContext:
    """What every handler needs beside the request: the settings and the access rules."""

    settings: Settings
    access: Access


def context() -> WebContext:
    found: WebContext = current_app.extensions["dfjob"]
    return found


def create_app(settings: Settings, tokens: Sequence[str]) -> Flask:
    """The WSGI app for `settings`, with `tokens` (see `auth.load_tokens`)."""
    from dfjob.web import api, metrics, pages

    app = Flask("dfjob.web")
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),
        SESSION_COOKIE_NAME="dfjob_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.jinja_env.autoescape = True
    app.extensions["dfjob"] = WebContext(settings, Access.from_settings(settings.serve, tokens))
    app.before_request(_check_network)
    app.after_request(_log_request)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(metrics.blueprint)
    app.register_blueprint(pages.blueprint)
    app.register_error_handler(Exception, _handle_error)
    return app


def wants_json() -> bool:
    return request.path.startswith(MACHINE_PREFIXES) or request.path in ("/healthz", "/heartbeat", "/metrics")


def _check_network() -> Response | None:
    g.began = time.perf_counter()
    if not context().access.client_allowed(request.remote_addr):
        return error_response(403, "your network is not allowed (serve.allow_cidrs)")
    return None


def _log_request(response: Response) -> Response:
    took = (time.perf_counter() - g.get("began", time.perf_counter())) * 1000
    events.log.debug(REQUEST, method=request.method, path=request.path, status=response.status_code, ms=round(took, 1))
    return response


def error_response(status: int, message: str) -> Response:
    """An error as JSON `{"error": …}` under the API, as a page on the dashboard."""
    if wants_json():
        response = jsonify({"error": message})
    else:
        response = Response(render_template("error.html", status=status, message=message), mimetype="text/html")
    response.status_code = status
    if status == 401 and wants_json():
        response.headers["WWW-Authenticate"] = 'Bearer realm="dfjob"'
    return response


def _handle_error(exc: Exception) -> Any:
    if isinstance(exc, ApiError | Refused):
        return error_response(exc.status, exc.message)
    if isinstance(exc, HTTPException):
        return error_response(exc.code or 500, exc.description or exc.name)
    if isinstance(exc, health.Unhealthy):
        return error_response(503, str(exc))
    if isinstance(exc, DfjobError):
        return error_response(400, str(exc))
    if isinstance(exc, peewee.DatabaseError | peewee.InterfaceError):
        if is_connection_error(exc):
            reset_connection()
            health.forget()
            return error_response(503, f"database unavailable: {describe_error(exc)}")
        events.log.error(REQUEST_FAILED, path=request.path, error=describe_error(exc))
        return error_response(500, f"database error: {describe_error(exc)}")
    events.log.error(REQUEST_FAILED, path=request.path, error=f"{type(exc).__name__}: {describe_error(exc)}")
    return error_response(500, "internal error (see the server's log)")
