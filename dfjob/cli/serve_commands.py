"""`dfjob serve`: the dashboard, JSON API, heartbeat endpoint, `/metrics` and `/healthz`."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import click

from dfjob import dbclock, events, migrations
from dfjob.cli.app import cli, current_app
from dfjob.config import check_serve, resolve_path
from dfjob.db import describe_error, is_connection_error
from dfjob.errors import DatabaseUnavailable, DfjobError
from dfjob.flow import add_import_paths
from dfjob.signals import on_stop

WEB_EXTRA = ("flask", "waitress", "prometheus_client")


@cli.command()
@click.option("--host", metavar="H", help="Address to listen on (default serve.host, 127.0.0.1).")
@click.option("--port", type=int, metavar="P", help="Port to listen on (default serve.port, 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the dashboard and the JSON API until stopped (SIGTERM/SIGINT stop it cleanly).

    Starts even when the database is unreachable or at another schema version; /healthz then
    answers 503 with the reason.
    """
    if any(importlib.util.find_spec(name) is None for name in WEB_EXTRA):
        raise DfjobError("dfjob serve needs the web extra: pip install 'dfjob[web]'")
    from dfjob.web.app import create_app
    from dfjob.web.auth import load_tokens
    from dfjob.web.server import WebServer

    app = current_app()
    settings = app.settings
    serve_settings = replace(
        settings.serve,
        host=settings.serve.host if host is None else host,
        port=settings.serve.port if port is None else port,
    )
    if port is not None and not 1 <= port <= 65535:
        raise DfjobError(f"--port must be between 1 and 65535, not {port}")
    check_serve(serve_settings, "--host")
    settings = replace(settings, serve=serve_settings)
    tokens = load_tokens(settings)
    app.configure_logging(daemon=True)
    add_import_paths(tuple(resolve_path(settings, path) for path in settings.flows.paths))
    events.load_callbacks(settings)
    _connect()
    server = WebServer(create_app(settings, tokens), serve_settings.host, serve_settings.port)
    for address, bound in server.addresses:
        events.emit(
            events.SERVE_STARTED, host=address, port=bound, public_read=serve_settings.public_read,
            tokens=len(tokens), allow_cidrs=list(serve_settings.allow_cidrs),
        )  # fmt: skip
    if not tokens:
        events.log.warning("serve.no_tokens", hint="set serve.tokens or serve.token_file: writes are refused")
    with on_stop(lambda count: server.request_stop()):
        server.run()
    events.emit(events.SERVE_STOPPED, host=serve_settings.host, port=serve_settings.port)


def _connect() -> None:
    """Bind the database, and give an empty one its tables (serve writes, as `trigger` does). One
    that cannot be reached now is reached on a later request; one at another schema version is
    left alone. Meanwhile /healthz says why it is not healthy."""
    try:
        current_app().connect(writes=True)
        if migrations.database_version() == 0:
            migrations.create_schema()
        dbclock.sync()
    except DatabaseUnavailable as exc:
        events.emit(events.DB_UNAVAILABLE, error=str(exc), retry_in=0)
    except Exception as exc:
        if not is_connection_error(exc):
            raise
        events.emit(events.DB_UNAVAILABLE, error=describe_error(exc), retry_in=0)
