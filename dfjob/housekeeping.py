"""What every heartbeat pass does besides enqueueing, whether it came from cron, the scheduler
daemon or the web endpoint: prune the history at most once a day, raise and deliver alerts.

The day is counted in the database (`dfjob_state.last_prune_at`), so any mix of heartbeats and
schedulers on any hosts prunes once a day between them. A pass claims the prune by moving the
stamp first; if the prune then fails (an outage, a lock timeout) the stamp goes back, and the next
pass tries again instead of waiting a day.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from dfjob import alerts, events, state
from dfjob.config import Settings
from dfjob.db import describe_error, write_transaction
from dfjob.models import to_db_time
from dfjob.schedule import parse_duration
from dfjob.sql import execute
from dfjob.store import store

PRUNE_EVERY = timedelta(days=1)


def _claim_prune(now: datetime) -> tuple[bool, datetime | None]:
    """(this pass prunes, the stamp it replaced)."""
    with write_transaction():
        before = state.changed_at(state.LAST_PRUNE)
        if before is not None and now - before < PRUNE_EVERY:
            return False, before
        if before is None:
            inserted = execute(
                "INSERT INTO dfjob.dfjob_state (name, value, changed_at) VALUES (?, NULL, ?) ON CONFLICT DO NOTHING",
                (state.LAST_PRUNE, to_db_time(now)),
            ).rowcount
            return bool(inserted), None
        moved = execute(
            "UPDATE dfjob.dfjob_state SET changed_at = ? WHERE name = ? AND changed_at = ?",
            (to_db_time(now), state.LAST_PRUNE, to_db_time(before)),
        ).rowcount
        return bool(moved), before


def prune_if_due(settings: Settings, now: datetime) -> tuple[int, int] | None:
    """Prune finished history older than `retention.finished_jobs` if no pass did in the last day;
    (jobs, runs) deleted, or None when it was not due or failed (then the next pass retries)."""
    mine, before = _claim_prune(now)
    if not mine:
        return None
    older_than = now - timedelta(seconds=parse_duration(settings.retention.finished_jobs))
    try:
        jobs, runs = store().prune(older_than)
    except Exception as exc:  # noqa: BLE001 (a failed prune is retried at the next pass)
        events.log.warning("prune.failed", error=describe_error(exc))
        try:
            with write_transaction():
                if before is None:
                    execute("DELETE FROM dfjob.dfjob_state WHERE name = ?", (state.LAST_PRUNE,))
                else:
                    state.put(state.LAST_PRUNE, None, before)
        except Exception as undo:  # noqa: BLE001
            events.log.warning("prune.failed", error=describe_error(undo))
        return None
    events.log.info("prune.finished", jobs=jobs, runs=runs)
    return jobs, runs


def run(settings: Settings, now: datetime) -> None:
    """After a heartbeat pass: the daily prune, then alerts. Failures are logged, never raised."""
    try:
        prune_if_due(settings, now)
    except Exception as exc:  # noqa: BLE001
        events.log.warning("prune.failed", error=describe_error(exc))
    alerts.run_pass(settings, now)
