"""`dfjob db init|upgrade|status`: the database and its schema version."""

from __future__ import annotations

from typing import Any

from dfjob import migrations
from dfjob.cli.app import cli, current_app, emit, json_option
from dfjob.passwords import redact_url

# -- db ------------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """The database."""


@db.command("init")
@json_option
def db_init(as_json: bool) -> None:
    """Create the tables (idempotent)."""
    settings = current_app().open()
    url = redact_url(settings.database.url)
    data = {"database": url, "schema": "ready", "version": migrations.LATEST}
    emit(as_json, data, lambda: f"Tables ready in {url} (schema version {migrations.LATEST})")


def _step(step: migrations.Step) -> dict[str, Any]:
    return {"version": step.version, "name": step.name}


@db.command("upgrade")
@json_option
def db_upgrade(as_json: bool) -> None:
    """Bring the database to this release's schema, one transaction per step."""
    current_app().connect(writes=True)
    done = migrations.upgrade()
    data = {"from": done.before, "to": done.after, "applied": [_step(step) for step in done.applied]}

    def text() -> str:
        if done.before == 0:
            return f"Created the schema at version {done.after}"
        if not done.applied:
            return f"Schema version {done.after}: nothing to do"
        lines = [f"Applied {step.version}: {step.name}" for step in done.applied]
        return "\n".join([*lines, f"Schema version {done.before} -> {done.after}"])

    emit(as_json, data, text)


@db.command("status")
@json_option
def db_status(as_json: bool) -> None:
    """The database's schema version and the steps `db upgrade` would apply."""
    current_app().connect(writes=False)
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

    emit(as_json, data, text)
