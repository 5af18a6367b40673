"""The test infrastructure for separate hosts works: a private Postgres that restarts and hangs,
hosts (network namespaces) that reach it, lose their link or fall into a blackhole, a skewed wall
clock, a real PgBouncer, and the `dfjob` command run on a host."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import DFJOB, Dfjob, as_time
from tests.support.hosts import Network, PrivatePostgres, alive
from tests.support.pgbouncer import PgBouncer
from tests.support.waiting import wait_for

# How long a request must stay unanswered to count as hanging (it would answer in milliseconds).
HANG_SECONDS = 1.5


class Background:
    """A call run in a thread, so the test can see that it blocks and then that it finishes."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._call = call
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            self.error = exc

    def finished_within(self, seconds: float) -> bool:
        self._thread.join(timeout=seconds)
        return not self._thread.is_alive()


# -- a private Postgres ------------------------------------------------------------------------------


def test_private_postgres_restarts_and_keeps_its_data(private_postgres: PrivatePostgres) -> None:
    private_postgres.create_database("kept")
    private_postgres.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)", database="kept")
    with psycopg.connect(private_postgres.url(database="kept"), autocommit=True, connect_timeout=5) as before:
        assert before.execute("SELECT inet_server_port()").fetchone() == (private_postgres.port,)
        old_pid = private_postgres.postmaster_pid()

        private_postgres.restart()

        with pytest.raises(psycopg.OperationalError):
            before.execute("SELECT 1")
    assert private_postgres.postmaster_pid() not in (None, old_pid)
    assert private_postgres.execute("SELECT x FROM t", database="kept") == [(42,)]

    private_postgres.stop("immediate")
    assert not private_postgres.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(private_postgres.local_url(), connect_timeout=2)
    private_postgres.start()  # crash recovery
    assert private_postgres.execute("SELECT x FROM t", database="kept") == [(42,)]


def test_paused_postgres_hangs_until_resumed(private_postgres: PrivatePostgres) -> None:
    conn = psycopg.connect(private_postgres.local_url(), autocommit=True, connect_timeout=5)
    try:
        private_postgres.pause()
        assert private_postgres.paused
        started = time.monotonic()
        running = Background(lambda: conn.execute("SELECT 7").fetchone())
        connecting = Background(lambda: psycopg.connect(private_postgres.local_url(), connect_timeout=2))

        assert not running.finished_within(HANG_SECONDS), "a query answered by a paused server"
        assert connecting.finished_within(10)
        assert isinstance(connecting.error, psycopg.OperationalError)
        assert "timeout" in str(connecting.error)  # it waited for its timeout: nothing refused it
        assert time.monotonic() - started >= 1.5

        private_postgres.resume()

        assert running.finished_within(10)
        assert (running.result, running.error) == ((7,), None)
    finally:
        private_postgres.resume()
        conn.close()


# -- hosts -----------------------------------------------------------------------------------------


def test_each_host_reaches_the_private_postgres_from_its_own_address(network: Network) -> None:
    assert len(network.hosts) == 2
    for host in network.hosts:
        addresses = host.check_output(["ip", "-4", "-o", "addr", "show"])
        assert host.address in addresses
        assert all(other.address not in addresses for other in network.hosts if other is not host)
        probe = host.sql_probe()
        assert probe.connect(network.url())["ok"]
        assert probe.query("SELECT host(inet_client_addr())")["rows"] == [[host.address]]
    # The test process reaches the same server through its Unix socket.
    assert network.postgres is not None
    assert network.postgres.execute("SELECT count(*) FROM pg_stat_activity WHERE client_addr IS NOT NULL") == [(2,)]


def test_link_down_fails_new_connections_at_once_and_link_up_restores(network: Network) -> None:
    cut, other = network.hosts
    probe, bystander = cut.sql_probe(), other.sql_probe()
    assert probe.connect(network.url())["ok"]

    cut.link_down()

    failed = probe.connect(network.url(), connect_timeout=5)
    assert not failed["ok"]
    assert "Network is unreachable" in failed["error"]
    assert failed["elapsed"] < 1
    assert bystander.connect(network.url())["ok"]  # the other host does not notice

    cut.link_up()

    assert probe.connect(network.url())["ok"]
    assert probe.query("SELECT 1")["rows"] == [[1]]


def test_blackhole_hangs_a_running_query_until_restore(network: Network) -> None:
    cut, other = network.hosts
    probe, newcomer, bystander = cut.sql_probe(), cut.sql_probe(), other.sql_probe()
    assert probe.connect(network.url())["ok"]
    assert bystander.connect(network.url())["ok"]

    cut.blackhole()

    probe.send("query", sql="SELECT 1")
    newcomer.send("connect", url=network.url(), connect_timeout=2)
    assert probe.reply(HANG_SECONDS) is None, "the query neither answers nor fails"
    failed = newcomer.reply(10)
    assert failed is not None
    assert not failed["ok"]
    assert "timeout" in failed["error"]  # a new connection hangs too, until its connect_timeout
    assert failed["elapsed"] >= 1.5
    assert bystander.query("SELECT 2")["rows"] == [[2]]

    cut.restore()

    answer = probe.reply(20)  # TCP retransmits; the query was never lost
    assert answer is not None
    assert answer["ok"], answer
    assert answer["rows"] == [[1]]
    assert newcomer.connect(network.url())["ok"]


# -- a skewed clock ----------------------------------------------------------------------------------

CLOCK_MODULE = """
import datetime, json, subprocess, sys, time

started = time.monotonic()
time.sleep(0.2)
slept = time.monotonic() - started
child = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], capture_output=True, text=True)
print(json.dumps({
    "time": time.time(),
    "datetime": datetime.datetime.now(datetime.timezone.utc).timestamp(),
    "monotonic": time.monotonic(),
    "slept": slept,
    "child_time": float(child.stdout),
}))
"""


@pytest.mark.parametrize("offset", [30, -45.5])
def test_faketime_shifts_the_wall_clock_but_not_the_monotonic_one(
    faketime: Callable[..., dict[str, str]], tmp_path: Path, offset: float
) -> None:
    (tmp_path / "clockcheck.py").write_text(CLOCK_MODULE, encoding="utf-8")
    wall_before, monotonic_before = time.time(), time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "clockcheck"],
        cwd=tmp_path,
        env=faketime(offset),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    wall_after, monotonic_after = time.time(), time.monotonic()
    seen = json.loads(out)

    for key in ("time", "datetime", "child_time"):  # the grandchild (subprocess) is shifted too
        assert wall_before + offset <= seen[key] <= wall_after + offset, (key, seen)
    assert monotonic_before <= seen["monotonic"] <= monotonic_after
    assert 0.19 <= seen["slept"] < 2


# -- PgBouncer -------------------------------------------------------------------------------------


def test_pgbouncer_pools_transactions(
    private_postgres: PrivatePostgres, make_pgbouncer: Callable[..., PgBouncer]
) -> None:
    bouncer = make_pgbouncer("127.0.0.1", private_postgres.port, pool_size=1)
    assert bouncer.version.startswith("PgBouncer 1.")
    private_postgres.execute("CREATE TABLE seen (n int)")
    first = psycopg.connect(bouncer.url(), autocommit=True, prepare_threshold=None, connect_timeout=5)
    second = psycopg.connect(bouncer.url(), autocommit=True, prepare_threshold=None, connect_timeout=5)
    try:
        for n in range(10):  # the same query again and again: psycopg would prepare it by default
            first.execute("INSERT INTO seen VALUES (%s)", (n,))
        with second.transaction():
            second.execute("INSERT INTO seen VALUES (%s)", (10,))
        # One server connection serves both clients, one transaction at a time: transaction pooling.
        [(first_backend,)] = first.execute("SELECT pg_backend_pid()").fetchall()
        [(second_backend,)] = second.execute("SELECT pg_backend_pid()").fetchall()
        assert first_backend == second_backend
        assert second.execute("SELECT count(*), sum(n) FROM seen").fetchone() == (11, 55)
    finally:
        first.close()
        second.close()


def test_pgbouncer_in_the_network_serves_hosts(network: Network, make_pgbouncer: Callable[..., PgBouncer]) -> None:
    bouncer = make_pgbouncer(network.db_address, 5432, namespace=network.db, listen_addr=network.db_address)
    probe = network.hosts[0].sql_probe()
    assert probe.connect(bouncer.url())["ok"]
    assert probe.query("SELECT host(inet_server_addr()), current_setting('port')")["rows"] == [
        [network.db_address, "5432"]
    ]
    with psycopg.connect(bouncer.local_url(), autocommit=True, prepare_threshold=None, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# -- dfjob on a host ---------------------------------------------------------------------------------


def test_dfjob_runs_on_a_host_against_the_private_postgres(
    network: Network, make_dfjob: Callable[..., Dfjob], faketime: Callable[..., dict[str, str]]
) -> None:
    assert network.postgres is not None
    network.postgres.create_database("jobs")
    first, second = network.hosts

    out = first.check_output([DFJOB, "--database-url", network.url("jobs"), "db", "init", "--json"])

    assert json.loads(out)
    tables = network.postgres.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'dfjob'", database="jobs")
    assert ("jobs",) in tables

    # The same through a Dfjob handle: commands on the first host, a worker with its clock 30 s
    # ahead on the second, the test reading the database through the Unix socket.
    dfjob = make_dfjob(network.url("jobs"), read_url=network.postgres.local_url("jobs"), host=first)
    dfjob.add_flow("hello", "sample_flows:Succeed")
    job_id = dfjob.trigger("hello")
    worker = dfjob.start("worker", host=second, env=faketime(30))
    wait_for(lambda: dfjob.job(job_id)["status"] == "succeeded", timeout=30, what="the job to succeed")
    [run] = dfjob.runs_of(job_id)
    started_at = as_time(run["started_at"])
    assert started_at is not None
    # The worker's clock runs 30 s ahead, but what it stamps is the database's time.
    assert abs((started_at - datetime.now(UTC)).total_seconds()) < 5
    [skew] = worker.events("clock.skew")
    assert 25 < -skew["difference_seconds"] < 35
    worker.signal_group(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.stderr()
    assert not alive(worker.pid)
