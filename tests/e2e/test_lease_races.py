"""Races around leases, with real processes on separate hosts sharing one Postgres: a worker that
cannot renew while its attempt still runs, several rescuers at once, a late outcome against a
rescue, and the heartbeat against a trigger on the same flow.

Whether two attempts ever ran at once is decided from the flows' own records
(`ledger_flows.AttemptLedger`, read by `tests.support.ledger`)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dfjob import clock, db, events
from dfjob.heartbeat import heartbeat
from dfjob.models import DataFlow
from dfjob.trigger import trigger_run
from tests.conftest import make_settings
from tests.e2e.cluster import (
    FENCE,
    KILL_SLACK,
    LEASE,
    LEDGER_FLOW,
    Cluster,
    add_ledger_flow,
    enqueue_all,
    history_problems,
    import_flows,
    lease_lost_logged,
    ledger_config,
    make_cluster,
    monotonic_at,
    sleep_until,
    wait_attempt,
    wait_status,
    worker_name,
)
from tests.e2e.conftest import DFJOB, Daemon, Dfjob
from tests.support.hosts import Network
from tests.support.ledger import PidWatcher, attempts, overlaps, read_records
from tests.support.ledger_flows import still_running
from tests.support.store_ops import claim
from tests.support.waiting import wait_for


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def _last_seen(dfjob: Dfjob, name: str) -> Any:
    return dfjob.db.scalar("SELECT last_seen_at FROM workers WHERE name = ?", (name,))


def _stop_right_after_a_renewal(dfjob: Dfjob, worker: Daemon, name: str) -> float:
    """SIGSTOP a worker's supervisor just after it renewed its leases (its worker record moved):
    its runners carry on, each until its fence, 5/6 of a lease after that renewal. Returns the
    monotonic time of the stop."""
    before = _last_seen(dfjob, name)
    wait_for(lambda: _last_seen(dfjob, name) != before, timeout=10, interval=0.005, what=f"a renewal by {name}")
    stopped_at = time.monotonic()
    os.kill(worker.pid, signal.SIGSTOP)
    wait_for(lambda: _stopped(worker.pid), timeout=5, what="the supervisor to stop")
    return stopped_at


def _lease_expiry(cluster: Cluster, job_ids: list[int]) -> Any:
    """The one lease expiry the jobs share (renewed together by one worker)."""
    rows = cluster.execute("SELECT DISTINCT lease_expires_at FROM dfjob.jobs WHERE id = ANY(%s)", (job_ids,))
    assert len(rows) == 1, rows
    return rows[0][0]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_stopped_supervisor_cannot_renew_and_its_runner_stops_at_the_fence(
    make_network: Callable[..., Network], make_dfjob: Callable[..., Dfjob]
) -> None:
    """A worker's supervisor is frozen (SIGSTOP) while its runner runs an attempt longer than the
    lease. The runner's own watchdog ends the attempt before the lease runs out; `dfjob heartbeat`
    on the other host takes the job back only after it ran out; a second worker runs the job again,
    never alongside the first attempt. Thawed, the first worker finds its lease gone
    (`job.lease_lost`) and writes nothing over what the others did."""
    cluster = make_cluster(make_network, make_dfjob)
    dfjob, (first, second) = cluster.dfjob, cluster.hosts
    ledger = dfjob.directory / "ledger.jsonl"
    add_ledger_flow(dfjob, "long", ledger, [60, 0.5])
    job_id = dfjob.trigger("long")

    with PidWatcher(ledgers=[ledger]) as watcher:
        worker_a = dfjob.start("worker", host=first, name="worker-a")
        name_a = worker_name(worker_a)
        wait_attempt(ledger, job_id, 1)
        wait_for(lambda: worker_a.events("job.started"), what="worker A to report the start")
        stopped_at = _stop_right_after_a_renewal(dfjob, worker_a, name_a)
        expires = dfjob.job(job_id)["lease_expires_at"]
        expires_mono = monotonic_at(cluster, expires)

        # Heartbeats on host 2, one after another, until one takes the job back.
        heartbeats = 0
        while dfjob.job(job_id)["rescues"] == 0:
            heartbeats += 1
            assert heartbeats < 60, "no heartbeat took the job back"
            code, _, err = dfjob.run("heartbeat", "--json", host=second)
            assert code == 0, err
        [lost] = [found for found in attempts(read_records(str(ledger)), watcher) if found.attempt == 1]
        assert not still_running(lost.pid, lost.start_time)
        assert lost.ended is None
        assert lost.busy_until <= stopped_at + FENCE + KILL_SLACK, "the first attempt outlived its fence"
        assert lost.busy_until < expires_mono, "the first attempt outlived its lease"
        [lost_run] = dfjob.runs_of(job_id)
        assert lost_run["ended_at"] >= expires, "the job was taken back before its lease ran out"
        assert lost_run["error_message"] == f"worker lost: {name_a} stopped renewing its lease"

        worker_b = dfjob.start("worker", "--burst", host=second, name="worker-b")
        assert worker_b.wait(timeout=60) == 0, worker_b.stderr()
        retried = wait_attempt(ledger, job_id, 2)
        assert retried.alive_before == []
        finished = wait_status(dfjob, job_id, ["succeeded"])
        before_thaw = (finished, dfjob.runs_of(job_id))

        thawed_at = cluster.database_now()
        os.kill(worker_a.pid, signal.SIGCONT)
        wait_for(lambda: lease_lost_logged(worker_a, job_id), timeout=30, what="worker A to log job.lease_lost")
        wait_for(lambda: _last_seen(dfjob, name_a) > thawed_at, timeout=30, what="worker A to carry on")
        assert (dfjob.job(job_id), dfjob.runs_of(job_id)) == before_thaw
    job, runs = before_thaw
    assert (job["status"], job["attempts"], job["rescues"]) == ("succeeded", 2, 1)
    assert [(run["attempt"], run["status"]) for run in runs] == [(1, "failed"), (2, "success")]
    assert overlaps(attempts(read_records(str(ledger)), watcher)) == []
    assert history_problems(dfjob.db.jobs(), dfjob.db.runs()) == []
    worker_a.signal(signal.SIGTERM)
    assert worker_a.wait(timeout=30) == 0, worker_a.stderr()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_heartbeats_and_a_worker_rescue_each_expired_job_exactly_once(
    make_network: Callable[..., Network], make_dfjob: Callable[..., Dfjob]
) -> None:
    """A worker running 10 jobs dies with its process group (SIGKILL), and 150 more jobs were claimed
    by a worker that vanished before it started them. Once the leases ran out, two `dfjob heartbeat`
    and a `dfjob worker --burst`, on two hosts, start at the same moment (one rescue takes back at
    most 100 jobs, so they share the work): each job is taken back exactly once (one `job.rescued`
    among all three, `rescues` = 1, one `worker lost` run for its lost attempt), then runs again and
    succeeds, and no flow's attempts overlap."""
    running, parked = 10, 150
    cluster = make_cluster(make_network, make_dfjob)
    dfjob, (first, second) = cluster.dfjob, cluster.hosts
    ledger = dfjob.directory / "ledger.jsonl"
    names = [f"lost{index}" for index in range(running)]
    flows = [
        {"name": name, "class": LEDGER_FLOW, "every": "1h", "config": ledger_config(name, ledger, [60, 0.2], 0)}
        for name in names
    ]
    flows += [
        {"name": f"parked{index}", "class": "sample_flows:Succeed", "queue": "parked", "every": "1h"}
        for index in range(parked)
    ]
    import_flows(dfjob, flows)
    enqueue_all(dfjob, running + parked)
    vanished = "gone-host:1:000000"
    # Claimed through the store, as a worker's turn does, by a worker that then vanished.
    db.connect(cluster.local_url, str(dfjob.directory))
    try:
        claimed = claim(vanished, ["parked"], parked, clock.now(), LEASE)
    finally:
        db.close_database()
    assert len(claimed) == parked
    doomed = dfjob.start("worker", "--concurrency", str(running), host=first, name="doomed")
    doomed_name = worker_name(doomed)
    wait_for(
        lambda: len(attempts(read_records(str(ledger)))) == running,
        timeout=60,
        what="every running job's first attempt to start",
    )
    doomed.signal_group(signal.SIGKILL)
    doomed.wait(timeout=10)
    wait_for(
        lambda: not any(still_running(found.pid, found.start_time) for found in attempts(read_records(str(ledger)))),
        timeout=10,
        what="the runners to die with their supervisor",
    )
    wait_for(
        lambda: (
            cluster.execute(
                "SELECT count(*) FROM dfjob.jobs WHERE status = 'running'"
                " AND lease_expires_at < clock_timestamp() AT TIME ZONE 'UTC'"
            )
            == [(running + parked,)]
        ),
        timeout=4 * LEASE,
        interval=0.05,
        what="every lease to run out",
    )

    rescuers = [
        dfjob.start("heartbeat", host=first, name="heartbeat-1"),
        dfjob.start("heartbeat", host=second, name="heartbeat-2"),
        dfjob.start("worker", "--burst", "--queue", "default", "--queue", "parked", host=second, name="burst"),
    ]
    for rescuer in rescuers:
        assert rescuer.wait(timeout=60) == 0, rescuer.stderr()

    rescued = Counter(event["job_id"] for rescuer in rescuers for event in rescuer.events("job.rescued"))
    print("\nrescued by:", {rescuer.stderr_path.stem: len(rescuer.events("job.rescued")) for rescuer in rescuers})
    jobs = dfjob.db.jobs()
    assert sorted(rescued) == sorted(job["id"] for job in jobs)
    assert set(rescued.values()) == {1}, [job_id for job_id, times in rescued.items() if times > 1]
    assert {job["rescues"] for job in jobs} == {1}
    lost_runs = dfjob.db.rows("SELECT job_id, status, error_message FROM data_flow_runs WHERE attempt = 1")
    assert sorted(run["job_id"] for run in lost_runs) == sorted(job["id"] for job in jobs)
    for job in jobs:
        lost_worker = vanished if job["queue"] == "parked" else doomed_name
        [run] = [run for run in lost_runs if run["job_id"] == job["id"]]
        assert (run["status"], run["error_message"]) == (
            "failed",
            f"worker lost: {lost_worker} stopped renewing its lease",
        )

    dfjob.ok("worker", "--burst", "--queue", "default", "--queue", "parked", "--concurrency", "4")
    jobs = dfjob.db.jobs()
    assert {(job["status"], job["attempts"], job["rescues"]) for job in jobs} == {("succeeded", 2, 1)}
    assert history_problems(jobs, dfjob.db.runs()) == []
    assert overlaps(attempts(read_records(str(ledger)))) == []


def _resume_at(worker: Daemon, moment: float) -> Callable[[], None]:
    def resume() -> None:
        sleep_until(moment)
        os.kill(worker.pid, signal.SIGCONT)

    return resume


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_late_outcome_racing_a_rescue_has_one_effect(
    make_network: Callable[..., Network], make_dfjob: Callable[..., Dfjob]
) -> None:
    """Three workers on host 1 each run two attempts: one whose flow finishes before its fence, one
    still running at it (it stops itself). Their supervisors are frozen right after a renewal, so
    the outcomes reach the database only when they thaw, while a worker on host 2 takes back
    expired leases: one thaws just before its leases run out (its outcomes count), one at a random
    moment after (a race), one after the rescue (its outcomes are stale). Whichever wins, each
    attempt has exactly one outcome, no run stays open, a stale outcome changes nothing and its
    worker logs `job.lease_lost`, and no two attempts of a flow ever ran at once."""
    cluster = make_cluster(make_network, make_dfjob)
    dfjob, (first, second) = cluster.dfjob, cluster.hosts
    ledger = dfjob.directory / "ledger.jsonl"
    rng = random.Random()
    flows = []
    for index in (1, 2, 3):
        release = dfjob.directory / f"release-{index}"
        for kind in ("finishes", "fenced"):
            name = f"{kind}{index}"
            config = ledger_config(name, ledger, [60, 0.3], 0.25, release if kind == "finishes" else None)
            flows.append({"name": name, "class": LEDGER_FLOW, "queue": f"q{index}", "every": "1h", "config": config})
    import_flows(dfjob, flows)
    enqueue_all(dfjob, len(flows))
    job_of = {
        row["name"]: row["id"]
        for row in dfjob.db.rows(
            "SELECT data_flows.name, jobs.id FROM jobs JOIN data_flows ON data_flows.id = data_flow_id"
        )
    }

    def job_id(name: str) -> int:
        return job_of[name]

    with PidWatcher(ledgers=[ledger]) as watcher:
        workers = [
            dfjob.start("worker", "--queue", f"q{index}", "--concurrency", "2", host=first, name=f"worker-{index}")
            for index in (1, 2, 3)
        ]
        names = [worker_name(worker) for worker in workers]
        wait_for(lambda: len(attempts(read_records(str(ledger)))) == 6, timeout=60, what="six first attempts")
        for worker in workers:
            wait_for(lambda worker=worker: len(worker.events("job.started")) == 2, what="the starts to be written")
        rescuer = dfjob.start("worker", "--queue", "q1", "--queue", "q2", "--queue", "q3", host=second, name="rescuer")
        worker_name(rescuer)

        expiries = []
        for index, (worker, name) in enumerate(zip(workers, names, strict=True), start=1):
            _stop_right_after_a_renewal(dfjob, worker, name)
            # The flow that finishes does so at once, while its supervisor is frozen: well before its
            # fence. The stop may come after the renewal was written but before its fence reached
            # the runners, so the fence that counts may be the one before (about 1.5 s away).
            (dfjob.directory / f"release-{index}").touch()
            expires = _lease_expiry(cluster, [job_id(f"finishes{index}"), job_id(f"fenced{index}")])
            expiries.append(monotonic_at(cluster, expires))
        # Worker 1 thaws between its fence and its expiry: its renewal comes before any rescue.
        actions = [(expiries[0] - 0.25, _resume_at(workers[0], expiries[0] - 0.25))]
        # Worker 2 thaws at a random moment within a second after its leases ran out.
        race = rng.uniform(0, 1.0)
        actions.append((expiries[1] + race, _resume_at(workers[1], expiries[1] + race)))
        for moment, action in sorted(actions, key=lambda item: item[0]):
            sleep_until(moment)
            action()
        # Worker 3 thaws only once the rescuer took both its jobs back.
        wait_for(
            lambda: all(dfjob.job(job_id(f"{kind}3"))["rescues"] == 1 for kind in ("finishes", "fenced")),
            timeout=10,
            what="the rescue of worker 3's jobs",
        )
        os.kill(workers[2].pid, signal.SIGCONT)

        job_ids = [job_id(flow["name"]) for flow in flows]
        for each in job_ids:
            wait_status(dfjob, each, ["succeeded", "failed"], timeout=30)
        won: dict[str, str] = {}
        for flow in flows:
            index = int(flow["name"][-1])
            worker, name, each = workers[index - 1], names[index - 1], job_id(flow["name"])
            job, runs = dfjob.job(each), dfjob.runs_of(each)
            first_run = runs[0]
            if job["rescues"] == 0:
                won[flow["name"]] = "worker"
                assert first_run["worker"] == name
                if flow["name"].startswith("finishes"):
                    assert (first_run["status"], job["attempts"]) == ("success", 1)
                else:
                    assert first_run["status"] == "failed"
                    assert first_run["error_message"] == "lease lost: its lease was not renewed in time"
            else:
                won[flow["name"]] = "rescuer"
                assert job["rescues"] == 1
                assert first_run["error_message"] == f"worker lost: {name} stopped renewing its lease"
                assert first_run["result"] is None
                wait_for(lambda w=worker, j=each: lease_lost_logged(w, j), timeout=30, what="job.lease_lost")
            assert job["status"] == "succeeded"
        print(f"\nrace: worker 2 thawed {race:.2f}s after expiry; who won each job: {won}")
        assert (won["finishes1"], won["fenced1"]) == ("worker", "worker")
        assert (won["finishes3"], won["fenced3"]) == ("rescuer", "rescuer")

        history = (dfjob.db.jobs(), dfjob.db.runs())
        for name in names:
            thawed = cluster.database_now()
            wait_for(lambda n=name, t=thawed: _last_seen(dfjob, n) > t, timeout=30, what=f"{name} to carry on")
        assert (dfjob.db.jobs(), dfjob.db.runs()) == history  # nothing late changed anything
        found = attempts(read_records(str(ledger)), watcher)
    assert history_problems(*history) == []
    assert overlaps(found) == []
    assert Counter((attempt.job_id, attempt.attempt) for attempt in found).most_common(1)[0][1] == 1
    for worker in [*workers, rescuer]:
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.stderr()


# -- the heartbeat and a trigger on the same flow ----------------------------------------------------

DUE_FLOWS = 3


def _make_due_again(cluster_execute: Callable[[str], object]) -> None:
    """Every flow due, none with an active job: the next heartbeat and trigger both want to enqueue."""
    cluster_execute(
        "UPDATE dfjob.jobs SET status = 'cancelled', finished_at = now() AT TIME ZONE 'UTC'"
        " WHERE status IN ('queued', 'running')"
    )
    cluster_execute("UPDATE dfjob.data_flows SET next_run_at = now() AT TIME ZONE 'UTC' - interval '1 second'")


# A scheduled job never blocks a trigger, nor a triggered one the heartbeat (CONTRACT §5): each due
# flow ends a round with its one scheduled job and its one triggered job, never a second of either.
_ONE_OF_EACH = {(flow_id, source): 1 for flow_id in range(1, DUE_FLOWS + 1) for source in ("schedule", "trigger")}


def _queued_per_flow(dfjob: Dfjob) -> dict[tuple[int, str], int]:
    rows = dfjob.db.rows(
        "SELECT data_flow_id, triggered_by, count(*) AS n FROM jobs WHERE status = 'queued' GROUP BY 1, 2"
    )
    return {(row["data_flow_id"], row["triggered_by"]): row["n"] for row in rows}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_heartbeats_and_triggers_on_the_same_due_flows_never_deadlock(
    make_dfjob: Callable[..., Dfjob], postgres_url: str, tmp_path: Path
) -> None:
    """Rounds of two `dfjob heartbeat` and one `dfjob trigger` per due flow, started together: every
    command exits 0, none meets `deadlock detected`, and each flow ends the round with exactly one
    queued scheduled job and one queued triggered job. Then the same many more times with threads in one process."""
    import psycopg

    dfjob = make_dfjob(postgres_url)
    for index in range(DUE_FLOWS):
        dfjob.add_flow(f"due{index}", "sample_flows:Succeed", "--every", "1h")

    def execute(sql: str) -> None:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql)

    rounds = 6
    for _ in range(rounds):
        _make_due_again(execute)
        commands = [["heartbeat", "--json"]] * 2 + [["trigger", f"due{index}", "--json"] for index in range(DUE_FLOWS)]
        processes = [
            subprocess.Popen(
                [str(DFJOB), "--config", str(dfjob.config), *command],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=dfjob.directory,
            )
            for command in commands
        ]
        for process in processes:
            _, err = process.communicate(timeout=60)
            assert "deadlock" not in err.lower(), err
            assert process.returncode == 0, err
        assert _queued_per_flow(dfjob) == _ONE_OF_EACH

    # The same race many more times, in-process: threads released together by a barrier.
    settings = make_settings(postgres_url, tmp_path)
    events.configure_logging("json", "warning")  # only trouble is worth a line
    db.connect(postgres_url, str(tmp_path))
    try:
        flows = list(DataFlow.select().order_by(DataFlow.id))
        for _ in range(60):
            _make_due_again(execute)
            errors = _race_in_threads(
                [lambda: heartbeat(settings)] * 2 + [lambda f=flow: trigger_run(settings, f) for flow in flows]
            )
            assert not errors, errors
            assert _queued_per_flow(dfjob) == _ONE_OF_EACH
    finally:
        db.close_database()


def _race_in_threads(calls: list[Callable[[], object]]) -> list[str]:
    """Run the calls in threads released at the same moment; the errors they raised."""
    barrier = threading.Barrier(len(calls))
    errors: list[str] = []

    def run(call: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout=30)
            call()
        except Exception as exc:  # noqa: BLE001 (handed to the test)
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            db.close_database()  # this thread's connection

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


# -- a claim after slow round trips ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_claim_after_slow_round_trips_still_fences_before_its_lease_runs_out(
    make_network: Callable[..., Network], make_dfjob: Callable[..., Dfjob]
) -> None:
    """A worker's maintenance pass is slow before it claims (here its worker-record update waits on
    a row lock for most of a renewal interval, as it would behind a stalled server or a slow link),
    then it claims a job and is cut off (SIGSTOP) before its next renewal. Its runner must still
    stop the attempt before the lease runs out, so that another worker taking the job back never
    runs it alongside: the second attempt must find the first one's process gone."""
    import psycopg

    lease = 9.0
    renew_every = lease / 3
    cluster = make_cluster(make_network, make_dfjob, worker={"lease_seconds": lease, "poll_interval": 0.1})
    dfjob, (first, second) = cluster.dfjob, cluster.hosts
    ledger = dfjob.directory / "ledger.jsonl"
    add_ledger_flow(dfjob, "slow", ledger, [60, 0.5])
    worker_a = dfjob.start("worker", host=first, name="worker-a")
    name_a = worker_name(worker_a)
    wait_for(lambda: dfjob.db.rows("SELECT 1 FROM workers WHERE name = ?", (name_a,)), what="worker A's record")

    holder = psycopg.connect(cluster.local_url, connect_timeout=5)
    try:
        holder.execute("SELECT 1 FROM dfjob.workers WHERE name = %s FOR UPDATE", (name_a,))
        blocked = wait_for(
            lambda: (
                cluster.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'UPDATE %%workers%%'"
                )
                == [(1,)]
                and time.monotonic()
            ),
            timeout=2 * renew_every,
            interval=0.005,
            what="worker A's maintenance pass to wait on its worker record",
        )
        # A job due since long ago (so the blocked pass's claim sees it), enqueued while A waits.
        job_id = dfjob.trigger("slow", "--run-at", "2000-01-01T00:00:00Z")
        sleep_until(blocked + renew_every - 0.4)
    finally:
        holder.rollback()
        holder.close()
    lost = wait_attempt(ledger, job_id, 1, timeout=10)
    os.kill(worker_a.pid, signal.SIGSTOP)  # cut off before its next renewal
    wait_for(lambda: _stopped(worker_a.pid), timeout=5, what="worker A to stop")
    claimed = dfjob.job(job_id)
    assert claimed["locked_by"] == name_a
    left = (claimed["lease_expires_at"] - cluster.database_now()).total_seconds()
    print(f"\nclaimed with {left:.2f}s of its {lease:.0f}s lease left; its runner stops {lease * 5 / 6:.1f}s in")

    rescuing = make_dfjob(
        dfjob.url,
        name="rescuer",
        read_url=cluster.local_url,
        host=second,
        worker={"lease_seconds": 1.5, "poll_interval": 0.05},
        retry={"backoff_initial": 0, "backoff_max": 0, "max_attempts": 5},
    )
    rescuing.start("worker", host=second, name="worker-b")
    with PidWatcher(ledgers=[ledger]) as watcher:
        retried = wait_attempt(ledger, job_id, 2, timeout=lease + 10)
        [lost] = [found for found in attempts(read_records(str(ledger)), watcher) if found.run_id == lost.run_id]
        os.kill(worker_a.pid, signal.SIGCONT)
        assert retried.alive_before == [], (
            f"attempt 2 started while attempt 1 (pid {lost.pid}) still ran: the lease ran out before the fence"
        )
        assert lost.busy_until < retried.started
