"""Is the database there, at the schema this release uses? `/healthz` asks on every call; every
other request asks `require_schema`, which remembers a good answer for a few seconds."""

from __future__ import annotations

import threading
import time

import peewee

from dfjob import migrations
from dfjob.db import describe_error, is_connection_error, reset_connection
from dfjob.errors import DfjobError

# A good answer is trusted this long before it is checked again.
FRESH_SECONDS = 5.0
_checked_at = 0.0
_lock = threading.Lock()


class Unhealthy(Exception):
    """The database cannot serve requests now: unreachable, or at another schema version."""


def check() -> int:
    """The schema version, when the database answers at the one this release uses; else Unhealthy."""
    global _checked_at
    try:
        version = migrations.database_version()
    except (peewee.DatabaseError, peewee.InterfaceError) as exc:
        if is_connection_error(exc) or isinstance(exc, peewee.OperationalError):
            reset_connection()
        raise Unhealthy(f"database unavailable: {describe_error(exc)}") from None
    if version == 0:
        raise Unhealthy("no dfjob tables in the database (run `dfjob db init`)")
    try:
        migrations.check_version(version)
    except DfjobError as exc:
        raise Unhealthy(str(exc)) from None
    with _lock:
        _checked_at = time.monotonic()
    return version


def require_schema() -> None:
    """Raise Unhealthy unless the database was found healthy a moment ago or is now."""
    if time.monotonic() - _checked_at < FRESH_SECONDS:
        return
    check()


def forget() -> None:
    """The next request checks again (after a connection error)."""
    global _checked_at
    with _lock:
        _checked_at = 0.0
