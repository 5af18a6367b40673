"""What each drained job cost: CPU of the worker processes (and their children), of the database
server when it runs on this machine, and database transactions."""

from __future__ import annotations

import contextlib
import json
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.procs import children
from benchmarks.servers import Env

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    client_cpu: float  # this process's reaped children: the workers and what they started
    server_cpu: float | None  # the Postgres server, when it runs here
    transactions: int | None  # Postgres: commits and rollbacks of the database


def _server_cpu(postmaster: int) -> float | None:
    """CPU seconds of the postmaster, its children, and the children it reaped."""
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        total = sum(int(value) for value in stat[11:15])
        for child in children(postmaster):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / TICKS
    return None


def snapshot(env: Env) -> Snapshot:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = usage.ru_utime + usage.ru_stime
    if not env.postgres:
        return Snapshot(client, None, None)
    backend = int(env.sql("SELECT pg_backend_pid()").fetchone()[0])
    postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    transactions = env.sql(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()[0]
    return Snapshot(client, _server_cpu(postmaster), int(transactions))


def _stopped(logs: list[Path]) -> list[dict[str, Any]]:
    """The `worker.stopped` events of dfjob workers' logs (none for baselines)."""
    found = []
    for log in logs:
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                if '"worker.stopped"' in line:
                    found.append(json.loads(line))
    return found


def per_job(env: Env, before: Snapshot, jobs: int, logs: list[Path]) -> dict[str, Any]:
    after = snapshot(env)
    costs: dict[str, Any] = {"client_cpu_ms_per_job": round((after.client_cpu - before.client_cpu) * 1000 / jobs, 3)}
    if before.server_cpu is not None and after.server_cpu is not None:
        costs["database_cpu_ms_per_job"] = round((after.server_cpu - before.server_cpu) * 1000 / jobs, 3)
    if before.transactions is not None and after.transactions is not None:
        # Less the two statements of `snapshot` itself, each its own transaction.
        costs["transactions_per_job"] = round((after.transactions - before.transactions - 2) / jobs, 3)
    stopped = _stopped(logs)
    if stopped:
        costs["supervisor_cpu_ms_per_job"] = round(sum(e["cpu_seconds"] for e in stopped) * 1000 / jobs, 3)
        costs["runner_cpu_ms_per_job"] = round(sum(e["runner_cpu_seconds"] for e in stopped) * 1000 / jobs, 3)
        costs["turns_per_job"] = round(sum(e["turns"] for e in stopped) / jobs, 3)
    return costs
