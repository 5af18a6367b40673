"""Real signals to a real `dfjob worker`: graceful stop, forced stop, process-group signals,
`kill -9` of the supervisor, and run timeouts."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon, Dfjob, as_time, parent_of, pid_alive
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def _exited(daemon: Daemon) -> bool:
    return daemon.process.poll() is not None


def _blocking_flow(dfjob: Dfjob) -> tuple[Path, Path]:
    """A flow `hold` that runs until the test creates its release file: (marker, release)."""
    marker, release = dfjob.directory / "hold.pid", dfjob.directory / "hold.release"
    dfjob.add_flow("hold", "sample_flows:WaitForRelease", config={"marker": str(marker), "release": str(release)})
    return marker, release


def test_sigterm_lets_the_running_attempt_finish(make_dfjob: Callable[..., Dfjob], database_url: str) -> None:
    dfjob = make_dfjob(database_url, worker={"shutdown_grace": 30})
    marker, release = _blocking_flow(dfjob)
    dfjob.add_flow("later", "sample_flows:Succeed", "--priority", "5")
    held_job = dfjob.trigger("hold")
    later_job = dfjob.trigger("later")
    worker = dfjob.start("worker")
    runner_pid = dfjob.wait_for_pid(marker)

    worker.signal(signal.SIGTERM)
    wait_for(lambda: worker.events("worker.stopping"), what="the worker to take the stop request")
    assert pid_alive(runner_pid)
    assert not _exited(worker)
    release.touch()

    assert worker.wait(timeout=60) == 0, worker.stderr()
    [run] = dfjob.runs_of(held_job)
    assert run["status"] == "success", run
    assert dfjob.job(held_job)["status"] == "succeeded"
    # A stopping worker claims nothing new.
    assert dfjob.job(later_job)["status"] == "queued"
    assert dfjob.runs_of(later_job) == []
    assert worker.events()[-1]["event"] == "worker.stopped"


def test_second_sigterm_interrupts_the_running_attempt(make_dfjob: Callable[..., Dfjob], database_url: str) -> None:
    dfjob = make_dfjob(database_url, worker={"shutdown_grace": 30})
    marker = dfjob.directory / "nap.pid"
    dfjob.add_flow("nap", "sample_flows:Sleep", config={"marker": str(marker)})
    job_id = dfjob.trigger("nap", "--param", "seconds=30")
    worker = dfjob.start("worker")
    runner_pid = dfjob.wait_for_pid(marker)
    worker.signal(signal.SIGTERM)

    def second_signal_stops_it() -> bool:
        # Two signals sent back to back may reach Python's handler as one; so repeat until it exits.
        if not _exited(worker):
            worker.signal(signal.SIGTERM)
        return _exited(worker)

    # Well before both the 30 s grace and the 30 s sleep are over.
    wait_for(second_signal_stops_it, timeout=20, interval=0.5, what="the worker to stop on a second SIGTERM")

    assert worker.wait() == 0, worker.stderr()
    [run] = dfjob.runs_of(job_id)
    assert run["status"] == "failed"
    assert "interrupted" in run["error_message"]
    job = dfjob.job(job_id)
    assert (job["status"], job["attempts"], job["locked_by"]) == ("queued", 1, None)
    run_at = as_time(job["run_at"])
    assert run_at is not None
    assert run_at <= datetime.now(UTC), "an interrupted job is queued to run again at once"
    wait_for(lambda: not pid_alive(runner_pid), timeout=10, what="the runner process to be gone")


def _supervisor_of(runner_pid: int) -> int | None:
    """A runner is forked by its worker's template process, a child of the worker."""
    template = parent_of(runner_pid)
    return None if template is None else parent_of(template)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_process_group_is_the_supervisors_to_act_on(
    make_dfjob: Callable[..., Dfjob], database_url: str, signum: signal.Signals
) -> None:
    dfjob = make_dfjob(database_url, worker={"shutdown_grace": 60})
    marker, release = _blocking_flow(dfjob)
    job_id = dfjob.trigger("hold")
    worker = dfjob.start("worker")
    runner_pid = dfjob.wait_for_pid(marker)
    assert _supervisor_of(runner_pid) == worker.pid
    # Each attempt runs in a process group of its own, which a signal to the worker's group misses.
    assert os.getpgid(runner_pid) == runner_pid

    worker.signal_group(signum)
    wait_for(lambda: worker.events("worker.stopping"), what="the worker to take the stop request")
    assert pid_alive(runner_pid)
    release.touch()

    assert worker.wait(timeout=60) == 0, worker.stderr()
    [run] = dfjob.runs_of(job_id)
    assert run["status"] == "success", run
    assert dfjob.job(job_id)["status"] == "succeeded"


def test_kill_9_of_the_supervisor_takes_its_runner_along_and_the_lease_is_rescued(
    make_dfjob: Callable[..., Dfjob], database_url: str
) -> None:
    dfjob = make_dfjob(database_url, worker={"lease_seconds": 2})
    marker = dfjob.directory / "lost.pid"
    counter = dfjob.directory / "lost.calls"
    # The first attempt sleeps 30 s (and is lost with its worker); the retry returns at once.
    dfjob.add_flow("lost", "e2e_flows:SleepOnce", config={"marker": str(marker), "counter": str(counter)})
    job_id = dfjob.trigger("lost")
    first = dfjob.start("worker", name="first")
    runner_pid = dfjob.wait_for_pid(marker)
    assert _supervisor_of(runner_pid) == first.pid
    [lost_run] = dfjob.runs_of(job_id)
    lost_worker = lost_run["worker"]

    os.kill(first.pid, signal.SIGKILL)  # the supervisor alone, not its group

    assert first.wait(timeout=30) == -signal.SIGKILL
    wait_for(lambda: not pid_alive(runner_pid), timeout=10, what="the orphaned runner to die with its supervisor")
    assert dfjob.job(job_id)["status"] == "running"

    def lease_expired() -> bool:
        expires = as_time(dfjob.job(job_id)["lease_expires_at"])
        return expires is not None and expires < datetime.now(UTC)

    wait_for(lease_expired, timeout=30, interval=0.1, what="the dead worker's lease to run out")
    code, _, err = dfjob.run("worker", "--burst")

    assert code == 0, err
    first_run, retry_run = dfjob.runs_of(job_id)
    assert first_run["id"] == lost_run["id"]
    assert first_run["status"] == "failed"
    assert first_run["error_message"].startswith(f"worker lost: {lost_worker}")
    assert (retry_run["status"], retry_run["attempt"]) == ("success", 2)
    assert retry_run["worker"] != lost_worker
    job = dfjob.job(job_id)
    assert (job["status"], job["attempts"], job["rescues"]) == ("succeeded", 2, 1)
    assert counter.read_text() == "2"
    assert '"event": "job.rescued"' in err
    assert lost_worker in err


def test_timeout_stops_the_run_and_the_worker_serves_the_next_job(
    make_dfjob: Callable[..., Dfjob], database_url: str
) -> None:
    dfjob = make_dfjob(database_url)
    marker = dfjob.directory / "slow.pid"
    dfjob.add_flow(
        "slow", "sample_flows:Sleep", "--timeout", "2s", "--max-attempts", "1", config={"marker": str(marker)}
    )
    dfjob.add_flow("next", "sample_flows:Succeed", "--priority", "5")
    slow_job = dfjob.trigger("slow", "--param", "seconds=30")
    next_job = dfjob.trigger("next")

    code, _, err = dfjob.run("worker", "--burst", timeout=25)

    assert code == 0, err
    [run] = dfjob.runs_of(slow_job)
    assert run["status"] == "failed"
    assert run["error_message"] == "timed out after 2s"
    assert dfjob.job(slow_job)["status"] == "failed"
    [next_run] = dfjob.runs_of(next_job)
    assert next_run["status"] == "success"
    assert dfjob.job(next_job)["status"] == "succeeded"
    slow_pid = int(Path(marker).read_text())
    assert not pid_alive(slow_pid), "the timed-out runner must have been killed"
