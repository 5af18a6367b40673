"""The scheduler daemon: a heartbeat pass at every flow's slot, within a second of it, and at least
every `--interval` seconds; alerts delivered as soon as they are due.

It sleeps until the earliest of: the next `next_run_at` of an enabled flow, its next periodic
pass, the next alert delivery, and a stop. `flows add/set/enable/import` wake it through the
same path as workers (NOTIFY on Postgres, a datagram beside the SQLite file), so a changed
schedule is seen at once; without a wake-up path (`worker.notify = false`, as behind PgBouncer)
it reads the earliest `next_run_at` again every second. Schedules themselves are APScheduler
triggers (`dfjob.schedule`); this loop only decides when to look, which a fixed-interval job
runner cannot do. Several schedulers at once are safe: a heartbeat cannot enqueue a slot twice,
and prune and alert deliveries are claimed in the database.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from datetime import UTC, datetime

from dfjob import alerts, clock, events, wakeup
from dfjob.config import Settings
from dfjob.db import describe_error, is_connection_error, reset_connection
from dfjob.heartbeat import heartbeat
from dfjob.models import from_db_time
from dfjob.sql import execute

# Without a wake-up path, schedule changes are looked for this often.
REREAD_SECONDS = 1.0
# After a failed pass (the database is down), wait this long at most before the next try.
RETRY_SECONDS = 5.0


def earliest_due() -> datetime | None:
    """The earliest `next_run_at` of an enabled flow (one index probe, `flows_due`)."""
    row = execute("SELECT MIN(next_run_at) FROM dfjob.data_flows WHERE enabled").fetchone()
    return from_db_time(row[0]) if row else None


class Scheduler:
    def __init__(self, settings: Settings, interval: float) -> None:
        self.settings = settings
        self.interval = interval
        self.stopping = False
        # A stop request writes here: the loop's wait ends at once.
        self._wake_fd, self._poke_fd = os.pipe()
        for fd in (self._wake_fd, self._poke_fd):
            os.set_blocking(fd, False)
        self._listener: wakeup.Listener | None = None
        self._said_no_wakeups = False

    def request_stop(self) -> None:
        """Safe in a signal handler: sets a flag and writes a byte."""
        self.stopping = True
        with contextlib.suppress(OSError):
            os.write(self._poke_fd, b"\0")

    def beat(self) -> bool:
        """One heartbeat pass (with its prune and alerts); an outage is logged, not raised."""
        try:
            heartbeat(self.settings)
            return True
        except Exception as exc:  # noqa: BLE001 (a failed pass must not stop the daemon)
            if not is_connection_error(exc):
                events.log.exception("heartbeat.failed", error=describe_error(exc))
                return False
            events.emit(events.DB_UNAVAILABLE, error=describe_error(exc), retry_in=min(self.interval, RETRY_SECONDS))
            self._close_listener()
            reset_connection()
            return False

    def _next_times(self) -> tuple[datetime | None, datetime | None]:
        """(earliest due schedule, next alert delivery); (None, None) when the database is down."""
        try:
            return earliest_due(), alerts.next_delivery_at(self.settings)
        except Exception as exc:  # noqa: BLE001
            if is_connection_error(exc):
                reset_connection()
            return None, None

    def run(self) -> None:
        """Run until `request_stop`; the pass in progress finishes first."""
        identity = {"interval": self.interval}
        events.log.info("scheduler.started", **identity)
        next_pass = time.monotonic()  # the first pass runs at once
        # A slot or delivery at or before these was already acted on: looking again would spin
        # (a due flow a pass cannot enqueue, say its queue is not in queues.allowed).
        passed = delivered = datetime.min.replace(tzinfo=UTC)
        try:
            while not self.stopping:
                if time.monotonic() >= next_pass:
                    passed = clock.now()
                    ok = self.beat()
                    next_pass = time.monotonic() + (self.interval if ok else min(self.interval, RETRY_SECONDS))
                    continue
                if self._listener is None:
                    self._open_listener()
                due, delivery = self._next_times()
                due = due if due is not None and due > passed else None
                delivery = delivery if delivery is not None and delivery > delivered else None
                now = clock.now()
                if due is not None and due <= now:
                    next_pass = time.monotonic()  # a slot has come: a pass now, then the interval
                    continue
                if delivery is not None and delivery <= now:
                    delivered = now
                    self._deliver()
                    continue
                timeout = next_pass - time.monotonic()
                for moment in (due, delivery):
                    if moment is not None:
                        timeout = min(timeout, (moment - now).total_seconds())
                if self._listener is None:
                    timeout = min(timeout, REREAD_SECONDS)
                self._wait(max(0.0, timeout))
        finally:
            self._close_listener()
            events.log.info("scheduler.stopped", **identity)

    def _deliver(self) -> None:
        try:
            alerts.deliver(self.settings)
        except Exception as exc:  # noqa: BLE001 (the next pass tries again)
            events.log.warning("alerts.failed", error=describe_error(exc))
            if is_connection_error(exc):
                reset_connection()

    def _wait(self, timeout: float) -> None:
        """Until `timeout` passes, a wake-up arrives or a stop is asked."""
        watched = [self._wake_fd] + ([self._listener.fileno()] if self._listener is not None else [])
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except (OSError, ValueError):
            self._close_listener()
            return
        if self._wake_fd in ready:
            with contextlib.suppress(OSError):
                while os.read(self._wake_fd, 512):
                    pass
        if self._listener is not None and self._listener.fileno() in ready:
            try:
                self._listener.drain()
            except Exception:  # noqa: BLE001 (a broken listener is reopened on the next turn)
                self._close_listener()

    def _open_listener(self) -> None:
        try:
            self._listener = wakeup.open_listener(self.settings.worker.notify)
        except Exception as exc:  # noqa: BLE001 (without it the scheduler re-reads every second)
            if not self._said_no_wakeups:
                self._said_no_wakeups = True
                events.log.warning("scheduler.no_wakeups", error=describe_error(exc))
            self._listener = None

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
            self._listener = None
