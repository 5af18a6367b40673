"""What `/metrics` reports, read from the database on each scrape (no counters kept in memory, so
any number of `dfjob serve` processes agree, and a restart loses nothing).

- jobs per queue and status; how long the oldest ready job of each queue has waited;
- finished runs per data flow and status, adding what pruning removed (`pruned_run_totals`), so
  the counter never goes down;
- finished run durations per queue as cumulative histogram buckets, counted in SQL;
- worker records per state; when the last heartbeat ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dfjob import overview, state
from dfjob.sql import execute

# Upper bounds of the duration buckets, in seconds (+Inf is added by the exposition).
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)
FINISHED_RUN_STATUSES = ("success", "failed")


@dataclass(frozen=True)
class DurationHistogram:
    """One queue's finished runs: cumulative counts per bucket bound, all of them, their sum (s)."""

    queue: str
    buckets: list[tuple[float, int]]
    count: int
    sum_seconds: float


def jobs_by_queue_and_status() -> dict[tuple[str, str], int]:
    rows = execute("SELECT queue, status, COUNT(*) FROM dfjob.jobs GROUP BY queue, status").fetchall()
    return {(queue, status): int(count) for queue, status, count in rows}


def oldest_ready_seconds() -> dict[str, float]:
    """Per queue: seconds the oldest ready job has waited, 0 when none is ready."""
    return {row["queue"]: float(row["oldest_ready_seconds"] or 0.0) for row in overview.list_queues()}


def run_totals() -> dict[tuple[str, str], int]:
    """Finished runs per (data flow name, status): those kept plus those pruned."""
    totals: dict[tuple[str, str], int] = {}
    kept = execute(
        "SELECT f.name, r.status, COUNT(*) FROM dfjob.data_flow_runs r JOIN dfjob.data_flows f"
        " ON f.id = r.data_flow_id WHERE r.status IN ('success', 'failed') GROUP BY f.name, r.status"
    ).fetchall()
    pruned = execute(
        "SELECT f.name, p.status, p.runs FROM dfjob.pruned_run_totals p JOIN dfjob.data_flows f"
        " ON f.id = p.data_flow_id"
    ).fetchall()
    for name, status, count in [*kept, *pruned]:
        totals[(name, status)] = totals.get((name, status), 0) + int(count)
    return totals


def run_durations() -> list[DurationHistogram]:
    """Finished runs' durations per queue; each bucket counts the runs at or under its bound."""
    columns = ", ".join(
        f"SUM(CASE WHEN duration_ms <= {round(bound * 1000)} THEN 1 ELSE 0 END)" for bound in DURATION_BUCKETS
    )
    rows = execute(
        f"SELECT queue, {columns}, COUNT(*), SUM(duration_ms) FROM dfjob.data_flow_runs"
        " WHERE duration_ms IS NOT NULL AND status IN ('success', 'failed') GROUP BY queue ORDER BY queue"
    ).fetchall()
    found = []
    for row in rows:
        queue, *counts = row
        *bucket_counts, count, total_ms = counts
        buckets = [(bound, int(value or 0)) for bound, value in zip(DURATION_BUCKETS, bucket_counts, strict=True)]
        found.append(DurationHistogram(queue, buckets, int(count), float(total_ms or 0) / 1000))
    return found


def workers_by_state() -> dict[str, int]:
    counts = {"alive": 0, "stale": 0, "stopped": 0}
    for worker in overview.list_workers():
        counts[worker["state"]] += 1
    return counts


def last_heartbeat_at() -> datetime | None:
    return state.changed_at(state.LAST_HEARTBEAT)
