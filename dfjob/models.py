"""The tables as this release knows them, their indexes, and creating them on an empty database.

Older databases reach this shape through `dfjob.migrations`; a test checks that a database
upgraded from version 1 and one created here are the same.

Times are stored as naive UTC in a fixed-width text form on SQLite (so text order is time order)
and as TIMESTAMP on Postgres; both read back as aware UTC datetimes. JSON is stored as text on
both, so most job-table SQL in `dfjob.store` is the same statement on either database.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import peewee

from dfjob.db import database_proxy, pg_schema
from dfjob.sql import execute


def to_db_time(value: datetime | None) -> str | None:
    """The stored form of a time: naive UTC, always with microseconds."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def from_db_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"a stored time must be text or a timestamp, not {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTimeField(peewee.Field):
    field_type = "DATETIME"

    def db_value(self, value: Any) -> Any:
        return to_db_time(value)

    def python_value(self, value: Any) -> Any:
        return from_db_time(value)


class JSONTextField(peewee.TextField):
    def db_value(self, value: Any) -> Any:
        return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)

    def python_value(self, value: Any) -> Any:
        return None if value is None else json.loads(value)


class IdField(peewee.BigAutoField):
    """BIGSERIAL on Postgres; on SQLite INTEGER PRIMARY KEY AUTOINCREMENT, so that an id is never
    handed out again after `prune` or `flows remove` (a script holding an old id must not reach a
    different job or flow)."""

    def ddl(self, ctx: Any) -> Any:
        node = super().ddl(ctx)
        if isinstance(database_proxy.obj, peewee.SqliteDatabase):
            return peewee.NodeList((node, peewee.SQL("AUTOINCREMENT")))
        return node


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class DataFlow(BaseModel):
    id = IdField()
    name = peewee.CharField(max_length=128, unique=True)
    class_path = peewee.CharField(max_length=512)
    queue = peewee.CharField(max_length=64, default="default")
    priority = peewee.IntegerField(default=0)
    enabled = peewee.BooleanField(default=True)
    every_seconds = peewee.IntegerField(null=True)
    cron = peewee.CharField(max_length=128, null=True)
    configuration = JSONTextField(default=dict)
    max_attempts = peewee.IntegerField(null=True)
    timeout_seconds = peewee.IntegerField(null=True)
    last_run_at = UTCDateTimeField(null=True)
    last_run_status = peewee.CharField(max_length=16, null=True)
    next_run_at = UTCDateTimeField(null=True)
    created_at = UTCDateTimeField()
    updated_at = UTCDateTimeField()
    max_running = peewee.IntegerField(default=1, constraints=[peewee.SQL("DEFAULT 1")])
    tz = peewee.CharField(max_length=64, null=True)
    catch_up = peewee.CharField(max_length=8, default="skip", constraints=[peewee.SQL("DEFAULT 'skip'")])
    late_after_seconds = peewee.IntegerField(null=True)
    # The latest slot the schedule enqueued: catch-up resumes after it.
    last_scheduled_for = UTCDateTimeField(null=True)
    failure_streak = peewee.IntegerField(default=0, constraints=[peewee.SQL("DEFAULT 0")])
    last_success_at = UTCDateTimeField(null=True)
    # When `flow.late` was raised for it; cleared by its next success.
    late_alerted_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "data_flows"


class Job(BaseModel):
    id = IdField()
    data_flow = peewee.ForeignKeyField(DataFlow, backref="jobs", on_delete="CASCADE", index=False)
    data_flow_id: int
    queue = peewee.CharField(max_length=64)
    priority = peewee.IntegerField(default=0)
    status = peewee.CharField(max_length=16, default="queued")
    attempts = peewee.IntegerField(default=0)
    max_attempts = peewee.IntegerField()
    rescues = peewee.IntegerField(default=0)
    run_at = UTCDateTimeField()
    params = JSONTextField(default=dict)
    last_error = peewee.TextField(null=True)
    locked_by = peewee.CharField(max_length=255, null=True)
    lease_token = peewee.CharField(max_length=64, null=True)
    lease_expires_at = UTCDateTimeField(null=True)
    created_at = UTCDateTimeField()
    finished_at = UTCDateTimeField(null=True)
    key = peewee.TextField(default="", constraints=[peewee.SQL("DEFAULT ''")])
    scheduled_for = UTCDateTimeField(null=True)
    triggered_by = peewee.CharField(max_length=16, default="trigger", constraints=[peewee.SQL("DEFAULT 'trigger'")])
    upstream_job_id = peewee.BigIntegerField(null=True)
    run_limit_id = peewee.BigIntegerField(null=True)
    cancel_requested = peewee.BooleanField(default=False, constraints=[peewee.SQL("DEFAULT FALSE")])

    class Meta:
        table_name = "jobs"


class DataFlowRun(BaseModel):
    id = IdField()
    data_flow = peewee.ForeignKeyField(DataFlow, backref="runs", on_delete="CASCADE", index=False)
    data_flow_id: int
    job = peewee.ForeignKeyField(Job, backref="runs", on_delete="CASCADE", index=False)
    job_id: int
    attempt = peewee.IntegerField()
    status = peewee.CharField(max_length=16, default="pending")
    queue = peewee.CharField(max_length=64)
    worker = peewee.CharField(max_length=255, null=True)
    created_at = UTCDateTimeField()
    started_at = UTCDateTimeField(null=True)
    ended_at = UTCDateTimeField(null=True)
    duration_ms = peewee.IntegerField(null=True)
    error_message = peewee.TextField(null=True)
    error_backtrace = peewee.TextField(null=True)
    result = JSONTextField(null=True)
    log_bytes = peewee.IntegerField(default=0, constraints=[peewee.SQL("DEFAULT 0")])
    log_dropped_bytes = peewee.IntegerField(default=0, constraints=[peewee.SQL("DEFAULT 0")])
    cpu_seconds = peewee.FloatField(null=True)
    max_rss_kb = peewee.IntegerField(null=True)

    class Meta:
        table_name = "data_flow_runs"


class RunLog(BaseModel):
    """One line an attempt printed (`stdout`, `stderr`) or logged (`log`), numbered in order (`seq`),
    from the head or the tail of its output."""

    id = IdField()
    run = peewee.ForeignKeyField(DataFlowRun, on_delete="CASCADE", index=False)
    run_id: int
    seq = peewee.IntegerField()
    at = UTCDateTimeField()
    stream = peewee.CharField(max_length=8)
    text = peewee.TextField()
    part = peewee.CharField(max_length=4)

    class Meta:
        table_name = "run_logs"


class QueueState(BaseModel):
    """A queue an operator paused (or resumed): its jobs wait until it is resumed."""

    name = peewee.CharField(max_length=64, primary_key=True)
    paused = peewee.BooleanField()
    changed_at = UTCDateTimeField()
    # When `queue.stalled` was raised for it; cleared once it is served again.
    stalled_alerted_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "queue_states"


class RunLimit(BaseModel):
    """How many attempts of a flow's jobs (kind `flow`) or of one backfill's (kind `backfill`)
    may run at once; a claim locks the rows of the limits it counts toward."""

    id = IdField()
    data_flow = peewee.ForeignKeyField(DataFlow, on_delete="CASCADE", index=False)
    data_flow_id: int
    kind = peewee.CharField(max_length=16)
    max_running = peewee.IntegerField()
    claim_token = peewee.CharField(max_length=64, null=True)
    created_at = UTCDateTimeField()

    class Meta:
        table_name = "run_limits"


class FlowUpstream(BaseModel):
    """`after`: the flow runs once every one of its upstreams has succeeded (for a slot)."""

    data_flow = peewee.ForeignKeyField(DataFlow, on_delete="CASCADE", index=False)
    data_flow_id: int
    upstream = peewee.ForeignKeyField(DataFlow, on_delete="CASCADE", index=False)
    upstream_id: int

    class Meta:
        table_name = "flow_upstreams"
        primary_key = peewee.CompositeKey("data_flow", "upstream")


class WorkerRecord(BaseModel):
    """One row per `dfjob worker` process, refreshed with its leases."""

    name = peewee.CharField(max_length=255, primary_key=True)
    host = peewee.CharField(max_length=255)
    pid = peewee.IntegerField()
    queues = JSONTextField()
    concurrency = peewee.IntegerField()
    version = peewee.CharField(max_length=32)
    lease_seconds = peewee.FloatField()
    started_at = UTCDateTimeField()
    last_seen_at = UTCDateTimeField()
    stopped_at = UTCDateTimeField(null=True)
    running_job_ids = JSONTextField(default=list)

    class Meta:
        table_name = "workers"


class AlertOutbox(BaseModel):
    """One alert event, written with the state change that caused it."""

    id = IdField()
    event = peewee.CharField(max_length=32)
    payload = JSONTextField()
    created_at = UTCDateTimeField()

    class Meta:
        table_name = "alert_outbox"


class AlertDelivery(BaseModel):
    """One alert event on its way to one destination (a digest of its URL)."""

    outbox = peewee.ForeignKeyField(AlertOutbox, on_delete="CASCADE", index=False)
    outbox_id: int
    destination = peewee.CharField(max_length=32)
    attempts = peewee.IntegerField()
    next_attempt_at = UTCDateTimeField()
    sent_at = UTCDateTimeField(null=True)
    gave_up_at = UTCDateTimeField(null=True)
    last_error = peewee.TextField(null=True)

    class Meta:
        table_name = "alert_deliveries"
        primary_key = peewee.CompositeKey("outbox", "destination")


class State(BaseModel):
    """Small named facts the daemons share: `last_prune_at`, `last_heartbeat_at`."""

    name = peewee.CharField(max_length=64, primary_key=True)
    value = peewee.TextField(null=True)
    changed_at = UTCDateTimeField()

    class Meta:
        table_name = "dfjob_state"


class PrunedRunTotal(BaseModel):
    """Runs of a flow that `prune` deleted, by status: with the runs still kept, the run totals."""

    data_flow = peewee.ForeignKeyField(DataFlow, on_delete="CASCADE", index=False)
    data_flow_id: int
    status = peewee.CharField(max_length=16)
    runs = peewee.BigIntegerField()

    class Meta:
        table_name = "pruned_run_totals"
        primary_key = peewee.CompositeKey("data_flow", "status")


class SchemaVersion(BaseModel):
    """One row per schema step applied; the highest `version` is the database's version."""

    version = peewee.IntegerField()
    name = peewee.TextField(null=True)
    applied_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "dfjob_schema"


MODELS: list[type[BaseModel]] = [
    DataFlow, Job, DataFlowRun, WorkerRecord, SchemaVersion, RunLimit, FlowUpstream, RunLog, QueueState,
    AlertOutbox, AlertDelivery, State, PrunedRunTotal,
]  # fmt: skip


def _use_schema(database: peewee.Database) -> None:
    """Postgres: every model lives in the configured schema (`database.schema`)."""
    for model in MODELS:
        model._meta.schema = pg_schema()


database_proxy.attach_callback(_use_schema)  # type: ignore[no-untyped-call]


# Written by hand because they are partial: peewee's DDL helpers do not cover every case on both.
INDEXES = [
    # The claim reads only queued rows, in claim order: its cost does not grow with history.
    "CREATE INDEX IF NOT EXISTS jobs_claim ON dfjob.jobs (queue, priority, run_at, id) WHERE status = 'queued'",
    # Two active jobs of one flow never share a key: a database fact, not a check-then-insert race.
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_active_key ON dfjob.jobs (data_flow_id, key)"
    " WHERE status IN ('queued', 'running')",
    # A claim counts the running attempts of each limit it would add to.
    "CREATE INDEX IF NOT EXISTS jobs_running_limit ON dfjob.jobs (run_limit_id) WHERE status = 'running'",
    # A heartbeat skips a flow whose scheduled job is still queued.
    "CREATE INDEX IF NOT EXISTS jobs_queued_schedule ON dfjob.jobs (data_flow_id)"
    " WHERE status = 'queued' AND triggered_by = 'schedule'",
    # Chains and backfills look up a flow's job for a slot.
    "CREATE INDEX IF NOT EXISTS jobs_flow_slot ON dfjob.jobs (data_flow_id, scheduled_for)",
    "CREATE UNIQUE INDEX IF NOT EXISTS run_limits_flow ON dfjob.run_limits (data_flow_id) WHERE kind = 'flow'",
    "CREATE INDEX IF NOT EXISTS flow_upstreams_upstream ON dfjob.flow_upstreams (upstream_id)",
    "CREATE INDEX IF NOT EXISTS run_logs_run ON dfjob.run_logs (run_id, seq)",
    # The status screen: running jobs by queue, recent failures, without reading the history.
    "CREATE INDEX IF NOT EXISTS jobs_running ON dfjob.jobs (queue) WHERE status = 'running'",
    "CREATE INDEX IF NOT EXISTS runs_failed ON dfjob.data_flow_runs (id) WHERE status = 'failed'",
    "CREATE INDEX IF NOT EXISTS jobs_failed ON dfjob.jobs (finished_at, queue) WHERE status = 'failed'",
    # Rescue looks only at running jobs whose lease ran out.
    "CREATE INDEX IF NOT EXISTS jobs_lease ON dfjob.jobs (lease_expires_at) WHERE status = 'running'",
    "CREATE INDEX IF NOT EXISTS jobs_flow ON dfjob.jobs (data_flow_id, id)",
    "CREATE INDEX IF NOT EXISTS jobs_finished ON dfjob.jobs (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS runs_job ON dfjob.data_flow_runs (job_id, attempt)",
    "CREATE INDEX IF NOT EXISTS runs_flow ON dfjob.data_flow_runs (data_flow_id, id)",
    "CREATE INDEX IF NOT EXISTS flows_due ON dfjob.data_flows (next_run_at) WHERE enabled",
    # The dashboard and API: any filter pages by id through an index; the overview's last 24 h.
    "CREATE INDEX IF NOT EXISTS runs_status ON dfjob.data_flow_runs (status, id)",
    "CREATE INDEX IF NOT EXISTS runs_created ON dfjob.data_flow_runs (created_at, status)",
    "CREATE INDEX IF NOT EXISTS jobs_queue ON dfjob.jobs (queue, id)",
    # Alerts: old events leave with the history; deliveries still to make, by when.
    "CREATE INDEX IF NOT EXISTS alert_outbox_created ON dfjob.alert_outbox (created_at)",
    "CREATE INDEX IF NOT EXISTS alert_deliveries_due ON dfjob.alert_deliveries (next_attempt_at)"
    " WHERE sent_at IS NULL AND gave_up_at IS NULL",
]


def jobs_status_index(postgres: bool) -> str:
    """Jobs by status, newest first, for lists filtered by status. On Postgres only finished jobs:
    active ones have partial indexes of their own, and a full index on status would tempt the claim
    away from `jobs_claim`. SQLite cannot use that partial index for `status = 'failed'` (it does not
    read an IN list as implied), and its claim keeps `jobs_claim` beside a full one."""
    where = " WHERE status IN ('succeeded', 'failed', 'cancelled')" if postgres else ""
    return f"CREATE INDEX IF NOT EXISTS jobs_status ON dfjob.jobs (status, id){where}"


def create_latest(version: int, now: datetime) -> None:
    """Create the latest schema on an empty database, inside the caller's transaction."""
    schema = pg_schema()
    database = database_proxy.obj
    if schema is not None:
        execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    database.create_tables(MODELS, safe=False)
    for statement in [*INDEXES, jobs_status_index(schema is not None)]:
        execute(statement)
    SchemaVersion.create(version=version, name=f"create the schema at version {version}", applied_at=now)
