"""`dfjob workers`: who runs what."""

from __future__ import annotations

from dfjob import overview
from dfjob.cli.app import cli, current_app, emit, json_option, table


@cli.command()
@json_option
def workers(as_json: bool) -> None:
    """Worker records: alive, stale (not seen for 2 x lease) or stopped."""
    current_app().open(writes=False)
    rows = overview.list_workers()
    for row in rows:
        row["queues_text"] = ",".join(row["queues"])
        row["running"] = ",".join(str(job_id) for job_id in row["running_job_ids"])
    columns = ["name", "state", "host", "pid", "queues_text", "concurrency", "running", "last_seen_at"]
    shown = [{key: value for key, value in row.items() if key not in ("queues_text", "running")} for row in rows]
    emit(as_json, shown, lambda: table(rows, columns))
