"""Version 7: indexes for the web dashboard and API, so every list pages by id through an index
whatever the filter, and the overview's last 24 hours read only those hours.

- runs by status, newest first (`/api/runs?status=in_progress` must not walk a million successes);
- jobs by status, newest first (see `models.jobs_status_index`: only finished ones on Postgres),
  and jobs by queue;
- runs by when they were created, with their status (runs per hour over the last 24 h read from
  the index alone; `--since`).
"""

from __future__ import annotations

from dfjob.sql import execute

NAME = "indexes for the dashboard: runs and jobs by status, jobs by queue, runs by creation time"

INDEXES = [
    "CREATE INDEX runs_status ON dfjob.data_flow_runs (status, id)",
    "CREATE INDEX runs_created ON dfjob.data_flow_runs (created_at, status)",
    "CREATE INDEX jobs_queue ON dfjob.jobs (queue, id)",
]


JOBS_STATUS = "CREATE INDEX jobs_status ON dfjob.jobs (status, id)"


def sqlite() -> None:
    for statement in [*INDEXES, JOBS_STATUS]:
        execute(statement)


def postgres(schema: str) -> None:
    for statement in [*INDEXES, JOBS_STATUS + " WHERE status IN ('succeeded', 'failed', 'cancelled')"]:
        execute(statement)
