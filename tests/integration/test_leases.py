"""Leases seen from the attempt, with real runner processes on SQLite and Postgres: an attempt
stops itself before its lease can run out unrenewed, an attempt whose lease was taken back is
stopped at once, and a slow monitoring callback delays no renewal."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import peewee
import pytest

from dfjob import clock, events
from dfjob.config import Settings, WorkerSettings
from dfjob.leases import LeaseKeeper
from dfjob.models import DataFlow, DataFlowRun, Job
from dfjob.overview import list_workers
from dfjob.registry import FlowSpec, add_flow
from dfjob.store import store
from dfjob.trigger import trigger_run
from dfjob.worker import Worker

LEASE = 3.0


def _short_lease(settings: Settings) -> Settings:
    return replace(settings, worker=WorkerSettings(poll_interval=0.05, lease_seconds=LEASE, shutdown_grace=5))


def _held_flow(settings: Settings, tmp_path: Path, name: str = "held") -> tuple[DataFlow, Path, Path]:
    marker, release = tmp_path / f"{name}.pid", tmp_path / f"{name}.release"
    flow = add_flow(
        settings,
        FlowSpec(
            name=name,
            class_path="sample_flows:WaitForRelease",
            configuration={"marker": str(marker), "release": str(release)},
        ),
    )
    return flow, marker, release


def _pid(marker: Path) -> int | None:
    text = marker.read_text() if marker.exists() else ""
    return int(text) if text.endswith("\n") else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _runs(job_id: int) -> list[DataFlowRun]:
    return list(DataFlowRun.select().where(DataFlowRun.job == job_id).order_by(DataFlowRun.id))


def _run_until(worker: Worker, condition: Any, timeout: float = 30.0, what: str = "") -> Any:
    """Drive the worker's loop until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        worker.run_once()
    return value


def test_an_attempt_stops_itself_before_its_lease_runs_out_when_renewals_fail(
    database: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _short_lease(database)
    flow, marker, _ = _held_flow(settings, tmp_path)
    job_id = trigger_run(settings, flow).job_id
    worker = Worker(settings, name="cut-off")
    worker.start()
    try:
        pid = _run_until(worker, lambda: _pid(marker), what="the flow to start")
        claimed = Job.get_by_id(job_id)

        def hung_renewal(self: LeaseKeeper, leases: Any) -> Any:
            raise peewee.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(LeaseKeeper, "renew", hung_renewal)
        _run_until(worker, lambda: not _alive(pid), what="the attempt to stop itself")
        monkeypatch.undo()
        _run_until(worker, lambda: _runs(job_id)[0].status == "failed", what="the outcome to be written")
        job = Job.get_by_id(job_id)
    finally:
        worker.request_stop(force=True)
        worker.close()
    run = _runs(job_id)[0]
    assert run.error_message == "lease lost: its lease was not renewed in time"
    # It stopped before the lease its claim bought could run out: no rescuer could overlap it.
    assert run.ended_at < claimed.lease_expires_at
    # The normal retry rules apply: it went back to the queue (and was claimed again at once).
    assert job.rescues == 0
    assert job.attempts in (1, 2)


def test_an_attempt_whose_lease_was_taken_back_is_stopped_at_once_and_nothing_is_written_about_it(
    database: Settings, tmp_path: Path, captured_events: list[tuple[str, dict[str, Any]]]
) -> None:
    settings = _short_lease(database)
    flow, marker, release = _held_flow(settings, tmp_path)
    job_id = trigger_run(settings, flow).job_id
    worker = Worker(settings, name="slow-to-notice")
    worker.start()
    try:
        pid = _run_until(worker, lambda: _pid(marker), what="the flow to start")
        # Another worker takes the job back, as if this one had stopped renewing.
        expires = Job.get_by_id(job_id).lease_expires_at
        [rescued] = store().rescue_expired(expires + timedelta(seconds=1), settings.retry)
        assert rescued.job_id == job_id
        _run_until(worker, lambda: not _alive(pid), what="the attempt to be stopped")
        marker.unlink()
        release.touch()
        # The job was put back to run again: this worker may take it, under a new lease.
        _run_until(worker, lambda: Job.get_by_id(job_id).status == "succeeded", what="the job to run again")
    finally:
        worker.request_stop(force=True)
        worker.close()
    first, second = DataFlowRun.select().where(DataFlowRun.job == job_id).order_by(DataFlowRun.id)
    assert (first.status, second.status) == ("failed", "success")
    assert first.error_message.startswith("worker lost: slow-to-notice")
    assert Job.get_by_id(job_id).attempts == 2
    lost = [
        payload for name, payload in captured_events if name == events.JOB_FINISHED and payload["run_id"] == first.id
    ]
    assert lost == [], "the worker wrote nothing about the attempt it lost"


def test_a_callback_slower_than_the_lease_delays_no_renewal(
    database: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _short_lease(database)
    monkeypatch.setattr(events, "_callback_timeout", 30.0)
    if events._dispatcher_instance is not None:
        monkeypatch.setattr(events._dispatcher_instance, "timeout", 30.0)
    calls: list[str] = []

    def slow(name: str, payload: dict[str, Any]) -> None:
        calls.append(name)
        time.sleep(3 * LEASE)

    events._callbacks.append(("tests:slow", slow))
    flow = add_flow(
        settings, FlowSpec(name="long", class_path="sample_flows:Sleep", configuration={"marker": str(tmp_path / "m")})
    )
    job_id = trigger_run(settings, flow, params={"seconds": str(2 * LEASE)}).job_id

    Worker(settings, name="patient").run(burst=True)

    job = Job.get_by_id(job_id)
    assert (job.status, job.attempts, job.rescues) == ("succeeded", 1, 0)
    assert [run.status for run in DataFlowRun.select().where(DataFlowRun.job == job_id)] == ["success"]
    assert calls, "the callback was called"


def test_a_worker_keeps_a_record_while_it_runs_and_marks_it_stopped(database: Settings, tmp_path: Path) -> None:
    settings = _short_lease(database)
    flow, marker, release = _held_flow(settings, tmp_path)
    job_id = trigger_run(settings, flow).job_id
    worker = Worker(settings, queues=["default", "other"], concurrency=2, name="recorded")
    worker.start()
    try:
        _run_until(worker, lambda: _pid(marker), what="the flow to start")
        _run_until(
            worker,
            lambda: [row for row in list_workers() if row["running_job_ids"] == [job_id]],
            what="the record to show the running job",
        )
        [record] = list_workers()
        assert (record["name"], record["state"], record["pid"]) == ("recorded", "alive", os.getpid())
        assert (record["queues"], record["concurrency"]) == (["default", "other"], 2)
        release.touch()
        _run_until(worker, lambda: Job.get_by_id(job_id).status == "succeeded", what="the job to end")
    finally:
        worker.request_stop()
        worker.close()
    [record] = list_workers()
    assert (record["state"], record["running_job_ids"]) == ("stopped", [])
    # A record not refreshed for two leases is stale.
    later = clock.now() + timedelta(seconds=3 * LEASE)
    store().register_worker("vanished", "elsewhere", 1, ["default"], 1, LEASE, clock.now())
    assert {row["name"]: row["state"] for row in list_workers(later)} == {"vanished": "stale", "recorded": "stopped"}
