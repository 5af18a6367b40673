"""Version 3: a record per running `dfjob worker` (host, pid, queues, last seen, running jobs),
refreshed with its leases; `dfjob workers` reads it."""

from __future__ import annotations

from dfjob.sql import execute

NAME = "worker records"
COLUMNS = (
    '"name" VARCHAR(255) NOT NULL PRIMARY KEY, "host" VARCHAR(255) NOT NULL, "pid" INTEGER NOT NULL,'
    ' "queues" TEXT NOT NULL, "concurrency" INTEGER NOT NULL, "version" VARCHAR(32) NOT NULL,'
    ' "lease_seconds" REAL NOT NULL, "started_at" {time} NOT NULL, "last_seen_at" {time} NOT NULL,'
    ' "stopped_at" {time}, "running_job_ids" TEXT NOT NULL'
)


def sqlite() -> None:
    execute(f"CREATE TABLE workers ({COLUMNS.format(time='DATETIME')})")


def postgres(schema: str) -> None:
    execute(f'CREATE TABLE "{schema}".workers ({COLUMNS.format(time="TIMESTAMP")})')
