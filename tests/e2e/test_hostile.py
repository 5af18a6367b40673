"""What real flows and real servers do to a worker, each reproduced: text no database stores,
partial frames on the runner's pipe, background processes, children that outlive a timeout, a
100 MB result, a result that is not JSON, terminal escapes, a stray `json.py`, passwords with
`/`, and files other users could read. The worker survives all of them side by side with
healthy flows."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import DFJOB, Dfjob, _child_env, pid_alive
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(180)
def test_a_worker_survives_hostile_flows_running_beside_healthy_ones(dfjob: Dfjob) -> None:
    pids = dfjob.directory / "pids"
    pids.touch()
    done = dfjob.directory / "datetime.done"
    hostile = {
        "undecodable": ("hostile_flows:UndecodableError", {}),
        "partial": ("hostile_flows:PartialFrames", {}),
        "exiter": ("hostile_flows:ExitLeavingABackgroundProcess", {"pids": str(pids)}),
        "outliver": ("hostile_flows:ChildOutlivingTimeout", {"pids": str(pids)}),
        "huge": ("hostile_flows:HugeResult", {}),
        "when": ("hostile_flows:DatetimeResult", {"done": str(done)}),
    }
    jobs = {}
    for name, (class_path, config) in hostile.items():
        options = ["--max-attempts", "3"] if name == "when" else ["--max-attempts", "1"]
        if name == "outliver":
            options += ["--timeout", "2s"]
        dfjob.add_flow(name, class_path, *options, config=config)
        jobs[name] = dfjob.trigger(name)
    healthy = []
    for index in range(6):
        dfjob.add_flow(f"healthy-{index}", "sample_flows:Succeed")
        healthy.append(dfjob.trigger(f"healthy-{index}"))

    worker = dfjob.start("worker", "--concurrency", "4")
    wait_for(
        lambda: all(dfjob.job(job_id)["status"] in ("succeeded", "failed") for job_id in [*jobs.values(), *healthy]),
        timeout=120,
        what="every job to end",
    )
    # Well under what a 100 MB result would have cost the supervisor had it read it.
    assert _peak_rss_mb(worker.pid) < 250
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, worker.stderr()

    assert [dfjob.job(job_id)["status"] for job_id in healthy] == ["succeeded"] * 6
    errors = {name: [run["error_message"] for run in dfjob.runs_of(job_id)] for name, job_id in jobs.items()}
    assert {name: dfjob.job(job_id)["status"] for name, job_id in jobs.items()} == dict.fromkeys(jobs, "failed")
    [undecodable] = errors["undecodable"]
    assert undecodable.startswith("ValueError: cannot open report-\\udcff.csv: \\x00 ")
    assert errors["partial"] == ["runner protocol error: a frame was left half-written"]
    assert errors["exiter"] == ["runner process died: exited with status 3"]
    assert errors["outliver"] == ["timed out after 2s"]
    assert errors["huge"] == ["result: the result is over worker.max_result_bytes (1048576 bytes)"]
    # Its work had happened: a result that is not JSON is not a reason to do it again.
    assert errors["when"] == ["result: the result is not JSON: Object of type datetime is not JSON serializable"]
    assert done.exists()
    # What the flows started died with their attempts.
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) == 2
    for pid in started:
        wait_for(lambda pid=pid: not pid_alive(pid), timeout=10, what=f"process {pid} to be gone")  # type: ignore[misc]
    # Nothing a flow wrote reaches the terminal raw.
    code, out, _ = dfjob.run("runs", "--limit", "100")
    assert code == 0
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "\\x1b[31mred" in out


def test_a_json_py_in_the_working_directory_never_runs(dfjob: Dfjob) -> None:
    marker = dfjob.directory / "stray-json-ran"
    (dfjob.directory / "json.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom _json import *\n")
    job_id = dfjob.trigger(str(dfjob.add_flow("hello", "sample_flows:Succeed")))
    dfjob.ok("worker", "--burst")  # its working directory is the one holding json.py
    assert dfjob.job(job_id)["status"] == "succeeded"
    assert not marker.exists()


@pytest.mark.parametrize("password", ["pa/ss@wo:rd", "p%40ss", "a/b"])
def test_a_password_with_any_characters_never_appears(make_dfjob: Callable[..., Dfjob], password: str) -> None:
    url = f"postgresql://dfjob:{password}@127.0.0.1:1/db"
    dfjob = make_dfjob(url)
    code, out, err = dfjob.run("--debug", "flows", "list")
    assert code == 1
    assert "Traceback" in err  # --debug shows it, scrubbed
    for shown in (out, err):
        assert password not in shown
        assert password.replace("/", "%2F").replace("@", "%40") not in shown
    worker = dfjob.start("worker")
    wait_for(lambda: worker.events("db.unavailable"), what="the worker to report the outage")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert password not in worker.stderr()


def test_files_dfjob_creates_are_private_and_the_wake_folder_is_checked(
    make_dfjob: Callable[..., Dfjob], tmp_path: Path
) -> None:
    dfjob = make_dfjob(f"sqlite:///{tmp_path / 'state' / 'dfjob.db'}")
    (tmp_path / "state").mkdir()
    old = os.umask(0o022)  # a permissive umask: dfjob must not rely on the caller's
    try:
        dfjob.add_flow("hello", "sample_flows:Succeed")
        worker = dfjob.start("worker")
        wait_for(lambda: worker.events("worker.started"), what="the worker to start")
        database = tmp_path / "state" / "dfjob.db"
        wait_for(lambda: Path(f"{database}-wal").exists(), what="the WAL file")
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        wake = Path(f"{database}-wake")
        wait_for(lambda: list(wake.glob("*.sock")), what="the worker's wake-up socket")
        assert stat.S_IMODE(wake.stat().st_mode) == 0o700
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        os.umask(old)

    # A wake-up folder that is a symlink is refused: nothing it points at is touched.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.sock").write_text("not a socket of ours")
    for leftover in wake.iterdir():
        leftover.unlink()
    wake.rmdir()
    wake.symlink_to(elsewhere)
    job_id = dfjob.trigger("hello")
    code, _, err = dfjob.run("worker", "--burst")
    assert code == 0, err
    assert dfjob.job(job_id)["status"] == "succeeded"
    assert (elsewhere / "precious.sock").read_text() == "not a socket of ours"
    assert "wake-up folder" in err
    assert "worker.wakeup_unavailable" in err


def test_a_stop_signal_to_a_stopped_daemon_leaves_no_traceback_from_runners(dfjob: Dfjob) -> None:
    # A runner whose supervisor died while it started says nothing: no BrokenPipeError traceback.
    dfjob.ok("db", "init")
    worker = subprocess.Popen(
        [str(DFJOB), "--config", str(dfjob.config), "worker", "--concurrency", "4"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_child_env(),
        start_new_session=True,
    )
    # The runners are children of the worker's template process.
    wait_for(lambda: sum(len(children(child)) for child in children(worker.pid)) >= 4, what="the runners to be spawned")
    worker.kill()
    _, err = worker.communicate(timeout=30)
    assert "Traceback" not in err.decode()
    assert "BrokenPipeError" not in err.decode()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found
