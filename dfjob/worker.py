"""The worker daemon: a supervisor that claims jobs and runs them in runner processes.

One runner process per concurrency slot runs user code; this supervisor owns every database
write. Its loop (`run_once`) renews its leases and takes back expired ones now and then, and each
turn writes, in one round trip (`Store.turn`), the runs it started and the attempts that ended
since the last turn, together with a claim for its free slots; then it hands the new jobs out,
stamping `started_at` just before each runner gets its job. It never sleeps blindly: it waits on
the runners' pipes, a wake-up pipe and the enqueue wake-ups, so a result, a new job or a stop
request is seen at once. The core sees only `request_stop()`; `cli` wires signals to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection, wait
from typing import Any

from dfjob import clock, events, wakeup
from dfjob.config import Settings, resolve_path
from dfjob.db import describe_error, is_connection_error, reset_connection
from dfjob.errors import DfjobError
from dfjob.rescue import take_back_expired
from dfjob.runner import SETTINGS_ENV
from dfjob.schedule import format_duration
from dfjob.store import store
from dfjob.store.rows import Claimed, ClaimRequest, Finished, Outcome, Retry, RunStatus

MAX_DB_BACKOFF = 30.0
MAX_FAILED_STARTS = 5
# How long a turn waits for quick runs before writing the starts it has handed out.
START_WRITE_DELAY = 0.002


def worker_name() -> str:
    """A name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Slot:
    """One runner process and the attempt it is running, if any."""

    process: subprocess.Popen[bytes]
    inbox: Connection
    outbox: Connection
    ready: bool = False
    job: Claimed | None = None
    started_at: datetime | None = None
    deadline: float | None = None

    def close(self) -> None:
        for conn in (self.inbox, self.outbox):
            with contextlib.suppress(OSError):
                conn.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.close()


@dataclass
class Stats:
    claimed: int = 0
    finished: int = 0
    rescued: int = 0


class Worker:
    """Claims jobs from `queues` and runs up to `concurrency` of them at once."""

    def __init__(
        self,
        settings: Settings,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        max_jobs: int | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.queues = tuple(queues or settings.worker.queues)
        self.concurrency = concurrency or settings.worker.concurrency
        self.max_jobs = max_jobs
        self.name = name or worker_name()
        self.slots: list[Slot] = []
        self.stats = Stats()
        self._burst = False
        self._found_nothing = False
        self._failed_starts = 0
        # Written at the next turn: attempts that ended, and runs handed to runners whose
        # `in_progress` is not written yet, as (run ids, started_at).
        self._pending_outcomes: list[Outcome] = []
        self._unwritten_starts: list[tuple[list[int], datetime]] = []
        self._next_retry: float | None = None  # monotonic time our earliest retry is due
        self._stopping = False
        self._force = False
        self._grace_deadline: float | None = None
        self._next_maintenance = 0.0
        self._db_backoff = 0.0
        self._listener: wakeup.Listener | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, force: bool = False) -> None:
        """Stop claiming; with `force`, also interrupt running attempts. Safe in a signal handler."""
        if self._stopping:
            force = True
        self._stopping = True
        self._force = self._force or force
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def start(self) -> None:
        self.slots = [self._spawn() for _ in range(self.concurrency)]
        self._open_listener()
        events.emit(events.WORKER_STARTED, **self._identity())

    def _open_listener(self) -> None:
        """Subscribe to enqueue wake-ups; without them the worker still polls."""
        try:
            self._listener = wakeup.open_listener(self.settings.worker.notify)
        except Exception as exc:  # noqa: BLE001 (wake-ups are an optimisation; polling carries on)
            self._listener = None
            events.log.warning("worker.wakeup_unavailable", error=describe_error(exc), worker=self.name)

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        """Interrupt whatever still runs, stop the runners, and say so."""
        self._interrupt_all("interrupted: worker stopped")
        try:
            self._turn(clock.now(), claim=False)
        except Exception as exc:  # noqa: BLE001 (unwritten outcomes are rescued once their leases expire)
            events.emit(events.DB_UNAVAILABLE, error=describe_error(exc), retry_in=None, worker=self.name)
        for slot in self.slots:
            slot.close()
        deadline = time.monotonic() + 5
        for slot in self.slots:
            try:
                slot.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                slot.kill()
        self.slots = []
        self._close_listener()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        events.emit(events.WORKER_STOPPED, **self._identity())

    def run(self, burst: bool = False) -> None:
        """Run until stopped (or, with `burst`, until no job is ready and none is running)."""
        self._burst = burst
        self.start()
        try:
            while True:
                self.run_once()
                if self._done(burst):
                    break
        finally:
            self.close()

    def _done(self, burst: bool) -> bool:
        if any(slot.job for slot in self.slots) or self._pending_outcomes or self._unwritten_starts:
            return False
        if self._stopping:
            return True
        if self.max_jobs is not None and self.stats.claimed >= self.max_jobs:
            return True
        return burst and self._found_nothing

    # -- one pass --------------------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> bool:
        """One pass of the loop; returns True when it claimed at least one job."""
        now = now or clock.now()
        try:
            if time.monotonic() >= self._next_maintenance:
                self._maintain(now)
            claimed = self._turn(now)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self._database_down(exc)
            return False
        self._db_backoff = 0.0
        if claimed and self._can_claim():
            timeout = 0.0  # more may be ready right now
        elif self._unwritten_starts:
            # Give quick runs a moment to finish, so their start and end share the next turn.
            timeout = min(self._idle_timeout(), START_WRITE_DELAY)
        elif self._done(self._burst):
            timeout = 0.0  # a burst with nothing left has nothing to wait for
        else:
            timeout = self._idle_timeout()
        self._wait(timeout)
        self._collect()
        self._check_stop()
        return bool(claimed)

    def _turn(self, now: datetime, claim: bool = True) -> list[Claimed]:
        """Write the starts and outcomes since the last turn and claim jobs for the free slots,
        in one round trip (Postgres) or one transaction (SQLite); then hand the jobs out."""
        free = [slot for slot in self.slots if slot.ready and slot.job is None] if claim and self._can_claim() else []
        request = None
        if free:
            limit = len(free) if self.max_jobs is None else min(len(free), self.max_jobs - self.stats.claimed)
            request = ClaimRequest(self.name, self.queues, limit, now, self.settings.worker.lease_seconds)
        outcomes, starts = self._pending_outcomes, self._unwritten_starts
        if not outcomes and not starts and request is None:
            return []
        self._pending_outcomes, self._unwritten_starts = [], []
        try:
            finished, claimed = store().turn(outcomes, starts, request, self.settings.retry)
        except Exception:
            # Nothing was written: keep all of it for the next turn.
            self._pending_outcomes = outcomes + self._pending_outcomes
            self._unwritten_starts = starts + self._unwritten_starts
            raise
        self._report(finished)
        if request is not None:
            self._found_nothing = not claimed
            if self._next_retry is not None and time.monotonic() >= self._next_retry:
                self._next_retry = None  # this claim looked for it
        if claimed:
            self.stats.claimed += len(claimed)
            started = clock.now()
            for slot, job in zip(free, claimed, strict=False):
                self._dispatch(slot, job, started)
            self._unwritten_starts.append(([job.run_id for job in claimed], started))
        return claimed

    def _can_claim(self) -> bool:
        if self._stopping:
            return False
        if self.max_jobs is not None and self.stats.claimed >= self.max_jobs:
            return False
        return any(slot.ready and slot.job is None for slot in self.slots)

    def _dispatch(self, slot: Slot, job: Claimed, started: datetime) -> None:
        slot.job, slot.started_at = job, started
        slot.deadline = time.monotonic() + job.timeout_seconds if job.timeout_seconds else None
        events.emit(events.JOB_STARTED, **job.event_fields(), worker=self.name)
        message = {
            "job_id": job.job_id,
            "run_id": job.run_id,
            "data_flow_id": job.data_flow_id,
            "data_flow_name": job.data_flow_name,
            "class_path": job.class_path,
            "configuration": job.configuration,
            "params": job.params,
        }
        try:
            slot.inbox.send_bytes(json.dumps(message).encode())
        except OSError:
            self._runner_died(slot)

    def _maintain(self, now: datetime) -> None:
        """Renew our leases and take back anyone's expired ones."""
        lease = self.settings.worker.lease_seconds
        self._next_maintenance = time.monotonic() + max(0.5, lease / 3)
        if self._listener is None:
            self._open_listener()
        held = [slot.job.job_id for slot in self.slots if slot.job]
        still_held = store().renew(self.name, held, now, lease)
        for slot in self.slots:
            if slot.job and slot.job.job_id not in still_held:
                # Someone took this job back: stop running it, write nothing about it.
                events.log.warning("job.lease_lost", job_id=slot.job.job_id, worker=self.name)
                self._replace(slot)
        self.stats.rescued += take_back_expired(now, self.settings.retry)

    def _idle_timeout(self) -> float:
        timeout = self.settings.worker.poll_interval
        now = time.monotonic()
        deadlines = [slot.deadline for slot in self.slots if slot.job and slot.deadline]
        if self._grace_deadline is not None:
            deadlines.append(self._grace_deadline)
        if self._next_retry is not None and self._can_claim():
            deadlines.append(self._next_retry)
        if any(slot.job for slot in self.slots):
            deadlines.append(self._next_maintenance)
        for deadline in deadlines:
            timeout = min(timeout, max(0.0, deadline - now))
        return timeout

    def _wait(self, timeout: float) -> None:
        watched: list[Any] = [self._wake_r, *(slot.outbox for slot in self.slots)]
        if self._listener is not None:
            watched.append(self._listener)
        ready: list[Any] = wait(watched, timeout)
        if self._listener is not None and self._listener in ready:
            try:
                self._listener.drain()
            except Exception:  # noqa: BLE001 (the listening connection broke; reopen it later)
                self._close_listener()
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except (BlockingIOError, OSError):
                pass

    def _collect(self) -> None:
        """Read every finished attempt, notice dead runners and runs past their timeout."""
        for slot in self.slots:
            if slot.outbox.poll() if not slot.outbox.closed else False:
                try:
                    reply = json.loads(slot.outbox.recv_bytes())
                except (EOFError, OSError):
                    self._runner_died(slot)
                    continue
                if reply.get("ready"):
                    slot.ready = True
                    self._failed_starts = 0
                elif slot.job is not None and reply.get("run_id") == slot.job.run_id:
                    self._record(slot, reply)
            elif slot.job and slot.deadline is not None and time.monotonic() >= slot.deadline:
                seconds = slot.job.timeout_seconds or 0
                self._fail_slot(slot, f"timed out after {format_duration(seconds)}", retry=Retry.NORMAL)

    def _record(self, slot: Slot, reply: dict[str, Any]) -> None:
        assert slot.job is not None
        assert slot.started_at is not None
        self._pending_outcomes.append(
            Outcome(
                job=slot.job,
                status=RunStatus(reply["status"]),
                started_at=slot.started_at,
                ended_at=clock.now(),
                result=reply.get("result"),
                error_message=reply.get("error_message"),
                error_backtrace=reply.get("error_backtrace"),
                retry=Retry(reply.get("retry", "normal")),
            )
        )
        slot.job = slot.started_at = slot.deadline = None

    def _runner_died(self, slot: Slot) -> None:
        code = slot.process.wait()
        reason = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        if not slot.ready:
            # It died before it could run anything: respawning blindly would spin forever.
            self._failed_starts += 1
            if self._failed_starts >= MAX_FAILED_STARTS:
                raise DfjobError(f"runner processes keep dying as they start ({reason}); see the log above")
        if slot.job is not None:
            self._fail_slot(slot, f"runner process died: {reason}", retry=Retry.NORMAL)
        else:
            self._replace(slot)

    def _fail_slot(self, slot: Slot, message: str, retry: Retry) -> None:
        """End the slot's attempt as failed, and give the slot a fresh runner."""
        assert slot.job is not None
        assert slot.started_at is not None
        self._pending_outcomes.append(
            Outcome(
                job=slot.job,
                status=RunStatus.FAILED,
                started_at=slot.started_at,
                ended_at=clock.now(),
                error_message=message,
                retry=retry,
            )
        )
        self._replace(slot)

    def _replace(self, slot: Slot) -> None:
        slot.kill()
        fresh = self._spawn()
        slot.process, slot.inbox, slot.outbox, slot.ready = fresh.process, fresh.inbox, fresh.outbox, False
        slot.job = slot.started_at = slot.deadline = None

    def _report(self, finished: list[Finished]) -> None:
        """One `job.finished` event per recorded outcome; a stale one only says its lease was lost."""
        for item in finished:
            job = item.outcome.job
            self.stats.finished += 1
            if item.stale:
                events.log.warning("job.lease_lost", job_id=job.job_id, worker=self.name)
                continue
            if item.retry_at is not None:
                # Wake for our own retry even when the poll interval is long.
                due = time.monotonic() + max(0.0, (item.retry_at - clock.now()).total_seconds())
                self._next_retry = due if self._next_retry is None else min(self._next_retry, due)
            payload: dict[str, Any] = {
                **job.event_fields(),
                "status": item.outcome.status,
                "duration_ms": item.duration_ms,
                "will_retry": item.will_retry,
                "job_status": item.job_status,
            }
            if item.outcome.status == "failed":
                payload["error"] = item.outcome.error_message
            events.emit(events.JOB_FINISHED, **payload)

    def _check_stop(self) -> None:
        if not self._stopping:
            return
        if self._grace_deadline is None:
            self._grace_deadline = time.monotonic() + self.settings.worker.shutdown_grace
        if self._force or time.monotonic() >= self._grace_deadline:
            self._interrupt_all("interrupted: worker stopped before the run finished")

    def _interrupt_all(self, message: str) -> None:
        for slot in self.slots:
            if slot.job is not None:
                self._fail_slot(slot, message, retry=Retry.NOW)

    def _database_down(self, exc: BaseException) -> None:
        self._db_backoff = min(MAX_DB_BACKOFF, max(0.5, self._db_backoff * 2))
        events.emit(events.DB_UNAVAILABLE, error=describe_error(exc), retry_in=self._db_backoff, worker=self.name)
        reset_connection()
        # Keep serving the runners (results, timeouts, a stop request) until the backoff is over.
        deadline = time.monotonic() + self._db_backoff
        while (remaining := deadline - time.monotonic()) > 0 and not self._force:
            self._wait(min(remaining, self._idle_timeout()))
            self._collect()
            self._check_stop()

    def _spawn(self) -> Slot:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        env[SETTINGS_ENV] = json.dumps(
            {
                "paths": [resolve_path(self.settings, path) for path in self.settings.flows.paths],
                "allowed_modules": list(self.settings.flows.allowed_modules),
                "log_format": events.resolved_format(self.settings.log.format),
                "log_level": self.settings.log.level,
            }
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "dfjob.runner", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        return Slot(process, Connection(to_child_w, readable=False), Connection(from_child_r, writable=False))

    def _identity(self) -> dict[str, Any]:
        return {"worker": self.name, "queues": list(self.queues), "concurrency": self.concurrency}
