"""The one source of "now": every module asks here, so tests can move time.

On Postgres it is the database server's time: this host's clock corrected by the difference
measured against the server (`set_database_offset`), so hosts whose clocks are off agree on
lease expiry and due schedules.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_offset = timedelta()
_database_offset = timedelta()


def now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC) + _database_offset + _offset


def travel(seconds: float) -> None:
    """Move this process's clock by `seconds` from real time (tests only); 0 returns to it."""
    global _offset
    _offset = timedelta(seconds=seconds)


def set_database_offset(seconds: float) -> None:
    """How far the database's clock is ahead of this host's (negative: behind)."""
    global _database_offset
    _database_offset = timedelta(seconds=seconds)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with microseconds and an offset, as the contract prints times."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(text: str) -> datetime:
    """Parse an ISO 8601 time; one without a zone is UTC. Raises ValueError."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
