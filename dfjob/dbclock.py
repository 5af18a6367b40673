"""Measuring this host's clock against the database's, so every time dfjob computes on Postgres
(lease stamps and expiry, due schedules) is the server's time, not a worker's wall clock.

The difference is measured with one `SELECT clock_timestamp()`, taking the middle of the round
trip; it is good to about half a round trip. SQLite lives on one host: nothing to measure.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime

from dfjob import clock, events
from dfjob.store import store

SKEW_WARNING_SECONDS = 5.0
CLOCK_SKEW = "clock.skew"
_warned = False


def sync() -> float | None:
    """Measure the difference (database minus this host, in seconds) and make `clock.now()`
    follow the database; logs `clock.skew` once when it is over 5 s. None on SQLite."""
    global _warned
    before = datetime.now(UTC)
    database_now = store().database_now()
    after = datetime.now(UTC)
    if database_now is None:
        return None
    offset = (database_now - (before + (after - before) / 2)).total_seconds()
    clock.set_database_offset(offset)
    if abs(offset) > SKEW_WARNING_SECONDS and not _warned:
        _warned = True
        events.log.warning(CLOCK_SKEW, difference_seconds=round(offset, 3), host=socket.gethostname())
    return offset
