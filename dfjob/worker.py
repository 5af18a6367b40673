"""The worker daemon's supervisor: claims jobs, hands them to runner processes, writes what happened.

Its parts: `pool.RunnerPool` (the runner processes), `batch.WriteBatch` (starts and outcomes not
yet written), `leases.LeaseKeeper` (renewals and the fences runners stop at) and
`stopping.StopState`. This loop ties them together:
- Each pass (`run_once`) renews the leases when due, then writes the batch and claims for idle
  runners in one round trip (`Store.turn`), then takes back other workers' expired leases; so
  after an outage a worker renews and writes what it holds before it rescues anything.
- It hands out what it claimed and waits, never blindly, on the runners' pipes and pidfds, the
  stop pipe and the enqueue wake-ups, until something happens.
- A runner reports when an attempt really starts and how it ended. A runner that dies, breaks
  the protocol, or stops itself at its fence or timeout costs that attempt, and the slot gets a
  fresh runner.
- The database may go away: the loop backs off (`db.unavailable`) while it keeps serving the
  runners; when it is back, jobs a lost round trip claimed in its name are put back at once.
The core sees only `request_stop()`; `cli` wires signals to it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from multiprocessing.connection import wait
from typing import Any

from dfjob import clock, dbclock, events, protocol, wakeup
from dfjob.ahead import HOSTAGE_SECONDS, AheadQueue
from dfjob.batch import WriteBatch
from dfjob.config import Settings, resolve_path
from dfjob.db import describe_error, is_connection_error, reset_connection
from dfjob.leases import LeaseKeeper, take_back_expired
from dfjob.pool import Lost, Received, RunnerPool, Slot
from dfjob.schedule import format_duration
from dfjob.stopping import StopState
from dfjob.store import store
from dfjob.store.rows import Claimed, ClaimRequest, Finished, JobStatus, LogWrite, Outcome, Retry, RunStatus

MAX_DB_BACKOFF = 30.0
# How long a pass waits for quick runs before writing the starts it has seen, so that a run that
# ends within it is written once, start and end together.
START_WRITE_DELAY = 0.002
# The supervisor's own timeout stop, should a runner's watchdog not have acted by then.
TIMEOUT_BACKSTOP = 2.0
# Wake-ups are coalesced: however many arrive, a worker that found nothing to claim claims again
# at most this often (about 100 times a second). The first claim after a quiet spell is not delayed.
MIN_IDLE_CLAIM_INTERVAL = 0.01


def worker_name() -> str:
    """A name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def wall_time(monotonic: float) -> datetime:
    """A `time.monotonic()` value (a runner's report) as database time."""
    return clock.now() - timedelta(seconds=time.monotonic() - monotonic)


def runner_job(job: Claimed) -> protocol.Job:
    return protocol.Job(
        job_id=job.job_id,
        run_id=job.run_id,
        data_flow_id=job.data_flow_id,
        data_flow_name=job.data_flow_name,
        class_path=job.class_path,
        configuration=job.configuration,
        params=job.params,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        timeout_seconds=job.timeout_seconds,
        scheduled_for=clock.iso(job.scheduled_for),
        triggered_by=job.triggered_by,
    )


@dataclass
class Stats:
    claimed: int = 0
    finished: int = 0
    rescued: int = 0
    claim_requests: int = 0
    turns: int = 0
    released: int = 0


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
        self.stats = Stats()
        self.pool = RunnerPool(self.concurrency, self._runner_settings(), settings.worker.max_result_bytes + (1 << 20))
        self.batch = WriteBatch()
        self.ahead = AheadQueue()
        # Per job held: the monotonic time its attempt must stop by without a renewal (see leases).
        self._fences: dict[int, float] = {}
        # Jobs an operator cancelled while queued in a runner: cancelled when it gives them back.
        self._cancel_when_back: set[int] = set()
        self.leases = LeaseKeeper(settings.worker.lease_seconds)
        self.stop = StopState(settings.worker.shutdown_grace)
        self._burst = False
        self._found_nothing = False
        self._next_retry: float | None = None  # monotonic time our earliest retry is due
        self._db_backoff = 0.0
        # A round trip that claimed may have committed without our hearing back.
        self._claims_unsure = False
        self._listener: wakeup.Listener | None = None
        self._said_stopping = False
        self._registered = False
        # A wake-up said a running job was asked to stop: look whether it is one of ours.
        self._cancel_asked = False
        self._last_claim = 0.0
        self._claim_held_until: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, force: bool = False) -> None:
        """Stop claiming; with `force` (or a second request), interrupt running attempts. Safe in
        a signal handler."""
        self.stop.request(force)

    def start(self) -> None:
        self.pool.start()
        self._open_listener()
        events.emit(events.WORKER_STARTED, **self._identity())

    def close(self) -> None:
        """Interrupt whatever still runs, write what is left, stop the runners, and say so."""
        self._interrupt_all("interrupted: worker stopped")
        self.batch.release(self.ahead.take_all())
        try:
            self._turn(claim=False)
            if self._registered:
                store().worker_stopped(self.name, clock.now())
        except Exception as exc:  # noqa: BLE001 (unwritten outcomes are rescued once their leases expire)
            events.emit(events.DB_UNAVAILABLE, error=describe_error(exc), retry_in=None, worker=self.name)
        self.pool.close()
        self._close_listener()
        self.stop.close()
        own, runners = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu: dict[str, Any] = {
            "cpu_seconds": round(own.ru_utime + own.ru_stime, 3),
            "runner_cpu_seconds": round(runners.ru_utime + runners.ru_stime, 3),  # reaped: template and runners
        }
        events.emit(events.WORKER_STOPPED, **self._identity(), **asdict(self.stats), **cpu)

    def run(self, burst: bool = False) -> None:
        """Run until stopped (or, with `burst`, until no job is ready and none is running)."""
        self._burst = burst
        self.start()
        try:
            while True:
                self.run_once()
                if self._done():
                    break
        finally:
            self.close()

    def _done(self) -> bool:
        if self.pool.busy() or self.batch or self.ahead:
            return False
        if self.stop.requested:
            return True
        if self.max_jobs is not None and self.stats.claimed >= self.max_jobs:
            return True
        return self._burst and self._found_nothing

    # -- one pass ------------------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> bool:
        """One pass of the loop; returns True when it claimed at least one job. `now` (tests)
        stands for the time of the whole pass; else each step reads the clock when it acts."""
        given = now
        now = now or clock.now()
        try:
            maintain = self.leases.due(time.monotonic())
            if maintain:
                self._renew()
            if self._claims_unsure:
                self._put_back_lost_claims()
            if self._cancel_asked:
                self._cancel_asked = False
                self._cancel(store().cancel_requested([job.job_id for job in self._held()]))
            if self.stop.requested:
                self._withdraw_all()  # stopping: what has not started goes back at once
                self._release(self.ahead.take_all())
            elif self.ahead:
                self._release(self.ahead.overdue(time.monotonic()))
            claimed = self._turn(given)
            if maintain:
                self.stats.rescued += len(take_back_expired(now, self.settings.retry))
                if self._listener is None:
                    self._open_listener()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self._database_down(exc)
            return False
        self._db_backoff = 0.0
        self._wait(self._timeout(claimed))
        self._handle(self.pool.collect())
        self._check_deadlines()
        self._dispatch()
        return bool(claimed)

    def _release(self, jobs: list[Claimed]) -> None:
        """Hand these back unstarted at the next turn."""
        for job in jobs:
            self._fences.pop(job.job_id, None)
        self.batch.release(jobs)

    def _held(self) -> list[Claimed]:
        """Every job this worker holds a lease on and has not written the end of."""
        return [job for slot in self.pool.slots for job in slot.held()] + self.ahead.jobs()

    def _dispatch(self) -> None:
        """Give the jobs held unassigned to the runners, the least loaded first, up to the queue
        depth short runs allow; take jobs back from behind long runs for runners that are free."""
        depth = self.ahead.depth()
        given: dict[int, list[protocol.Message]] = {}
        while self.ahead and not self.stop.requested:
            slots = [slot for slot in self.pool.ready() if slot.load <= depth]
            if not slots:
                break
            job = self.ahead.next()
            assert job is not None
            slot = min(slots, key=lambda slot: slot.load)
            given.setdefault(slot.index, []).append(self._give(slot, job))
        for index, messages in given.items():
            self.pool.send(self.pool.slots[index], *messages)  # one write per runner
        self._unblock()

    def _give(self, slot: Slot, job: Claimed) -> protocol.Run:
        """Make `job` the slot's (current, or queued behind it); returns the message to send."""
        if slot.job is None:
            slot.job, slot.started, slot.deadline, slot.since = job, None, None, time.monotonic()
        else:
            slot.behind.append(job)
        return protocol.Run(job=runner_job(job), fence=self._fences[job.job_id])

    def _unblock(self) -> None:
        """With a runner free, withdraw the jobs queued behind runs older than HOSTAGE_SECONDS."""
        if not self.pool.idle():
            return
        now = time.monotonic()
        for slot in self.pool.busy():
            waiting = [job.run_id for job in slot.behind if job.run_id not in slot.withdrawing]
            if waiting and now - slot.since > HOSTAGE_SECONDS:
                self._withdraw(slot, waiting)

    def _withdraw(self, slot: Slot, run_ids: list[int]) -> None:
        slot.withdrawing.update(run_ids)
        self.pool.send(slot, protocol.Withdraw(run_ids=run_ids))

    def _withdraw_all(self) -> None:
        for slot in self.pool.busy():
            waiting = [job.run_id for job in slot.behind if job.run_id not in slot.withdrawing]
            if waiting:
                self._withdraw(slot, waiting)

    def _withdrawn(self, slot: Slot, run_ids: list[int]) -> None:
        """The runner will not start these: they go back to the worker's unassigned jobs."""
        back = set(run_ids)
        slot.withdrawing -= back
        taken = [job for job in slot.behind if job.run_id in back]
        slot.behind = deque(job for job in slot.behind if job.run_id not in back)
        if slot.job is not None and slot.job.run_id in back and slot.started is None:
            # It refused to start it: its fence had (nearly) passed.
            taken.insert(0, slot.job)
            self._next_in(slot)
        self.ahead.hold(taken)
        self._cancel_unstarted(self.ahead.take(self._cancel_when_back))

    def _cancel_unstarted(self, jobs: list[Claimed]) -> None:
        """Jobs asked to stop before they started end `cancelled` without running."""
        now = clock.now()
        for job in jobs:
            self._cancel_when_back.discard(job.job_id)
            self.batch.ended(Outcome(job, RunStatus.FAILED, now, now, error_message="cancelled", retry=Retry.CANCEL))

    def _next_in(self, slot: Slot) -> None:
        """The slot's current attempt is over: the next one queued behind it, if any, is current."""
        slot.job = slot.behind.popleft() if slot.behind else None
        slot.started = slot.deadline = None
        slot.since = time.monotonic()
        if slot.job is not None:
            slot.withdrawing.discard(slot.job.run_id)  # asked back too late: it is this runner's now

    def _renew(self) -> None:
        """Renew every lease we hold (running attempts and outcomes not yet written); an attempt
        whose lease was taken back is stopped at once, and nothing is written about it. Also
        measure the clock against the database's and say we are alive (the worker record)."""
        dbclock.sync()
        held = [(job.job_id, job.lease_token) for job in self._held() + self.batch.holds()]
        renewed, fence = self.leases.renew(held)
        self._record_alive([job_id for job_id, _ in held])
        for job_id in renewed:
            self._fences[job_id] = fence
        for job in self.ahead.take({job.job_id for job in self.ahead.jobs()} - set(renewed)):
            events.log.warning("job.lease_lost", job_id=job.job_id, worker=self.name)
        for slot in self.pool.busy():
            if slot.job is None:
                continue
            if slot.job.job_id in renewed:
                # Jobs queued behind it whose lease is gone are refused by the runner at their turn.
                self.pool.send(slot, protocol.Renew(fence=fence))
            else:
                events.log.warning("job.lease_lost", job_id=slot.job.job_id, worker=self.name)
                self._forget(slot)
                self.pool.replace(slot)
        self._cancel({job_id for job_id, asked in renewed.items() if asked})

    def _cancel(self, job_ids: set[int]) -> None:
        """Stop the attempts an operator asked to stop: process group and all; the job ends
        `cancelled`, with no retry. A job not started yet ends so without running (one queued in a
        runner is withdrawn first)."""
        for slot in self.pool.busy():
            if slot.job is not None and slot.job.job_id in job_ids:
                self._fail(slot, "cancelled", Retry.CANCEL)
                self.pool.replace(slot)
            queued = [job.run_id for job in slot.behind if job.job_id in job_ids]
            if queued:
                self._withdraw(slot, queued)
                self._cancel_when_back.update(job_ids)
        self._cancel_unstarted(self.ahead.take(job_ids))

    def _record_alive(self, running: list[int]) -> None:
        now = clock.now()
        if self._registered:
            store().worker_seen(self.name, now, running)
            return
        store().register_worker(
            self.name,
            socket.gethostname(),
            os.getpid(),
            self.queues,
            self.concurrency,
            self.settings.worker.lease_seconds,
            now,
        )
        self._registered = True

    def _put_back_lost_claims(self) -> None:
        keep = [job.lease_token for job in self._held() + self.batch.holds()]
        released = store().release_lost_claims(self.name, keep)
        self._claims_unsure = False
        if released:
            events.log.info("job.released", job_ids=sorted(released), worker=self.name)

    def _turn(self, now: datetime | None = None, claim: bool = True) -> list[Claimed]:
        """Write the starts and outcomes since the last turn and claim jobs for the idle runners,
        in one round trip (Postgres) or one transaction (SQLite); then hand the jobs out.

        A claim's lease is stamped from the clock read just before the round trip that the runner's
        fence is counted from too: earlier round trips of the pass (renewals, the worker record)
        must not eat into the lease behind the fence's back."""
        wanted = self._wanted() if claim and self._can_claim() and self._claim_allowed() else 0
        request = None
        if wanted:
            limit = wanted if self.max_jobs is None else min(wanted, self.max_jobs - self.stats.claimed)
            stamp = now if now is not None else clock.now()
            request = ClaimRequest(self.name, self.queues, limit, stamp, self.settings.worker.lease_seconds)
        if not self.batch and request is None:
            return []
        outcomes, starts = self.batch.take()
        logs = self.batch.take_logs()
        releases = self.batch.take_releases()
        sent = time.monotonic()
        self.stats.turns += 1
        self.stats.released += len(releases)
        if request is not None:
            self._last_claim = sent
            self.stats.claim_requests += 1
        try:
            turn = store().turn(outcomes, starts, request, self.settings.retry, logs, releases)
        except Exception as exc:
            self.batch.put_back(outcomes, starts)
            self.batch.put_back_logs(logs)
            self.batch.put_back_releases(releases)
            self._claims_unsure = self._claims_unsure or request is not None
            if is_connection_error(exc) or not outcomes:
                raise
            # The database refused something in the batch, not the connection: find what it was
            # and write the rest, so that one bad outcome never stops the worker.
            self._write_one_by_one(exc)
            return []
        self._report(turn.finished)
        if (outcomes and request is None) or turn.downstream:
            # An attempt that ended may have made room under a run limit, or made a job due: look again.
            self._found_nothing = False
        for created in turn.downstream:
            events.emit(
                events.JOB_ENQUEUED,
                job_id=created.job_id,
                data_flow_id=created.data_flow_id,
                data_flow_name=created.data_flow_name,
                queue=created.queue,
            )
        if request is not None:
            self._found_nothing = not turn.claimed
            if self._next_retry is not None and time.monotonic() >= self._next_retry:
                self._next_retry = None  # this claim looked for it
        fence = self.leases.fence(sent)
        for job in turn.claimed:
            self._fences[job.job_id] = fence
        self.ahead.hold(turn.claimed)
        self._dispatch()
        self.stats.claimed += len(turn.claimed)
        return turn.claimed

    def _wanted(self) -> int:
        """How many jobs to claim: one per free runner, and behind short runs as many as the queue
        depth allows (none while jobs are being handed back)."""
        depth = 0 if self.batch.releases else self.ahead.depth()
        room = sum(max(0, 1 + depth - slot.load) for slot in self.pool.ready())
        return max(0, room - len(self.ahead))

    def _claim_allowed(self) -> bool:
        """False for a moment after a claim that found nothing (see MIN_IDLE_CLAIM_INTERVAL);
        the claim it holds back is made when the moment is over."""
        if not self._found_nothing:
            return True
        wait_until = self._last_claim + MIN_IDLE_CLAIM_INTERVAL
        if time.monotonic() >= wait_until:
            self._claim_held_until = None
            return True
        self._claim_held_until = wait_until
        return False

    def _write_one_by_one(self, error: BaseException) -> None:
        """Write each outcome of the batch alone; one the database refuses is written instead as
        a failure that says so (no result, no backtrace), or given up to the lease's expiry."""
        outcomes, starts = self.batch.take()
        finished: list[Finished] = []
        for outcome in outcomes:
            try:
                finished += store().turn([outcome], [], None, self.settings.retry).finished
                continue
            except Exception as exc:  # noqa: BLE001 (any refusal of this one outcome is handled below)
                if is_connection_error(exc):
                    self.batch.put_back([outcome], [])
                    continue
                reason = describe_error(exc)
            events.log.error("run.unstorable", run_id=outcome.job.run_id, job_id=outcome.job.job_id, error=reason)
            message = f"could not store this attempt's outcome: {reason}"
            replacement = Outcome(
                outcome.job,
                RunStatus.FAILED,
                outcome.started_at,
                outcome.ended_at,
                error_message=message[:1000],
                # A success whose result could not be stored has done its work: no retry.
                retry=Retry.NEVER if outcome.status == RunStatus.SUCCESS else outcome.retry,
            )
            try:
                finished += store().turn([replacement], [], None, self.settings.retry).finished
            except Exception as exc:  # noqa: BLE001 (left to the lease's expiry: the job is taken back then)
                events.log.error("run.unstorable", run_id=outcome.job.run_id, error=describe_error(exc))
        self._report(finished)
        self.batch.put_back([], starts)
        events.log.warning("worker.batch_refused", error=describe_error(error), worker=self.name)

    def _can_claim(self) -> bool:
        if self.stop.requested:
            return False
        return self.max_jobs is None or self.stats.claimed < self.max_jobs

    # -- what the runners say ------------------------------------------------------------------

    def _handle(self, happenings: Iterable[Received | Lost]) -> None:
        for item in happenings:
            if isinstance(item, Lost):
                self._fail(item.slot, item.reason, Retry.NORMAL)
                if not self.stop.requested:
                    self.pool.replace(item.slot)
                continue
            slot, message = item.slot, item.message
            if isinstance(message, protocol.Withdrawn):
                self._withdrawn(slot, message.run_ids)
                continue
            job = slot.job
            if job is None or getattr(message, "run_id", None) != job.run_id:
                continue
            if isinstance(message, protocol.Log):
                self.batch.logged(
                    LogWrite(
                        message.run_id,
                        [(seq, wall_time(at), stream, text, part) for seq, at, stream, text, part in message.lines],
                        message.drop_tail_before,
                        message.log_bytes,
                        message.dropped_bytes,
                    )
                )
            elif isinstance(message, protocol.Started):
                self._started(slot, job, message)
            elif isinstance(message, protocol.Ended):
                self._ended(slot, job, message)
            elif isinstance(message, protocol.Fenced):
                reason = "lease lost: " if message.reason == "lease" else ""
                self._fail(slot, f"{reason}{message.detail}", Retry.NORMAL)
                self.pool.replace(slot)

    def _started(self, slot: Slot, job: Claimed, message: protocol.Started) -> None:
        slot.started = message.at
        if job.timeout_seconds:
            slot.deadline = message.at + job.timeout_seconds + TIMEOUT_BACKSTOP
        self.batch.started(job.run_id, wall_time(message.at))
        events.emit(events.JOB_STARTED, **job.event_fields(), worker=self.name)

    def _ended(self, slot: Slot, job: Claimed, message: protocol.Ended) -> None:
        if slot.started is not None:
            self.ahead.ran(message.at - slot.started)
        self.batch.ended(
            Outcome(
                job=job,
                status=RunStatus(message.status),
                started_at=wall_time(slot.started if slot.started is not None else message.at),
                ended_at=wall_time(message.at),
                result=message.result,
                error_message=message.error_message,
                error_backtrace=message.error_backtrace,
                retry=Retry(message.retry),
                cpu_seconds=message.cpu_seconds,
                max_rss_kb=message.max_rss_kb,
            )
        )
        self._fences.pop(job.job_id, None)
        if message.leftovers:
            # Processes the attempt started are still running: they die with the runner.
            events.log.warning("runner.leftovers", job_id=job.job_id, run_id=job.run_id, worker=self.name)
            slot.job = slot.started = slot.deadline = None
            self._forget(slot)
            self.pool.replace(slot)
        else:
            self._next_in(slot)

    def _fail(self, slot: Slot, message: str, retry: Retry) -> None:
        """End the slot's attempt (if any) as failed; the caller deals with the runner. An attempt
        the runner never said it started never ran: it is handed back, its attempt not counted
        (a cancel still ends it `cancelled`)."""
        job = slot.job
        if job is None:
            return
        ended = clock.now()
        if slot.started is None and retry != Retry.CANCEL:
            self._release([job])
        else:
            started = wall_time(slot.started) if slot.started is not None else ended
            self.batch.ended(Outcome(job, RunStatus.FAILED, started, ended, error_message=message, retry=retry))
            self._fences.pop(job.job_id, None)
        slot.job = slot.started = slot.deadline = None
        self._forget(slot)

    def _forget(self, slot: Slot) -> None:
        """The slot's runner is being replaced: what was queued behind its attempt never started
        there; it goes back to the worker's unassigned jobs (to another runner, or handed back)."""
        self.ahead.hold(slot.behind)
        slot.behind, slot.withdrawing = deque(), set()

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        if self.stop.requested and not self._said_stopping:
            self._said_stopping = True
            events.log.info("worker.stopping", worker=self.name, running=len(self.pool.busy()))
        if self.stop.must_interrupt(now):
            self._interrupt_all("interrupted: worker stopped before the run finished")
            return
        for slot in self.pool.busy():
            if slot.job is not None and slot.deadline is not None and now >= slot.deadline:
                self._fail(slot, f"timed out after {format_duration(slot.job.timeout_seconds or 0)}", Retry.NORMAL)
                self.pool.replace(slot)

    def _interrupt_all(self, message: str) -> None:
        for slot in self.pool.busy():
            self.pool.kill(slot)
            self._fail(slot, message, Retry.NOW)

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
            level = None
            if item.outcome.status == RunStatus.FAILED:
                # Alert on `error`: a job that failed for good; a failure that retries is a warning.
                level = "warning" if item.will_retry or item.job_status == JobStatus.CANCELLED else "error"
            events.emit(events.JOB_FINISHED, level=level, **item.event_fields())
            if item.job_status == JobStatus.CANCELLED:
                events.emit(
                    events.JOB_CANCELLED,
                    job_id=job.job_id,
                    data_flow_id=job.data_flow_id,
                    data_flow_name=job.data_flow_name,
                    queue=job.queue,
                    run_id=job.run_id,
                )

    # -- waiting -------------------------------------------------------------------------------

    def _timeout(self, claimed: list[Claimed]) -> float:
        if claimed and self._can_claim() and self.pool.idle():
            return 0.0  # more may be ready right now
        if self.batch.starts and not self.batch.outcomes:
            return min(self._idle_timeout(), START_WRITE_DELAY)
        if self._done():
            return 0.0  # a burst with nothing left has nothing to wait for
        return self._idle_timeout()

    def _idle_timeout(self) -> float:
        timeout = self.settings.worker.poll_interval
        now = time.monotonic()
        deadlines = [slot.deadline for slot in self.pool.busy() if slot.deadline is not None]
        grace = self.stop.grace_deadline()
        if grace is not None:
            deadlines.append(grace)
        if self._next_retry is not None and self._can_claim():
            deadlines.append(self._next_retry)
        if self._claim_held_until is not None:
            deadlines.append(self._claim_held_until)
        overdue = self.ahead.next_overdue_at()
        if overdue is not None:
            deadlines.append(overdue)
        if self.pool.idle():
            deadlines += [slot.since + HOSTAGE_SECONDS for slot in self.pool.busy() if slot.behind]
        if self.pool.busy() or self.batch:
            deadlines.append(self.leases.next_renewal())
        for deadline in deadlines:
            timeout = min(timeout, max(0.0, deadline - now))
        return timeout

    def _wait(self, timeout: float) -> None:
        watched: list[Any] = [self.stop.wake_fd, *self.pool.fds()]
        if self._listener is not None:
            watched.append(self._listener)
        ready: list[Any] = wait(watched, timeout)
        if self._listener is not None and self._listener in ready:
            try:
                said = self._listener.drain()
            except Exception:  # noqa: BLE001 (the listening connection broke; reopen it later)
                self._close_listener()
            else:
                self._cancel_asked = self._cancel_asked or wakeup.CANCEL in said
        if self.stop.wake_fd in ready:
            self.stop.drain()

    def _database_down(self, exc: BaseException) -> None:
        self._db_backoff = min(MAX_DB_BACKOFF, max(0.5, self._db_backoff * 2))
        events.emit(events.DB_UNAVAILABLE, error=describe_error(exc), retry_in=self._db_backoff, worker=self.name)
        reset_connection()
        # Keep serving the runners (results, timeouts, a stop request) until the backoff is over.
        deadline = time.monotonic() + self._db_backoff
        while (remaining := deadline - time.monotonic()) > 0 and not self.stop.forced:
            self._wait(min(remaining, self._idle_timeout()))
            self._handle(self.pool.collect())
            self._check_deadlines()

    # -- wake-ups ------------------------------------------------------------------------------

    def _open_listener(self) -> None:
        """Subscribe to enqueue wake-ups; without them the worker still polls."""
        try:
            self._listener = wakeup.open_listener(self.settings.worker.notify)
        except Exception as exc:  # noqa: BLE001 (wake-ups are an optimisation; polling carries on)
            self._listener = None
            events.log.warning("worker.wakeup_unavailable", error=describe_error(exc), worker=self.name)

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
            self._listener = None

    def _runner_settings(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "paths": [resolve_path(settings, path) for path in settings.flows.paths],
            "allowed_modules": list(settings.flows.allowed_modules),
            "log_format": events.resolved_format(settings.log.format),
            "log_level": settings.log.level,
            "max_result_bytes": settings.worker.max_result_bytes,
            "log_max_bytes": settings.runs.log_max_bytes,
            "max_frame": 1 << 16,
        }

    def _identity(self) -> dict[str, Any]:
        return {"worker": self.name, "queues": list(self.queues), "concurrency": self.concurrency}
