"""Small named facts the daemons share through the database (`dfjob_state`): when the last
heartbeat ran (`dfjob_last_heartbeat_timestamp_seconds`), when history was last pruned (a prune at
most once a day, from whichever heartbeat or scheduler comes first)."""

from __future__ import annotations

from datetime import datetime

from dfjob import clock
from dfjob.models import State, from_db_time, to_db_time
from dfjob.sql import execute

LAST_HEARTBEAT = "last_heartbeat_at"
LAST_PRUNE = "last_prune_at"


def put(name: str, value: str | None, now: datetime | None = None) -> None:
    """Set `name` (inside the caller's transaction, if any)."""
    execute(
        "INSERT INTO dfjob.dfjob_state (name, value, changed_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value, changed_at = excluded.changed_at",
        (name, value, to_db_time(now or clock.now())),
    )


def changed_at(name: str) -> datetime | None:
    """When `name` was last set; None if never."""
    row = execute("SELECT changed_at FROM dfjob.dfjob_state WHERE name = ?", (name,)).fetchone()
    return None if row is None else from_db_time(row[0])


def get(name: str) -> str | None:
    found = State.get_or_none(State.name == name)
    return None if found is None else found.value
