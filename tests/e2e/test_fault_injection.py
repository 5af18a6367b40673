"""Fault injection: `kill -9` of a worker at random points, and a Postgres restart under a draining
worker. Whatever happens, nothing is lost, nothing runs twice at once, no row is left half-done."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import DFJOB, Daemon, Dfjob, as_time, children_of, pid_alive
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

# 20 iterations on each backend (DFJOB_FAULT_ITERATIONS changes it).
ITERATIONS_PER_BACKEND = int(os.environ.get("DFJOB_FAULT_ITERATIONS", "20"))
FLOWS = 3
PHASES = ("startup", "running", "finishing", "anytime")


def _flows_file(path: Path, names: list[str], ledger: Path, seconds: float, every: str | None = None) -> Path:
    tables = []
    for name in names:
        lines = ["[[flow]]", f'name = "{name}"', 'class = "e2e_flows:TimedLedger"']
        if every:
            lines.append(f'every = "{every}"')
        lines.append(f'config = {{ key = "{name}", ledger = "{ledger}", seconds = {seconds} }}')
        tables.append("\n".join(lines))
    path.write_text("\n\n".join(tables) + "\n", encoding="utf-8")
    return path


def _trigger_all(dfjob: Dfjob, names: list[str]) -> None:
    """One `dfjob trigger` per flow, all started at once."""
    processes = [
        subprocess.Popen(
            [str(DFJOB), "--config", str(dfjob.config), "trigger", name, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=dfjob.directory,
        )
        for name in names
    ]
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert '"deduplicated": false' in out, out


def _active(dfjob: Dfjob) -> list[dict[str, Any]]:
    return dfjob.db.rows("SELECT * FROM jobs WHERE status IN ('queued', 'running')")


def _leases_expired(dfjob: Dfjob) -> bool:
    now = datetime.now(UTC)
    for job in dfjob.db.rows("SELECT lease_expires_at FROM jobs WHERE status = 'running'"):
        expires = as_time(job["lease_expires_at"])
        if expires is None or expires >= now:
            return False
    return True


def _drain(dfjob: Dfjob) -> int:
    """Run rescuing `worker --burst` passes until no job is active; returns how many passes ran."""
    passes = 0
    while True:
        passes += 1
        assert passes <= 10, f"jobs still active after 10 burst passes: {_active(dfjob)}"
        dfjob.ok("worker", "--burst")
        if not _active(dfjob):
            return passes
        # A burst exits when nothing is ready: a dead worker's lease must run out first.
        wait_for(lambda: _leases_expired(dfjob), timeout=30, interval=0.1, what="expired leases")


def _kill_at(dfjob: Dfjob, worker: Daemon, phase: str, rng: random.Random, ledger: Path) -> list[int]:
    """Sleep until the chosen moment, then SIGKILL the worker's supervisor alone; returns its runner pids.

    The sleeps here are the fault injection itself (a random moment), not waits for things to settle.
    """
    if phase == "startup":
        time.sleep(rng.uniform(0, 0.5))
    elif phase == "running":
        wait_for(
            lambda: (
                worker.process.poll() is not None
                or dfjob.db.scalar("SELECT COUNT(*) AS n FROM data_flow_runs WHERE status = 'in_progress'")
                or not _active(dfjob)
            ),
            timeout=30,
            what="a run in progress",
        )
        time.sleep(rng.uniform(0, 0.3))
    elif phase == "finishing":
        # The moment user code has returned: the outcome may not be written yet.
        ends = ledger.read_text().count(" end ") if ledger.exists() else 0
        wait_for(
            lambda: worker.process.poll() is not None or (ledger.exists() and ledger.read_text().count(" end ") > ends),
            timeout=30,
            interval=0.005,
            what="a run to end",
        )
    else:
        time.sleep(rng.uniform(0, 1.5))
    runners = children_of(worker.pid)
    os.kill(worker.pid, signal.SIGKILL)
    return runners


def _check_invariants(dfjob: Dfjob, ledger: Path, where: str) -> None:
    jobs = dfjob.db.jobs()
    runs = dfjob.db.runs()
    runs_by_job: dict[int, list[dict[str, Any]]] = defaultdict(list)
    runs_by_flow: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        runs_by_job[run["job_id"]].append(run)
        runs_by_flow[run["data_flow_id"]].append(run)
        assert run["status"] in ("success", "failed"), f"{where}: run left {run['status']}: {run}"
        assert run["ended_at"] is not None, f"{where}: finished run without ended_at: {run}"
    for job in jobs:
        job_runs = runs_by_job[job["id"]]
        assert job["status"] in ("succeeded", "failed"), f"{where}: job left {job['status']}: {job}"
        assert len(job_runs) == job["attempts"], f"{where}: job {job['id']} has {len(job_runs)} runs for {job}"
        assert [run["attempt"] for run in job_runs] == list(range(1, job["attempts"] + 1)), f"{where}: {job_runs}"
        successes = [run for run in job_runs if run["status"] == "success"]
        assert len(successes) == (1 if job["status"] == "succeeded" else 0), f"{where}: {job_runs}"
        if successes:
            assert successes[0] is job_runs[-1], f"{where}: a run after the success: {job_runs}"
        lost = [run for run in job_runs if (run["error_message"] or "").startswith("worker lost")]
        assert job["rescues"] == len(lost), f"{where}: rescues {job['rescues']} vs lost runs {lost}"
        assert job["locked_by"] is None, f"{where}: {job}"
    for flow_id, flow_runs in runs_by_flow.items():
        flow_runs.sort(key=lambda run: run["id"])
        for before, after in itertools.pairwise(flow_runs):
            before_end, after_start = as_time(before["ended_at"]), as_time(after["created_at"])
            assert before_end is not None
            assert after_start is not None
            assert before_end <= after_start, f"{where}: runs of flow {flow_id} overlap: {before} / {after}"
    succeeded_per_flow = Counter(
        row["name"]
        for row in dfjob.db.rows(
            "SELECT data_flows.name FROM jobs JOIN data_flows ON data_flows.id = jobs.data_flow_id"
            " WHERE jobs.status = 'succeeded'"
        )
    )
    ended = Counter(line.split()[0] for line in ledger.read_text().splitlines() if line.split()[1] == "end")
    for name, count in succeeded_per_flow.items():
        assert ended[name] >= count, f"{where}: flow {name} succeeded {count} times but ran to the end {ended[name]}"


def test_kill_9_at_random_moments_loses_nothing(
    make_dfjob: Callable[..., Dfjob], database_url: str, backend: str
) -> None:
    rng = random.Random(f"dfjob-kill-9-{backend}")
    dfjob = make_dfjob(database_url, worker={"lease_seconds": 2, "concurrency": 2})
    ledger = dfjob.directory / "ledger.txt"
    names = [f"flow{index}" for index in range(FLOWS)]
    assert dfjob.json("flows", "import", str(_flows_file(dfjob.directory / "flows.toml", names, ledger, 0.3))) == {
        "created": FLOWS,
        "updated": 0,
    }
    phases: Counter[str] = Counter()
    for iteration in range(ITERATIONS_PER_BACKEND):
        phase = rng.choice(PHASES)
        phases[phase] += 1
        where = f"iteration {iteration} ({phase})"
        _trigger_all(dfjob, names)
        worker = dfjob.start("worker", name=f"worker{iteration}")
        runners = _kill_at(dfjob, worker, phase, rng, ledger)
        assert worker.wait(timeout=30) == -signal.SIGKILL, f"{where}: {worker.stderr()}"
        for runner in runners:
            wait_for(lambda runner=runner: not pid_alive(runner), timeout=10, what=f"{where}: runner {runner} gone")
        _drain(dfjob)
        _check_invariants(dfjob, ledger, where)
    jobs = dfjob.db.jobs()
    assert len(jobs) == FLOWS * ITERATIONS_PER_BACKEND
    # Only one kill per job, with three attempts each: every job ends succeeded.
    assert all(job["status"] == "succeeded" for job in jobs), jobs
    # The seeded choice of moments includes runs in progress: leases were really lost and taken back.
    assert phases["running"] > 0
    assert sum(job["rescues"] for job in jobs) > 0
    rescues = sum(job["rescues"] for job in jobs)
    print(f"{backend}: {ITERATIONS_PER_BACKEND} kill -9 iterations, moments {dict(phases)}, {rescues} rescues")


# -- Postgres restart ----------------------------------------------------------------------------


def _postgres_version() -> str | None:
    root = Path("/etc/postgresql")
    if not root.is_dir():
        return None
    versions = sorted((path.name for path in root.iterdir() if (path / "main").is_dir()), key=float)
    return versions[-1] if versions else None


def _pg_ready(url: str) -> bool:
    parts = urlsplit(url)
    done = subprocess.run(
        ["pg_isready", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0


@pytest.fixture
def pg_cluster(postgres_url: str) -> Iterator[tuple[str, str]]:
    """(version, url) of a local cluster this test may restart; it is up again afterwards, whatever happens."""
    version = _postgres_version()
    missing = None
    if version is None or shutil.which("pg_ctlcluster") is None or shutil.which("pg_isready") is None:
        missing = "needs a local Debian-style Postgres cluster (pg_ctlcluster, /etc/postgresql)"
    elif urlsplit(postgres_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        missing = "the Postgres server is not local"
    if missing is not None:
        if os.environ.get("DFJOB_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"Postgres is required, but this test cannot restart it: {missing}")
        pytest.skip(missing)
    try:
        yield version, postgres_url
    finally:
        deadline = time.monotonic() + 60
        while not _pg_ready(postgres_url):
            if time.monotonic() > deadline:
                subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], timeout=120)
                deadline = time.monotonic() + 60
            time.sleep(0.5)


@pytest.mark.postgres
def test_worker_rides_out_a_postgres_restart(make_dfjob: Callable[..., Dfjob], pg_cluster: tuple[str, str]) -> None:
    version, url = pg_cluster
    dfjob = make_dfjob(url, worker={"lease_seconds": 3, "concurrency": 2})
    ledger = dfjob.directory / "ledger.txt"
    names = [f"flow{index:03d}" for index in range(100)]
    flows_file = _flows_file(dfjob.directory / "flows.toml", names, ledger, 0.05, every="1h")
    assert dfjob.json("flows", "import", str(flows_file))["created"] == 100
    assert dfjob.json("heartbeat")["enqueued"] == 100
    worker = dfjob.start("worker")
    wait_for(
        lambda: dfjob.db.scalar("SELECT COUNT(*) AS n FROM jobs WHERE status = 'succeeded'") >= 10,
        timeout=60,
        interval=0.1,
        what="the worker to get going",
    )

    restart = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert restart.returncode == 0, restart.stderr
    wait_for(lambda: _pg_ready(url), timeout=60, interval=0.5, what="Postgres back up")
    wait_for(
        lambda: dfjob.db.scalar("SELECT COUNT(*) AS n FROM jobs WHERE status IN ('queued', 'running')") == 0,
        timeout=120,
        interval=0.2,
        what="every job to end",
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, worker.stderr()[-3000:]
    outages = worker.events("db.unavailable")
    assert outages, "the worker should have logged db.unavailable"
    assert all({"error", "retry_in"} <= set(line) for line in outages)
    jobs = dfjob.db.jobs()
    assert len(jobs) == 100
    assert [job for job in jobs if job["status"] != "succeeded"] == []
    _check_invariants(dfjob, ledger, "after the restart")
    ended = Counter(line.split()[0] for line in ledger.read_text().splitlines() if line.split()[1] == "end")
    assert set(ended) == set(names)
