"""Version 4: data flows, not just jobs.

- Job keys replace "one active job per data flow": two active jobs of a flow never share a key
  (`jobs_active_key`); existing jobs get the key a plain trigger with their params would have.
- Jobs record their slot (`scheduled_for`), what made them (`triggered_by`) and the upstream job
  that did (`upstream_job_id`).
- Run limits: a flow's `max_running` and each backfill's `--parallel` are rows of `run_limits`,
  which claims lock; every job names the limit it counts toward.
- Flows: `max_running`, `tz`, `catch_up`, `late_after_seconds`, `last_scheduled_for`, and their
  upstreams (`flow_upstreams`, for `after`).
"""

from __future__ import annotations

import hashlib

from dfjob import clock
from dfjob.models import to_db_time
from dfjob.sql import execute

NAME = "job keys, slots, run limits, chains and flow options"


def params_key(params_text: str) -> str:
    """The key of a plain trigger: a digest of its params (stored as canonical JSON text)."""
    return "params:" + hashlib.sha256(params_text.encode()).hexdigest()[:24]


def _columns(big_int: str, time: str) -> list[str]:
    return [
        "ALTER TABLE dfjob.data_flows ADD COLUMN max_running INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE dfjob.data_flows ADD COLUMN tz VARCHAR(64)",
        "ALTER TABLE dfjob.data_flows ADD COLUMN catch_up VARCHAR(8) NOT NULL DEFAULT 'skip'",
        "ALTER TABLE dfjob.data_flows ADD COLUMN late_after_seconds INTEGER",
        f"ALTER TABLE dfjob.data_flows ADD COLUMN last_scheduled_for {time}",
        "ALTER TABLE dfjob.jobs ADD COLUMN key TEXT NOT NULL DEFAULT ''",
        f"ALTER TABLE dfjob.jobs ADD COLUMN scheduled_for {time}",
        "ALTER TABLE dfjob.jobs ADD COLUMN triggered_by VARCHAR(16) NOT NULL DEFAULT 'trigger'",
        f"ALTER TABLE dfjob.jobs ADD COLUMN upstream_job_id {big_int}",
        f"ALTER TABLE dfjob.jobs ADD COLUMN run_limit_id {big_int}",
    ]


def _tables(id_column: str, big_int: str, time: str, flows: str) -> list[str]:
    return [
        f'CREATE TABLE dfjob.run_limits ({id_column}, "data_flow_id" {big_int} NOT NULL, "kind" VARCHAR(16) NOT NULL,'
        f' "max_running" INTEGER NOT NULL, "claim_token" VARCHAR(64), "created_at" {time} NOT NULL,'
        f' FOREIGN KEY ("data_flow_id") REFERENCES {flows} ("id") ON DELETE CASCADE)',
        f'CREATE TABLE dfjob.flow_upstreams ("data_flow_id" {big_int} NOT NULL, "upstream_id" {big_int} NOT NULL,'
        ' PRIMARY KEY ("data_flow_id", "upstream_id"),'
        f' FOREIGN KEY ("data_flow_id") REFERENCES {flows} ("id") ON DELETE CASCADE,'
        f' FOREIGN KEY ("upstream_id") REFERENCES {flows} ("id") ON DELETE CASCADE)',
    ]


INDEXES = [
    "CREATE UNIQUE INDEX jobs_active_key ON dfjob.jobs (data_flow_id, key) WHERE status IN ('queued', 'running')",
    "CREATE INDEX jobs_running_limit ON dfjob.jobs (run_limit_id) WHERE status = 'running'",
    "CREATE INDEX jobs_queued_schedule ON dfjob.jobs (data_flow_id) WHERE status = 'queued'"
    " AND triggered_by = 'schedule'",
    "CREATE INDEX jobs_flow_slot ON dfjob.jobs (data_flow_id, scheduled_for)",
    "CREATE UNIQUE INDEX run_limits_flow ON dfjob.run_limits (data_flow_id) WHERE kind = 'flow'",
    "CREATE INDEX flow_upstreams_upstream ON dfjob.flow_upstreams (upstream_id)",
]


def _data() -> None:
    execute(
        "INSERT INTO dfjob.run_limits (data_flow_id, kind, max_running, created_at)"
        " SELECT id, 'flow', 1, ? FROM dfjob.data_flows",
        (to_db_time(clock.now()),),
    )
    execute(
        "UPDATE dfjob.jobs SET run_limit_id = (SELECT id FROM dfjob.run_limits"
        " WHERE run_limits.data_flow_id = jobs.data_flow_id AND run_limits.kind = 'flow')"
    )


def sqlite() -> None:
    from dfjob.db import database_proxy

    for statement in _columns("INTEGER", "DATETIME"):
        execute(statement)
    execute("DROP INDEX jobs_one_active_per_flow")
    for statement in _tables('"id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT', "INTEGER", "DATETIME", '"data_flows"'):
        execute(statement)
    for statement in INDEXES:
        execute(statement)
    _data()
    database_proxy.obj.connection().create_function("dfjob_params_key", 1, params_key, deterministic=True)
    execute("UPDATE jobs SET key = dfjob_params_key(params)")


def postgres(schema: str) -> None:
    for statement in _columns("BIGINT", "TIMESTAMP"):
        execute(statement)
    execute(f'DROP INDEX "{schema}".jobs_one_active_per_flow')
    flows = f'"{schema}"."data_flows"'
    for statement in _tables('"id" BIGSERIAL NOT NULL PRIMARY KEY', "BIGINT", "TIMESTAMP", flows):
        execute(statement)
    for statement in INDEXES:
        execute(statement)
    _data()
    # The same digest as `params_key`: params are stored as canonical (ASCII) JSON text.
    execute("UPDATE dfjob.jobs SET key = 'params:' || left(encode(sha256(convert_to(params, 'UTF8')), 'hex'), 24)")
