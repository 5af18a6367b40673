"""Version 5: what an operator needs to see and steer what runs.

- Runs keep their attempt's output (`run_logs`: chunks of lines, head and tail within
  `runs.log_max_bytes`), how much of it (`log_bytes`, `log_dropped_bytes`) and what the attempt
  cost (`cpu_seconds`, `max_rss_kb`).
- Jobs can be asked to stop while they run (`cancel_requested`).
- Queues can be paused (`queue_states`).
- Flows count their failures in a row (`failure_streak`) and remember their last success
  (`last_success_at`), so the status screen and late alerts read one row, not the history.
- Indexes for the status screen: running jobs by queue, failed runs newest first, failed jobs by
  when they ended.
"""

from __future__ import annotations

from dfjob.sql import execute

NAME = "run logs and resources, cancel requests, paused queues, failure streaks"


def _statements(boolean: str, false: str, time: str, big_int: str, id_column: str, runs: str) -> list[str]:
    return [
        "ALTER TABLE dfjob.data_flow_runs ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE dfjob.data_flow_runs ADD COLUMN log_dropped_bytes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE dfjob.data_flow_runs ADD COLUMN cpu_seconds REAL",
        "ALTER TABLE dfjob.data_flow_runs ADD COLUMN max_rss_kb INTEGER",
        f"ALTER TABLE dfjob.jobs ADD COLUMN cancel_requested {boolean} NOT NULL DEFAULT {false}",
        "ALTER TABLE dfjob.data_flows ADD COLUMN failure_streak INTEGER NOT NULL DEFAULT 0",
        f"ALTER TABLE dfjob.data_flows ADD COLUMN last_success_at {time}",
        f'CREATE TABLE dfjob.run_logs ({id_column}, "run_id" {big_int} NOT NULL, "seq" INTEGER NOT NULL,'
        f' "at" {time} NOT NULL, "stream" VARCHAR(8) NOT NULL, "text" TEXT NOT NULL, "part" VARCHAR(4) NOT NULL,'
        f' FOREIGN KEY ("run_id") REFERENCES {runs} ("id") ON DELETE CASCADE)',
        f'CREATE TABLE dfjob.queue_states ("name" VARCHAR(64) NOT NULL PRIMARY KEY, "paused" {boolean} NOT NULL,'
        f' "changed_at" {time} NOT NULL)',
        *INDEXES,
        # What the flows' history already says.
        "UPDATE dfjob.data_flows SET last_success_at = (SELECT MAX(ended_at) FROM dfjob.data_flow_runs r"
        " WHERE r.data_flow_id = data_flows.id AND r.status = 'success')",
    ]


INDEXES = [
    "CREATE INDEX run_logs_run ON dfjob.run_logs (run_id, seq)",
    "CREATE INDEX jobs_running ON dfjob.jobs (queue) WHERE status = 'running'",
    "CREATE INDEX runs_failed ON dfjob.data_flow_runs (id) WHERE status = 'failed'",
    "CREATE INDEX jobs_failed ON dfjob.jobs (finished_at, queue) WHERE status = 'failed'",
]


def sqlite() -> None:
    id_column = '"id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT'
    for statement in _statements("INTEGER", "FALSE", "DATETIME", "INTEGER", id_column, '"data_flow_runs"'):
        execute(statement)


def postgres(schema: str) -> None:
    id_column = '"id" BIGSERIAL NOT NULL PRIMARY KEY'
    runs = f'"{schema}"."data_flow_runs"'
    for statement in _statements("BOOLEAN", "FALSE", "TIMESTAMP", "BIGINT", id_column, runs):
        execute(statement)
