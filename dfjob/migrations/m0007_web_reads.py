"""Version 7: indexes for the web dashboard and API, so every list pages by id through an index
whatever the filter, and the overview's last 24 hours read only those hours.

- runs by status, newest first (`/api/runs?status=in_progress` must not walk a million successes);
- finished jobs by status, newest first (active jobs have partial indexes of their own, and a full
  index on status would tempt the claim away from `jobs_claim`), and jobs by queue;
- runs by when they were created (runs per hour over the last 24 h, `--since`).
"""

from __future__ import annotations

from dfjob.sql import execute

NAME = "indexes for the dashboard: runs and jobs by status, jobs by queue, runs by creation time"

INDEXES = [
    "CREATE INDEX runs_status ON dfjob.data_flow_runs (status, id)",
    "CREATE INDEX runs_created ON dfjob.data_flow_runs (created_at)",
    "CREATE INDEX jobs_status ON dfjob.jobs (status, id) WHERE status IN ('succeeded', 'failed', 'cancelled')",
    "CREATE INDEX jobs_queue ON dfjob.jobs (queue, id)",
]


def sqlite() -> None:
    for statement in INDEXES:
        execute(statement)


def postgres(schema: str) -> None:
    for statement in INDEXES:
        execute(statement)
