"""The daemons' start and stop as systemd and cron see them: a stop at any moment of a start
exits 0, a database that is not there yet is waited for, and `dfjob workers` shows who ran."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import DFJOB, Dfjob, _child_env, write_config
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def _catches_sigterm(pid: int) -> bool:
    """The process has a handler for SIGTERM (the `SigCgt` mask of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.parametrize("command", [["worker"], ["scheduler", "--interval", "5"]])
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.25])
def test_a_stop_signal_at_any_moment_of_a_daemons_start_exits_0(dfjob: Dfjob, command: list[str], delay: float) -> None:
    dfjob.ok("db", "init")
    daemon = subprocess.Popen(
        [str(DFJOB), "--config", str(dfjob.config), *command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_child_env(),
    )
    # From the moment the entry point runs (it catches SIGTERM first thing) to the daemon's loop.
    wait_for(lambda: _catches_sigterm(daemon.pid), timeout=10, interval=0.001, what="the entry point to run")
    time.sleep(delay)  # where in the start the signal lands
    daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()


@pytest.mark.timeout(60)
def test_a_daemon_started_while_its_database_is_down_waits_for_it(
    make_dfjob: Callable[..., Dfjob], tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Nothing listens on port 1: the database is down for as long as this test runs.
    dfjob = make_dfjob("postgresql://dfjob:secret%2Fpw@127.0.0.1:1/dfjob")
    worker = dfjob.start("worker")
    wait_for(lambda: len(worker.events("db.unavailable")) >= 2, what="the worker to retry its database")
    assert worker.process.poll() is None, "the worker waits instead of exiting"
    first, second = worker.events("db.unavailable")[:2]
    assert second["retry_in"] >= first["retry_in"]
    assert "secret" not in worker.stderr()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.stderr()


def test_workers_lists_the_workers_that_ran(dfjob: Dfjob) -> None:
    dfjob.trigger(str(dfjob.add_flow("hello", "sample_flows:Succeed")))
    dfjob.ok("worker", "--burst", "--queue", "default", "--queue", "other", "--concurrency", "2")
    [record] = dfjob.json("workers")
    assert record["state"] == "stopped"
    assert (record["queues"], record["concurrency"], record["running_job_ids"]) == (["default", "other"], 2, [])
    assert set(record) >= {"name", "host", "pid", "started_at", "last_seen_at"}
    code, out, _ = dfjob.run("workers")
    assert code == 0
    assert record["name"] in out


def test_workers_on_a_missing_database_creates_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("empty")
    config = write_config(folder, "sqlite:///dfjob.db")
    done = subprocess.run(
        [str(DFJOB), "--config", str(config), "workers"], capture_output=True, text=True, env=_child_env()
    )
    assert (done.returncode, done.stderr) == (
        1,
        f"Error: no dfjob database at {folder / 'dfjob.db'} (run `dfjob db init`)\n",
    )
    assert not (folder / "dfjob.db").exists()
