"""Shared set-up for the many-hosts tests: a network of hosts, a private Postgres holding one dfjob
database, short leases and immediate retries, flows that keep a ledger of their attempts
(`ledger_flows:AttemptLedger`), and checks of the job history every such test ends with."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import tomli_w

from tests.e2e.conftest import Daemon, Dfjob
from tests.support.hosts import Host, Network
from tests.support.ledger import Attempt, PidWatcher, attempts, read_records
from tests.support.waiting import wait_for

LEASE = 3.0
# Short leases keep these tests fast: renewals every second, runners stop 2.5 s after the last
# confirmed renewal (the fence, 5/6 of a lease), leases run out 3 s after it.
FENCE = LEASE * 5 / 6
# Room for the kill itself and for a loaded machine, on top of the fence.
KILL_SLACK = 1.0
FAST_WORKER = {"lease_seconds": LEASE, "poll_interval": 0.1, "shutdown_grace": 5}
IMMEDIATE_RETRIES = {"backoff_initial": 0, "backoff_max": 0, "max_attempts": 5}
DATABASE = "jobs"
LEDGER_FLOW = "ledger_flows:AttemptLedger"


@dataclass
class Cluster:
    """Hosts on one network, a private Postgres with a dfjob database, and a handle whose commands
    run on the first host (`dfjob.db` reads through the Unix socket)."""

    network: Network
    dfjob: Dfjob

    @property
    def hosts(self) -> list[Host]:
        return list(self.network.hosts)

    @property
    def local_url(self) -> str:
        assert self.network.postgres is not None
        return self.network.postgres.local_url(DATABASE)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement (`%s` placeholders) on the dfjob database, autocommit, from the test process."""
        with psycopg.connect(self.local_url, autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql, tuple(params))
            return cursor.fetchall() if cursor.description is not None else []

    def database_now(self) -> datetime:
        """The database server's clock, naive UTC like the stored times."""
        value: datetime = self.execute("SELECT clock_timestamp() AT TIME ZONE 'UTC'")[0][0]
        return value


def make_cluster(
    make_network: Callable[..., Network], make_dfjob: Callable[..., Dfjob], hosts: int = 2, **sections: dict[str, Any]
) -> Cluster:
    """`hosts` hosts, a private Postgres with database `jobs` made by `dfjob db init` on the first host."""
    network = make_network(hosts=hosts)
    assert network.postgres is not None
    network.postgres.create_database(DATABASE)
    sections.setdefault("worker", dict(FAST_WORKER))
    sections.setdefault("retry", dict(IMMEDIATE_RETRIES))
    dfjob = make_dfjob(
        network.url(DATABASE), read_url=network.postgres.local_url(DATABASE), host=network.hosts[0], **sections
    )
    dfjob.ok("db", "init")
    return Cluster(network, dfjob)


def ledger_config(
    name: str, ledger: Path, seconds: float | list[float], tick: float = 0.25, release: Path | None = None
) -> dict[str, Any]:
    config: dict[str, Any] = {"key": name, "ledger": str(ledger), "seconds": seconds, "tick": tick}
    if release is not None:
        config["release"] = str(release)
    return config


def add_ledger_flow(
    dfjob: Dfjob,
    name: str,
    ledger: Path,
    seconds: float | list[float],
    *options: str,
    tick: float = 0.25,
    release: Path | None = None,
) -> int:
    """A data flow `name` running AttemptLedger into `ledger`, keyed by its name."""
    return dfjob.add_flow(name, LEDGER_FLOW, *options, config=ledger_config(name, ledger, seconds, tick, release))


def import_flows(dfjob: Dfjob, flows: Sequence[dict[str, Any]]) -> None:
    """Create many data flows at once (`flows import` of a generated file): each a dict of the
    file's keys (name, class, queue, every, config, …)."""
    path = dfjob.directory / f"flows-{time.monotonic_ns()}.toml"
    path.write_text(tomli_w.dumps({"flow": list(flows)}), encoding="utf-8")
    result = dfjob.json("flows", "import", str(path))
    assert result["created"] == len(flows), result


def enqueue_all(dfjob: Dfjob, count: int) -> None:
    """One heartbeat: every `every` flow (new ones are due at once) gets its job."""
    result = dfjob.json("heartbeat")
    assert result["enqueued"] == count, result


def sleep_until(moment: float) -> None:
    """Wait for a chosen monotonic moment: the timing of an injected fault, not a wait for things to settle."""
    time.sleep(max(0.0, moment - time.monotonic()))


def monotonic_at(cluster: Cluster, stamp: datetime) -> float:
    """The monotonic time at which the database's clock shows `stamp` (naive UTC, as stored)."""
    database_now = cluster.database_now()
    return time.monotonic() + (stamp - database_now).total_seconds()


def netns_of(pid: int) -> str:
    """`net:[inode]`: which host (network namespace) a process lives in."""
    return os.readlink(f"/proc/{pid}/ns/net")


def worker_name(daemon: Daemon, timeout: float = 30) -> str:
    """The name a worker gave itself (its `worker.started` event)."""
    started = wait_for(lambda: daemon.events("worker.started"), timeout=timeout, what="worker.started")
    return str(started[0]["worker"])


def attempt_of(ledger: Path, job_id: int, attempt: int, watcher: PidWatcher | None = None) -> Attempt | None:
    """An attempt's ledger record once it has started, None before."""
    for found in attempts(read_records(str(ledger)), watcher):
        if found.job_id == job_id and found.attempt == attempt:
            return found
    return None


def wait_attempt(ledger: Path, job_id: int, attempt: int, timeout: float = 30) -> Attempt:
    return wait_for(
        lambda: attempt_of(ledger, job_id, attempt),
        timeout=timeout,
        interval=0.01,
        what=f"job {job_id} attempt {attempt} to start",
    )


def wait_status(dfjob: Dfjob, job_id: int, statuses: Sequence[str], timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: (job := dfjob.job(job_id))["status"] in statuses and job,
        timeout=timeout,
        interval=0.05,
        what=f"job {job_id} to be {'/'.join(statuses)}",
    )


def lease_lost_logged(daemon: Daemon, job_id: int) -> bool:
    return any(event.get("job_id") == job_id for event in daemon.events("job.lease_lost"))


def history_problems(jobs: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]) -> list[str]:
    """What is wrong with a finished history: a job left active, a run left open, an attempt without
    its run (or a run too many), a succeeded job without exactly one success (its last run), a
    failed one with attempts left (every job here retries until its attempts are used up)."""
    problems = []
    runs_by_job: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        runs_by_job[run["job_id"]].append(run)
        if run["status"] not in ("success", "failed") or run["ended_at"] is None:
            problems.append(f"run {run['id']} left {run['status']}")
    for job in jobs:
        job_runs = runs_by_job[job["id"]]
        if job["status"] not in ("succeeded", "failed"):
            problems.append(f"job {job['id']} left {job['status']}")
        if [run["attempt"] for run in job_runs] != list(range(1, job["attempts"] + 1)):
            numbers = [run["attempt"] for run in job_runs]
            problems.append(f"job {job['id']}: {job['attempts']} attempts but runs of attempts {numbers}")
        successes = [run for run in job_runs if run["status"] == "success"]
        if job["status"] == "succeeded" and (len(successes) != 1 or job_runs[-1]["status"] != "success"):
            problems.append(f"job {job['id']} succeeded with runs {[r['status'] for r in job_runs]}")
        if job["status"] == "failed" and (successes or job["attempts"] < job["max_attempts"]):
            problems.append(f"job {job['id']} failed after {job['attempts']} of {job['max_attempts']} attempts")
    return problems
