"""`dfjob doctor`: is this installation set up to run jobs, and if not, what is wrong.

Each finding is `ok`, `warning` (worth knowing, nothing stops) or `error` (jobs will not run as
expected); the command exits 1 when there is an error. The checks read the database without
checking its schema first, so a database that needs `db upgrade` is diagnosed, not refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dfjob import dbclock, migrations, overview
from dfjob.config import Settings
from dfjob.db import describe_error, is_postgres
from dfjob.sql import execute

# Lease and schedule times come from the database; a host clock this far off is still worth fixing
# (its logs and `--run-at` in local terms disagree with everything else).
CLOCK_WARNING_SECONDS = 2.0


@dataclass
class Finding:
    check: str
    level: str  # ok, warning, error
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "level": self.level, "message": self.message}


@dataclass
class Report:
    facts: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def add(self, check: str, level: str, message: str) -> None:
        self.findings.append(Finding(check, level, message))

    @property
    def ok(self) -> bool:
        return all(finding.level != "error" for finding in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.facts, "findings": [finding.as_dict() for finding in self.findings]}


def diagnose(settings: Settings, connect: Callable[[], str]) -> Report:
    """Every check; `connect` opens the database (without a schema check) and names it."""
    report = Report()
    report.facts["config_file"] = settings.config_file
    where = f"config file {settings.config_file}" if settings.config_file else "no config file: defaults"
    report.add("config", "ok", where)
    if not settings.flows.allowed_modules:
        report.add(
            "allowed_modules",
            "warning",
            "flows.allowed_modules is empty: anyone who can write to the database can make a worker"
            " import and run any module",
        )
    try:
        report.facts["database"] = connect()
    except Exception as exc:  # noqa: BLE001 (a database that cannot be opened is the finding)
        report.facts["database"] = None
        report.add("database", "error", f"cannot open the database: {describe_error(exc)}")
        return report
    report.add("database", "ok", f"database {report.facts['database']}")
    try:
        _check_database(report)
    except Exception as exc:  # noqa: BLE001
        report.add("database", "error", f"cannot read the database: {describe_error(exc)}")
    return report


def _check_database(report: Report) -> None:
    version = migrations.database_version()
    report.facts["schema"] = {"version": version, "latest": migrations.LATEST}
    if version == 0:
        report.add("schema", "error", "no dfjob tables yet: run `dfjob db init`")
        return
    latest = migrations.LATEST
    if version < latest:
        report.add("schema", "error", f"schema version {version}, this dfjob needs {latest}: run `dfjob db upgrade`")
        return
    if version > latest:
        report.add("schema", "error", f"schema version {version} is newer than this dfjob ({latest}): upgrade dfjob")
        return
    report.add("schema", "ok", f"schema version {version} (up to date)")
    if not is_postgres():
        _check_sqlite(report)
    offset = dbclock.sync()
    report.facts["clock_offset_seconds"] = None if offset is None else round(offset, 3)
    if offset is not None:
        level = "warning" if abs(offset) > CLOCK_WARNING_SECONDS else "ok"
        direction = "behind" if offset > 0 else "ahead of"
        report.add("clock", level, f"this host's clock is {abs(offset):.3f}s {direction} the database's")
    _check_queues(report)


def _check_sqlite(report: Report) -> None:
    journal = str(execute("PRAGMA journal_mode").fetchone()[0]).lower()
    busy = int(execute("PRAGMA busy_timeout").fetchone()[0])
    report.facts["sqlite"] = {"journal_mode": journal, "busy_timeout_ms": busy}
    if journal != "wal":
        report.add("sqlite", "error", f"journal_mode is {journal}, not wal: readers would block the worker")
    elif busy < 1000:
        report.add("sqlite", "warning", f"busy_timeout is {busy} ms: writers give up quickly when busy")
    else:
        report.add("sqlite", "ok", f"journal_mode wal, busy_timeout {busy} ms")


def _check_queues(report: Report) -> None:
    queues = overview.list_queues()
    workers = overview.list_workers()
    unserved = [queue for queue in queues if queue["ready"] and not queue["workers"] and not queue["paused"]]
    stale = [worker for worker in workers if worker["state"] == "stale"]
    report.facts["unserved_queues"] = [queue["queue"] for queue in unserved]
    report.facts["stale_workers"] = [worker["name"] for worker in stale]
    report.facts["live_workers"] = sum(1 for worker in workers if worker["state"] == "alive")
    for queue in unserved:
        message = f"queue {queue['queue']} has {queue['ready']} ready jobs and no live worker serves it"
        report.add("queues", "error", message)
    for queue in queues:
        if queue["paused"] and queue["ready"]:
            report.add("queues", "warning", f"queue {queue['queue']} is paused with {queue['ready']} ready jobs")
    if not unserved:
        report.add("queues", "ok", "every queue with ready jobs has a live worker")
    for worker in stale:
        report.add("workers", "warning", f"worker {worker['name']} not seen since {worker['last_seen_at']} (stale)")
