"""A soak: three hosts each running `dfjob worker --concurrency 2` on one Postgres, a scheduler
feeding them a stream of jobs, and for a minute and more every fault at random: kill -9 of
supervisors (restarted) and of runners, links going down or into a blackhole, and one Postgres
restart. Afterwards every job is finished with one run per attempt, and by the flows' own ledgers no
data flow ever had two attempts running at once.

`DFJOB_SOAK_SECONDS` sets how long the faults go on (default 90), `DFJOB_SOAK_SEED` the random
choices; the figures are printed (`-s`)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import (
    IMMEDIATE_RETRIES,
    LEDGER_FLOW,
    Cluster,
    history_problems,
    import_flows,
    ledger_config,
    make_cluster,
    sleep_until,
    worker_name,
)
from tests.e2e.conftest import Daemon, Dfjob
from tests.support.hosts import Network
from tests.support.ledger import Attempt, PidWatcher, attempts, overlaps, read_records
from tests.support.ledger_flows import still_running
from tests.support.waiting import wait_for

SOAK_SECONDS = float(os.environ.get("DFJOB_SOAK_SECONDS", "90"))
HOSTS = 3
# Ten data flows due every 2 s, their attempts from 0.2 s to 4 s long (longer than the lease too).
FLOW_SECONDS = [0.2, 0.3, 0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 4.0]


@dataclass(frozen=True)
class Fault:
    """One fault done, in wall-clock time (the database runs on this machine's clock)."""

    kind: str  # supervisor, runner, down, hole or postgres
    host: int | None  # the host it hit (None: all of them)
    pid: int | None
    start: float
    end: float


@dataclass
class Figures:
    supervisor_kills: int = 0
    runner_kills: int = 0
    link_downs: int = 0
    blackholes: int = 0
    postgres_restarts: int = 0
    errors: list[str] = field(default_factory=list)


class Soak:
    """The workers (one per host, restarted when killed) and the faults done to them."""

    def __init__(self, cluster: Cluster, ledgers: Path, rng: random.Random) -> None:
        self.cluster = cluster
        self.dfjob: Dfjob = cluster.dfjob
        self.ledgers = ledgers
        self.rng = rng
        self.figures = Figures()
        self.workers: dict[int, Daemon] = {}
        self.worker_hosts: dict[int, int] = {}  # supervisor pid: host index
        self.flapping: dict[int, threading.Thread] = {}
        self.faults: list[Fault] = []

    def start_worker(self, index: int) -> None:
        host = self.cluster.hosts[index]
        self.workers[index] = self.dfjob.start("worker", "--concurrency", "2", host=host, name=f"worker-h{index + 1}")
        self.worker_hosts[self.workers[index].pid] = index

    def kill_supervisor(self) -> None:
        """kill -9 of one supervisor alone (its runners die with it: parent-death signal), restarted."""
        index = self.rng.randrange(HOSTS)
        pid, now = self.workers[index].pid, time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            self.figures.supervisor_kills += 1
            self.faults.append(Fault("supervisor", index, pid, now, now))
        self.workers[index].wait(timeout=10)
        self.start_worker(index)

    def kill_runner(self) -> None:
        """kill -9 of a runner in the middle of an attempt."""
        running = [
            attempt
            for path in self.ledgers.glob("*.jsonl")
            for attempt in attempts(read_records(str(path)))
            if attempt.ended is None and still_running(attempt.pid, attempt.start_time)
        ]
        if running:
            victim, now = self.rng.choice(running), time.time()
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim.pid, signal.SIGKILL)
                self.figures.runner_kills += 1
                self.faults.append(Fault("runner", None, victim.pid, now, now))

    def flap(self) -> None:
        """Cut one host off for 0.5 to 4.5 s (a lease is 3 s): its link down, or a blackhole."""
        free = [index for index in range(HOSTS) if not self._flapping(index)]
        if not free:
            return
        index = self.rng.choice(free)
        seconds, kind = self.rng.uniform(0.5, 4.5), self.rng.choice(["down", "hole"])
        thread = threading.Thread(target=self._cut, args=(index, kind, seconds), daemon=True)
        self.flapping[index] = thread
        thread.start()

    def _flapping(self, index: int) -> bool:
        thread = self.flapping.get(index)
        return thread is not None and thread.is_alive()

    def _cut(self, index: int, kind: str, seconds: float) -> None:
        host, start = self.cluster.hosts[index], time.time()
        try:
            until = time.monotonic() + seconds
            if kind == "down":
                host.link_down()
                self.figures.link_downs += 1
            else:
                host.blackhole()
                self.figures.blackholes += 1
            sleep_until(until)
        except Exception as exc:  # noqa: BLE001 (reported by the test)
            self.figures.errors.append(f"{kind} on {host}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                if kind == "down":
                    host.link_up()
                else:
                    host.restore()
            self.faults.append(Fault(kind, index, None, start, time.time()))

    def restart_postgres(self) -> None:
        assert self.cluster.network.postgres is not None
        start = time.time()
        self.cluster.network.postgres.restart()
        self.figures.postgres_restarts += 1
        self.faults.append(Fault("postgres", None, None, start, time.time()))

    def unexplained_failures(self, runs: list[dict[str, Any]], found: list[Attempt]) -> list[str]:
        """Failed attempts no fault accounts for: a runner that died that was not killed; a worker
        that lost a lease (taken back, or its runner stopped at the fence) with no fault on its host
        or on Postgres between its claim (less 2 s: a claim may be in flight when a fault begins) and
        the attempt's end; any other failure."""
        killed_runners = {fault.pid for fault in self.faults if fault.kind == "runner"}
        pids = {attempt.run_id: attempt.pid for attempt in found}
        problems = []
        for run in runs:
            if run["status"] != "failed":
                continue
            error = str(run["error_message"])
            if error.startswith("runner process died"):
                if pids.get(run["id"]) not in killed_runners:
                    problems.append(f"run {run['id']}: {error}, but nobody killed its runner")
                continue
            if not error.startswith(("worker lost", "lease lost")):
                problems.append(f"run {run['id']} failed: {error}")
                continue
            host = self.worker_hosts.get(int(str(run["worker"]).split(":")[1]))
            claimed = run["created_at"].replace(tzinfo=UTC).timestamp() - 2
            ended = run["ended_at"].replace(tzinfo=UTC).timestamp()
            if not any(
                fault.kind != "runner" and fault.host in (None, host) and fault.start <= ended and fault.end >= claimed
                for fault in self.faults
            ):
                problems.append(f"run {run['id']} of {run['worker']}: {error}, with no fault on its host")
        return problems

    def heal(self) -> None:
        """Every link back up and every blackhole gone."""
        for thread in self.flapping.values():
            thread.join(timeout=30)
        for host in self.cluster.hosts:
            assert host.is_link_up
            assert not host.is_blackholed


def _ledger_problems(found: list[Attempt], runs: list[dict[str, object]]) -> list[str]:
    """Attempts of the ledgers that match no run (or run twice), successes without the flow's `end`."""
    problems = []
    by_run = {run["id"]: run for run in runs}
    for run_id, times in Counter(attempt.run_id for attempt in found).items():
        if times > 1:
            problems.append(f"run {run_id} executed {times} times")
    for attempt in found:
        run = by_run.get(attempt.run_id)
        if run is None or (run["job_id"], run["attempt"]) != (attempt.job_id, attempt.attempt):
            problems.append(f"ledger attempt {attempt} has no matching run")
    ended = {attempt.run_id for attempt in found if attempt.ended is not None}
    problems += [
        f"run {run['id']} succeeded without its flow ending"
        for run in runs
        if run["status"] == "success" and run["id"] not in ended
    ]
    return problems


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 200)
def test_soak_no_attempts_overlap_under_random_faults(
    make_network: Callable[..., Network], make_dfjob: Callable[..., Dfjob]
) -> None:
    """Under a stream of jobs and random kill -9 of supervisors and runners, link cuts and
    blackholes on random hosts and a Postgres restart: afterwards every job is finished (succeeded,
    or failed with its attempts used up), every attempt has its run, no run is left open, every
    execution the flows recorded is a run of the database, every failed attempt is accounted for by
    a fault, and no data flow ever had two attempts running at once by the flows' own ledgers."""
    seed = int(os.environ.get("DFJOB_SOAK_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nsoak seed {seed} (DFJOB_SOAK_SEED replays its choices)")
    rng = random.Random(seed)
    cluster = make_cluster(make_network, make_dfjob, hosts=HOSTS)
    dfjob = cluster.dfjob
    ledgers = dfjob.directory / "ledgers"
    ledgers.mkdir()
    import_flows(
        dfjob,
        [
            {
                "name": f"soak{index}",
                "class": LEDGER_FLOW,
                "every": "2s",
                "config": ledger_config(f"soak{index}", ledgers / f"soak{index}.jsonl", seconds, tick=0.5),
            }
            for index, seconds in enumerate(FLOW_SECONDS)
        ],
    )
    # The stream of jobs: a scheduler (in the test's own namespace, through the Unix socket).
    scheduling = make_dfjob(cluster.local_url, name="scheduler", retry=dict(IMMEDIATE_RETRIES))
    scheduler = scheduling.start("scheduler", "--interval", "1", name="scheduler")
    soak = Soak(cluster, ledgers, rng)
    with PidWatcher(folder=ledgers) as watcher:
        for index in range(HOSTS):
            soak.start_worker(index)
        for daemon in soak.workers.values():
            worker_name(daemon)
        started = time.monotonic()
        restart_at = started + SOAK_SECONDS / 2
        faults = [soak.kill_supervisor, soak.kill_runner, soak.kill_runner, soak.flap, soak.flap]
        while time.monotonic() < started + SOAK_SECONDS:
            # The pause between faults is the fault injection's timing, not a wait for anything.
            sleep_until(time.monotonic() + rng.uniform(0.5, 2.5))
            if restart_at and time.monotonic() >= restart_at:
                soak.restart_postgres()
                restart_at = 0
            rng.choice(faults)()
        soak.heal()
        scheduler.signal(signal.SIGTERM)
        assert scheduler.wait(timeout=60) == 0, scheduler.stderr()

        try:
            wait_for(
                lambda: dfjob.db.scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')") == 0,
                timeout=120,
                interval=0.2,
                what="the workers to finish every job",
            )
        except AssertionError:
            active = dfjob.db.rows("SELECT * FROM jobs WHERE status IN ('queued', 'running')")
            logs = {name: daemon.stderr()[-3000:] for name, daemon in soak.workers.items()}
            raise AssertionError(f"jobs never finished: {active}\nworker logs: {logs}") from None
        for daemon in soak.workers.values():
            daemon.signal(signal.SIGTERM)
        for daemon in soak.workers.values():
            assert daemon.wait(timeout=60) == 0, daemon.stderr()
        found = [attempt for path in ledgers.glob("*.jsonl") for attempt in attempts(read_records(str(path)), watcher)]
    jobs, runs = dfjob.db.jobs(), dfjob.db.runs()
    overlapping = overlaps(found)
    statuses = Counter(job["status"] for job in jobs)
    errors = Counter((run["error_message"] or "").split(":")[0] for run in runs if run["status"] == "failed")
    print(
        f"\nsoak ({SOAK_SECONDS:.0f}s of faults): jobs={len(jobs)} ({dict(statuses)}), attempts={len(runs)},"
        f" supervisor kills={soak.figures.supervisor_kills}, runner kills={soak.figures.runner_kills},"
        f" link cuts={soak.figures.link_downs + soak.figures.blackholes}"
        f" (down={soak.figures.link_downs}, blackhole={soak.figures.blackholes}),"
        f" postgres restarts={soak.figures.postgres_restarts}, rescues={sum(job['rescues'] for job in jobs)},"
        f" failed attempts by cause={dict(errors)}, overlaps={len(overlapping)}"
    )
    for job in jobs:
        if job["status"] == "failed":
            causes = [str(run["error_message"])[:60] for run in runs if run["job_id"] == job["id"]]
            print(f"job {job['id']} (flow {job['data_flow_id']}) failed after {job['attempts']} attempts: {causes}")
    assert soak.figures.errors == []
    assert soak.figures.postgres_restarts == 1
    assert history_problems(jobs, runs) == []
    assert [str(overlap) for overlap in overlapping] == []
    assert _ledger_problems(found, runs) == []
    assert soak.unexplained_failures(runs, found) == []
    assert len(jobs) >= 50, "the soak hardly ran anything"
