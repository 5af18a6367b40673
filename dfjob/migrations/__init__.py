"""Schema versions: which one a database holds, the steps that bring it to this release's, and
the check every command makes before it touches anything.

Each step is plain SQL per dialect in a module of its own (`m0002_own_schema.py`, …), not
`playhouse.migrate`: a released step must say exactly what runs on each database and never change
because a library did, and the steps need what the migrator does not cover (partial indexes,
moving tables between Postgres schemas).

- An empty database gets this release's schema directly (`models.create_latest`); a test checks
  that it matches a version-1 database brought up by the steps.
- `upgrade` applies each missing step in its own transaction. Inside it the version is read
  again under a lock (a Postgres advisory lock per schema; SQLite's `BEGIN IMMEDIATE`), so two
  upgrades at once apply every step once: the second waits, then finds nothing to do. On
  Postgres a step waits at most `STEP_LOCK_TIMEOUT` for a table lock, so it never leaves
  running workers queued behind it for long; it fails cleanly and can be run again.
- Every other command calls `prepare` once at start: a database of another version is refused
  with one line, an empty one is created (commands that write) or refused (commands that read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dfjob import clock
from dfjob.db import advisory_key, pg_schema, write_transaction
from dfjob.errors import DfjobError
from dfjob.migrations import (
    m0002_own_schema,
    m0003_workers,
    m0004_flows_as_data,
    m0005_operator_view,
    m0006_alerts_and_totals,
    m0007_web_reads,
)
from dfjob.models import create_latest, to_db_time
from dfjob.sql import execute

STEP_LOCK_TIMEOUT = "10s"


@dataclass(frozen=True)
class Step:
    """One schema change: from `version - 1` to `version`."""

    version: int
    name: str
    sqlite: Callable[[], None]
    postgres: Callable[[str], None]


STEPS: tuple[Step, ...] = (
    Step(2, m0002_own_schema.NAME, m0002_own_schema.sqlite, m0002_own_schema.postgres),
    Step(3, m0003_workers.NAME, m0003_workers.sqlite, m0003_workers.postgres),
    Step(4, m0004_flows_as_data.NAME, m0004_flows_as_data.sqlite, m0004_flows_as_data.postgres),
    Step(5, m0005_operator_view.NAME, m0005_operator_view.sqlite, m0005_operator_view.postgres),
    Step(6, m0006_alerts_and_totals.NAME, m0006_alerts_and_totals.sqlite, m0006_alerts_and_totals.postgres),
    Step(7, m0007_web_reads.NAME, m0007_web_reads.sqlite, m0007_web_reads.postgres),
)
LATEST = STEPS[-1].version
# Version 1 kept its tables in Postgres's `public` schema; they move in step 2.
LEGACY_SCHEMA = "public"


@dataclass(frozen=True)
class Upgrade:
    before: int
    after: int
    applied: list[Step]


def database_version() -> int:
    """The schema version of the database in use; 0 when it holds no dfjob tables."""
    schema = pg_schema()
    if schema is None:
        if not execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dfjob_schema'").fetchone():
            return 0
        table = "dfjob_schema"
    else:
        # Read from the catalog tables, not with to_regclass: after waiting on the schema lock, a
        # backend's catalog cache may not yet show a table that another upgrade just moved.
        found = {
            row[0]
            for row in execute(
                "SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relname = 'dfjob_schema' AND c.relkind = 'r' AND n.nspname IN (?, ?)",
                (schema, LEGACY_SCHEMA),
            ).fetchall()
        }
        if schema in found:
            table = f'"{schema}".dfjob_schema'
        elif LEGACY_SCHEMA in found:
            table = f"{LEGACY_SCHEMA}.dfjob_schema"
        else:
            return 0
    value = execute(f"SELECT MAX(version) FROM {table}").fetchone()[0]
    return int(value or 0)


def pending(version: int) -> list[Step]:
    return [step for step in STEPS if step.version > version]


def check_version(version: int) -> None:
    """Refuse a database whose schema this release cannot use as it is."""
    if version < LATEST:
        raise DfjobError(f"the database schema is version {version}; run `dfjob db upgrade`")
    if version > LATEST:
        raise DfjobError(f"the database schema is version {version}, newer than this dfjob ({LATEST}); upgrade dfjob")


def prepare(create: bool, where: str) -> None:
    """The check every command makes once at start. An empty database is given the latest
    schema when `create`, else refused; any other version but the latest is refused."""
    version = database_version()
    if version == 0:
        if not create:
            raise DfjobError(f"no dfjob database at {where} (run `dfjob db init`)")
        version = create_schema()
    check_version(version)


def create_schema() -> int:
    """Give an empty database the latest schema; safe when many processes start at once.
    Returns the version the database holds afterwards."""
    with write_transaction():
        _lock()
        version = database_version()
        if version == 0:
            create_latest(LATEST, clock.now())
            version = LATEST
    return version


def upgrade() -> Upgrade:
    """Apply every missing step in order, each in its own transaction (an empty database is
    created at the latest version instead)."""
    before = database_version()
    if before == 0:
        return Upgrade(0, create_schema(), [])
    check_not_newer(before)
    applied = [step for step in pending(before) if _apply(step)]
    return Upgrade(before, database_version(), applied)


def check_not_newer(version: int) -> None:
    if version > LATEST:
        check_version(version)


def _lock() -> None:
    """Postgres: serialise schema changes of this schema until the transaction ends (SQLite's
    BEGIN IMMEDIATE already did)."""
    if pg_schema() is not None:
        execute("SELECT pg_advisory_xact_lock(?)", (advisory_key("schema"),))


def _apply(step: Step) -> bool:
    """Apply one step unless another process already has; True when this call applied it."""
    schema = pg_schema()
    with write_transaction():
        _lock()
        version = database_version()
        if version >= step.version:
            return False
        if version != step.version - 1:
            raise DfjobError(f"cannot apply schema step {step.version} to a database at version {version}")
        if schema is None:
            step.sqlite()
        else:
            execute(f"SET LOCAL lock_timeout = '{STEP_LOCK_TIMEOUT}'")
            step.postgres(schema)
        execute(
            "INSERT INTO dfjob.dfjob_schema (version, name, applied_at) VALUES (?, ?, ?)",
            (step.version, step.name, to_db_time(clock.now())),
        )
    return True
