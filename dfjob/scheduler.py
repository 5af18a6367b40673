"""The scheduler daemon: the heartbeat every N seconds, and a daily prune, with APScheduler.

APScheduler runs the passes on its own thread (no overlapping passes, misfires coalesced); the
main thread only waits for a stop request. Several schedulers at once are safe: the heartbeat
itself cannot enqueue a flow twice. A database outage is logged (`db.unavailable`) and the next
pass simply tries again.
"""

from __future__ import annotations

import threading
from datetime import timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from dfjob import clock, events
from dfjob.config import Settings
from dfjob.db import describe_error, is_connection_error, reset_connection
from dfjob.heartbeat import heartbeat
from dfjob.schedule import parse_duration
from dfjob.store import store

PRUNE_EVERY_SECONDS = 86400


class Scheduler:
    def __init__(self, settings: Settings, interval: float) -> None:
        self.settings = settings
        self.interval = interval
        self._stop = threading.Event()

    def request_stop(self) -> None:
        """Safe in a signal handler: sets a flag."""
        self._stop.set()

    def beat(self) -> None:
        """One heartbeat pass; an outage is logged, not raised."""
        try:
            heartbeat(self.settings)
        except Exception as exc:  # noqa: BLE001 (a failed pass must not stop the daemon)
            if not is_connection_error(exc):
                events.log.exception("heartbeat.failed", error=describe_error(exc))
                return
            events.emit(events.DB_UNAVAILABLE, error=describe_error(exc), retry_in=self.interval)
            reset_connection()

    def prune(self) -> None:
        seconds = parse_duration(self.settings.retention.finished_jobs)
        try:
            jobs, runs = store().prune(clock.now() - timedelta(seconds=seconds))
            events.log.info("prune.finished", jobs=jobs, runs=runs)
        except Exception as exc:  # noqa: BLE001 (a failed prune must not stop the daemon)
            events.log.warning("prune.failed", error=describe_error(exc))
            reset_connection()

    def run(self) -> None:
        """Run until `request_stop`; the pass in progress finishes first."""
        scheduler = BackgroundScheduler(timezone="UTC")
        start = clock.now()
        scheduler.add_job(
            self.beat, "interval", seconds=self.interval, next_run_time=start,
            max_instances=1, coalesce=True, misfire_grace_time=None, id="heartbeat",
        )  # fmt: skip
        scheduler.add_job(
            self.prune, "interval", seconds=PRUNE_EVERY_SECONDS, next_run_time=start + timedelta(seconds=60),
            max_instances=1, coalesce=True, misfire_grace_time=None, id="prune",
        )  # fmt: skip
        identity = {"interval": self.interval}
        events.log.info("scheduler.started", **identity)
        scheduler.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            scheduler.shutdown(wait=True)
            events.log.info("scheduler.stopped", **identity)
