"""Workers on separate hosts (network namespaces) sharing one Postgres: a host cut off from the
database, skewed clocks, a slow monitoring callback, PgBouncer in transaction pooling mode.

Each proof that two attempts never ran at once comes from the flows' own records
(`ledger_flows.AttemptLedger`, read by `tests.support.ledger`), not from what dfjob wrote."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.cluster import (
    FENCE,
    KILL_SLACK,
    LEASE,
    Cluster,
    add_ledger_flow,
    attempt_of,
    enqueue_all,
    history_problems,
    import_flows,
    lease_lost_logged,
    make_cluster,
    monotonic_at,
    netns_of,
    wait_attempt,
    wait_status,
    worker_name,
)
from tests.e2e.conftest import Daemon, Dfjob, log_lines
from tests.support.hosts import Network, PrivatePostgres
from tests.support.ledger import PidWatcher, attempts, overlaps, read_records
from tests.support.ledger_flows import still_running
from tests.support.pgbouncer import PgBouncer
from tests.support.waiting import wait_for


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["link_down", "blackhole"])
def test_a_cut_off_worker_stops_its_attempt_before_another_host_takes_the_job(
    fault: str, make_network: Callable[..., Network], make_dfjob: Callable[..., Dfjob]
) -> None:
    """Host 1 loses the database (its link goes down, or its packets vanish) while its worker runs
    an attempt longer than the lease. The attempt's process is gone, by the fence, before the worker
    on host 2 takes the job back and starts it again; host 2 finishes it. Once host 1 is back, its
    worker's late outcome for the lost attempt is refused: the job and its runs stay as host 2 left
    them, and host 1 says `job.lease_lost`."""
    cluster = make_cluster(make_network, make_dfjob)
    dfjob, (first, second) = cluster.dfjob, cluster.hosts
    ledger = dfjob.directory / "ledger.jsonl"
    add_ledger_flow(dfjob, "long", ledger, [60, 2 * LEASE])
    job_id = dfjob.trigger("long")

    with PidWatcher(ledgers=[ledger]) as watcher:
        worker_a = dfjob.start("worker", host=first, name="worker-a")
        lost = wait_attempt(ledger, job_id, 1)
        name_a = worker_name(worker_a)
        assert lost.netns == netns_of(worker_a.pid), "attempt 1 runs on host 1"
        worker_b = dfjob.start("worker", host=second, name="worker-b")
        name_b = worker_name(worker_b)
        # Worker A has seen the attempt start (and writes it in its next turn).
        wait_for(lambda: len(worker_a.events("job.started")) == 1, what="worker A to report the start")

        cut_at = time.monotonic()
        first.link_down() if fault == "link_down" else first.blackhole()
        # The lease its last renewal bought (no later renewal can land now), on the monotonic clock.
        expires_at = monotonic_at(cluster, dfjob.job(job_id)["lease_expires_at"])

        retried = wait_attempt(ledger, job_id, 2, timeout=30)
        [lost] = [found for found in attempts(read_records(str(ledger)), watcher) if found.run_id == lost.run_id]
        assert not still_running(lost.pid, lost.start_time), "attempt 1's process still runs on host 1"
        assert lost.ended is None, "attempt 1 was stopped, it did not finish"
        assert retried.netns == netns_of(worker_b.pid), "attempt 2 runs on host 2"
        assert retried.alive_before == [], "attempt 2 found attempt 1's process alive when it started"
        assert lost.busy_until < retried.started, overlaps([lost, retried])
        assert lost.busy_until <= cut_at + FENCE + KILL_SLACK, "attempt 1 outlived its fence"
        assert lost.busy_until < expires_at, "attempt 1 outlived its lease"

        finished = wait_status(dfjob, job_id, ["succeeded", "failed"], timeout=30)
        assert finished["status"] == "succeeded"
        assert (finished["attempts"], finished["rescues"]) == (2, 1)
        assert worker_b.events("job.rescued")[0]["lost_worker"] == name_a

        first.link_up() if fault == "link_down" else first.restore()
        back_at = cluster.database_now()

        # Host 1's worker is back: it writes its outcome for the lost attempt, which is refused, and
        # says so; then it carries on renewing (its worker record moves on).
        wait_for(lambda: lease_lost_logged(worker_a, job_id), timeout=60, what="worker A to log job.lease_lost")
        assert worker_a.events("db.unavailable"), "worker A never noticed it lost the database"
        assert not worker_b.events("db.unavailable")
        after = (dfjob.job(job_id), dfjob.runs_of(job_id))
        wait_for(
            lambda: dfjob.db.scalar("SELECT last_seen_at FROM workers WHERE name = ?", (name_a,)) > back_at,
            timeout=30,
            what="worker A to record itself alive again",
        )
        assert (dfjob.job(job_id), dfjob.runs_of(job_id)) == after
    job, runs = after
    assert job["status"] == "succeeded"
    assert (job["attempts"], job["rescues"], job["locked_by"], job["lease_token"]) == (2, 1, None, None)
    assert [(run["attempt"], run["status"], run["worker"]) for run in runs] == [
        (1, "failed", name_a),
        (2, "success", name_b),
    ]
    assert runs[0]["error_message"] == f"worker lost: {name_a} stopped renewing its lease"
    assert json.loads(runs[1]["result"])["attempt"] == 2
    assert attempt_of(ledger, job_id, 3) is None
    assert overlaps(attempts(read_records(str(ledger)))) == []
    for worker in (worker_a, worker_b):
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.stderr()


# -- skewed clocks -----------------------------------------------------------------------------------

SKEW = 30.0


def _skew_logged(daemon_stderr: str, offset: float) -> bool:
    """The process said once that its clock is `offset` s off the database's (difference = db - host)."""
    skews = [line for line in log_lines(daemon_stderr) if line.get("event") == "clock.skew"]
    return len(skews) == 1 and abs(skews[0]["difference_seconds"] + offset) < 3


def _kill_holding(cluster: Cluster, worker: Daemon, job_id: int, ledger: Path) -> datetime:
    """Wait until `worker` runs the job's first attempt, SIGKILL its process group; the lease it
    left (database time)."""
    dfjob = cluster.dfjob
    attempt = wait_attempt(ledger, job_id, 1)
    wait_for(lambda: any(e["job_id"] == job_id for e in worker.events("job.started")), what="the start written")
    worker.signal_group(signal.SIGKILL)
    worker.wait(timeout=10)
    wait_for(lambda: not still_running(attempt.pid, attempt.start_time), timeout=10, what="its runner to die")
    expires = dfjob.job(job_id)["lease_expires_at"]
    assert expires is not None, "taken back before its lease ran out"
    return expires


def _check_taken_back(cluster: Cluster, job_id: int, expires: datetime, rescuer: Daemon, lost: str) -> None:
    """The job was taken back by `rescuer`, after its lease ran out by the database's clock, and soon."""
    dfjob = cluster.dfjob
    job = wait_for(lambda: (job := dfjob.job(job_id))["rescues"] == 1 and job, timeout=4 * LEASE, what="a rescue")
    [run] = dfjob.runs_of(job_id)[:1]
    assert run["error_message"] == f"worker lost: {lost} stopped renewing its lease"
    assert expires <= run["ended_at"] <= expires + timedelta(seconds=LEASE), (expires, run["ended_at"])
    assert [event["job_id"] for event in rescuer.events("job.rescued")] == [job_id]
    assert job["attempts"] == 1


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_skewed_clocks_follow_the_database_for_leases_and_schedules(
    make_network: Callable[..., Network], make_dfjob: Callable[..., Dfjob], faketime: Callable[..., dict[str, str]]
) -> None:
    """Processes whose wall clock is 30 s ahead or behind go by the database server's clock, and
    each says `clock.skew` once:
    - a heartbeat 30 s ahead does not fire a schedule that is 10 s away; one 30 s behind fires a due
      schedule and sets the next run 10 s after the database's now;
    - workers 30 s ahead and behind never take back a job whose lease a worker with a correct clock
      keeps renewing (one attempt, no rescue), through a run longer than the lease;
    - each of them alone takes back the lease of a worker killed with SIGKILL, once it ran out by
      the database's clock and not 30 s early or late."""
    cluster = make_cluster(make_network, make_dfjob, hosts=3)
    dfjob, (normal_host, ahead_host, behind_host) = cluster.dfjob, cluster.hosts
    ahead, behind = faketime(SKEW), faketime(-SKEW)

    # Schedules: the heartbeat fires on the database's time.
    dfjob.add_flow("every10s", "sample_flows:Succeed", "--every", "10s", "--queue", "sched")
    assert dfjob.json("heartbeat")["enqueued"] == 1  # due at once; next in 10 s
    code, out, err = dfjob.run("heartbeat", "--json", host=ahead_host, env=ahead)
    assert code == 0, err
    assert json.loads(out) == {"due": 0, "enqueued": 0, "skipped": 0}, "fired 10 s early"
    assert _skew_logged(err, SKEW)
    dfjob.add_flow("due-now", "sample_flows:Succeed", "--every", "10s", "--queue", "sched")
    code, out, err = dfjob.run("heartbeat", "--json", host=behind_host, env=behind)
    assert code == 0, err
    assert json.loads(out) == {"due": 1, "enqueued": 1, "skipped": 0}, "a due flow not fired"
    assert _skew_logged(err, -SKEW)
    [next_run] = dfjob.db.rows("SELECT next_run_at FROM data_flows WHERE name = 'due-now'")
    assert 5 < (next_run["next_run_at"] - cluster.database_now()).total_seconds() <= 10

    # Leases: a valid one is left alone by skewed workers, an expired one is taken back by each.
    ledger = dfjob.directory / "ledger.jsonl"
    add_ledger_flow(dfjob, "steady", ledger, 2 * LEASE, "--queue", "pinned")
    for name in ("doomed-1", "doomed-2"):
        add_ledger_flow(dfjob, name, ledger, [60, 0.2], "--queue", "pinned")
    normal = dfjob.start("worker", "--queue", "pinned", host=normal_host, name="normal")
    normal_name = worker_name(normal)
    skewed = [
        dfjob.start("worker", host=ahead_host, env=ahead, name="ahead"),
        dfjob.start("worker", host=behind_host, env=behind, name="behind"),
    ]
    for worker, offset in zip(skewed, (SKEW, -SKEW), strict=True):
        wait_for(lambda w=worker, o=offset: _skew_logged(w.stderr(), o), what="clock.skew from a skewed worker")

    steady = dfjob.trigger("steady")
    job = wait_status(dfjob, steady, ["succeeded", "failed"], timeout=30)
    assert (job["status"], job["attempts"], job["rescues"]) == ("succeeded", 1, 0)
    assert [run["worker"] for run in dfjob.runs_of(steady)] == [normal_name]
    assert not any(worker.events("job.rescued") for worker in skewed)

    for index, (rescuer, idle) in enumerate([(skewed[0], skewed[1]), (skewed[1], skewed[0])], start=1):
        os.kill(idle.pid, signal.SIGSTOP)  # the other skewed worker stays out of this one
        try:
            doomed = dfjob.trigger(f"doomed-{index}")
            expires = _kill_holding(cluster, normal, doomed, ledger)
            _check_taken_back(cluster, doomed, expires, rescuer, normal_name)
        finally:
            os.kill(idle.pid, signal.SIGCONT)
        # A fresh worker with a correct clock for the next round (it retries this job too).
        normal = dfjob.start("worker", "--queue", "pinned", host=normal_host, name="normal")
        normal_name = worker_name(normal)
        wait_status(dfjob, doomed, ["succeeded"], timeout=30)
    assert overlaps(attempts(read_records(str(ledger)))) == []
    pinned = dfjob.db.rows("SELECT * FROM jobs WHERE queue = 'pinned' ORDER BY id")
    runs = dfjob.db.rows("SELECT * FROM data_flow_runs WHERE queue = 'pinned' ORDER BY id")
    assert history_problems(pinned, runs) == []


# -- a slow monitoring callback ------------------------------------------------------------------------

SLOW_CALLBACK = '''
"""A monitoring callback that takes {seconds} s over every event, and notes each call."""

import json
import time


def on_event(event, payload):
    started = time.monotonic()
    time.sleep({seconds})
    with open({calls!r}, "a", encoding="utf-8") as calls:
        calls.write(json.dumps({{"event": event, "start": started, "end": time.monotonic()}}) + "\\n")
'''


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_slow_callback_delays_no_renewal(make_dfjob: Callable[..., Dfjob], postgres_url: str) -> None:
    """A monitoring callback that sleeps three leases on every event (within its callback_timeout)
    runs beside a worker whose attempts last two leases: its renewals go on, so no job is taken
    back, no attempt is repeated, every job succeeds, and the callback was indeed busy the whole time."""
    lease = 2.0
    worker_settings = {"lease_seconds": lease, "poll_interval": 0.1, "shutdown_grace": 5}
    admin = make_dfjob(postgres_url, name="admin", worker=worker_settings)
    watched = make_dfjob(
        postgres_url,
        name="watched",
        worker=worker_settings,
        monitoring={"callbacks": ["slow_callback:on_event"], "callback_timeout": 3 * lease + 4},
    )
    calls = watched.directory / "calls.jsonl"
    (watched.directory / "flows" / "slow_callback.py").write_text(
        SLOW_CALLBACK.format(seconds=3 * lease, calls=str(calls)), encoding="utf-8"
    )
    ledger = admin.directory / "ledger.jsonl"
    job_ids = []
    for index in range(3):
        add_ledger_flow(admin, f"long{index}", ledger, 2 * lease)
        job_ids.append(admin.trigger(f"long{index}"))

    worker = watched.start("worker", "--concurrency", "3")
    for job_id in job_ids:
        job = wait_status(admin, job_id, ["succeeded", "failed"], timeout=60)
        assert (job["status"], job["attempts"], job["rescues"]) == ("succeeded", 1, 0), job
    first_call = wait_for(lambda: read_records(str(calls)), timeout=3 * lease + 5, what="the first callback call")[0]
    found = attempts(read_records(str(ledger)))
    assert [attempt.attempt for attempt in found] == [1, 1, 1]
    assert all(attempt.ended is not None and attempt.ended - attempt.started >= 2 * lease for attempt in found)
    # The callback's first call covered the attempts' starts and lasted three leases.
    assert first_call["start"] < min(attempt.started for attempt in found)
    assert first_call["end"] - first_call["start"] >= 3 * lease
    assert first_call["end"] > min(attempt.started for attempt in found) + lease
    assert not worker.events("job.lease_lost")
    assert not worker.events("monitoring.callback_timeout")
    assert [run["status"] for run in admin.db.runs()] == ["success"] * 3
    # Nor does it hold up a stop (the process then gives the callbacks up to 10 s before it exits).
    worker.signal(signal.SIGTERM)
    wait_for(lambda: worker.events("worker.stopped"), timeout=10, what="the worker to stop")


# -- PgBouncer -------------------------------------------------------------------------------------

PGBOUNCER_JOBS = 1000


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_thousand_jobs_through_pgbouncer_in_transaction_mode(
    private_postgres: PrivatePostgres, make_pgbouncer: Callable[..., PgBouncer], make_dfjob: Callable[..., Dfjob]
) -> None:
    """Behind PgBouncer in transaction pooling mode (one server connection shared by all clients) with
    `database.prepared_statements = false` and `worker.notify = false`: `db init`, importing 1,000
    flows, a heartbeat enqueuing their 1,000 jobs, two `worker --burst` draining them at once, and
    `jobs`, `runs` and `workers --json` all work; every job ran exactly once (the flows' ledger)
    and succeeded at its first attempt."""
    private_postgres.create_database("jobs")
    bouncer = make_pgbouncer("127.0.0.1", private_postgres.port, pool_size=1)
    dfjob = make_dfjob(
        bouncer.url("jobs"),
        read_url=private_postgres.local_url("jobs"),
        database={"prepared_statements": False},
        # Statements are limited to a third of the lease (10 s here): enough on a loaded machine,
        # and still applied through PgBouncer as a transaction-local setting.
        worker={"notify": False, "poll_interval": 0.05, "lease_seconds": 30},
    )
    dfjob.ok("db", "init")
    ledger = dfjob.directory / "ledger.txt"
    names = [f"flow{index:04d}" for index in range(PGBOUNCER_JOBS)]
    import_flows(
        dfjob,
        [
            {
                "name": name,
                "class": "sample_flows:Ledger",
                "every": "1h",
                "config": {"key": name, "ledger": str(ledger)},
            }
            for name in names
        ],
    )
    enqueue_all(dfjob, PGBOUNCER_JOBS)

    workers = [dfjob.start("worker", "--burst", "--concurrency", "4", name=f"burst-{index}") for index in (1, 2)]
    most_server_connections = 0

    def drained() -> bool:
        nonlocal most_server_connections
        [(connections,)] = private_postgres.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'jobs' AND backend_type = 'client backend'"
        )
        most_server_connections = max(most_server_connections, connections)
        return all(worker.process.poll() is not None for worker in workers)

    def server_errors() -> list[str]:
        """What Postgres logged about failed statements, the statement included."""
        lines = private_postgres.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [line for line in lines if "ERROR:" in line or "STATEMENT:" in line]

    wait_for(drained, timeout=150, interval=0.1, what="both burst workers to drain the queue and exit")
    for worker in workers:
        assert worker.wait() == 0, worker.stderr()
        assert not worker.events("db.unavailable"), (worker.events("db.unavailable"), server_errors())
        assert not [line for line in worker.events() if line.get("level") in ("error", "critical")]
    assert most_server_connections == 1  # both workers' transactions took turns on one connection
    assert all(len(worker.events("job.finished")) > 0 for worker in workers), "one worker did all the work"

    keys = Counter(line.split()[0] for line in ledger.read_text(encoding="utf-8").splitlines())
    assert sorted(keys) == names
    assert set(keys.values()) == {1}
    counts = dfjob.db.rows("SELECT status, attempts, rescues, count(*) AS n FROM jobs GROUP BY 1, 2, 3")
    assert counts == [{"status": "succeeded", "attempts": 1, "rescues": 0, "n": PGBOUNCER_JOBS}]
    assert dfjob.db.scalar("SELECT count(*) FROM data_flow_runs WHERE status = 'success'") == PGBOUNCER_JOBS

    listed = dfjob.json("jobs", "--limit", str(PGBOUNCER_JOBS + 10))
    assert len(listed) == PGBOUNCER_JOBS
    assert {job["status"] for job in listed} == {"succeeded"}
    assert len(dfjob.json("runs", "--limit", "100")) == 100
    assert len(dfjob.json("runs", "--flow", names[0])) == 1
    records = dfjob.json("workers")
    assert sorted(record["state"] for record in records) == ["stopped", "stopped"]
    assert "prepared statement" not in bouncer.log()
