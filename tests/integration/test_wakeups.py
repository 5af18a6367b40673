"""Wake-ups are coalesced: a flood of NOTIFYs (Postgres) or datagrams (SQLite) makes an idle
worker claim at most about 100 times a second, and the first claim after a quiet spell is not
delayed."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from dfjob import wakeup
from dfjob.config import Settings, WorkerSettings
from dfjob.db import close_database, is_postgres
from dfjob.models import Job
from dfjob.registry import FlowSpec, add_flow
from dfjob.trigger import trigger_run
from dfjob.worker import MIN_IDLE_CLAIM_INTERVAL, Worker

FLOOD = 10_000


def _flood(settings: Settings, stop: threading.Event) -> None:
    """10,000 wake-ups in about a second, from another connection or process's point of view."""
    if is_postgres():
        import psycopg

        with psycopg.connect(settings.database.url, autocommit=True) as conn:
            for _ in range(100):
                conn.execute("SELECT pg_notify(%s, 'default') FROM generate_series(1, 100)", (wakeup.channel(),))
                if stop.wait(0.01):
                    return
        return
    for index in range(FLOOD):
        wakeup.wake_sqlite_workers()
        if index % 100 == 99 and stop.wait(0.01):
            return


def test_a_flood_of_wake_ups_is_coalesced(database: Settings) -> None:
    # A long poll interval: every claim the worker makes here is one a wake-up caused.
    settings = replace(database, worker=WorkerSettings(poll_interval=30, lease_seconds=60, shutdown_grace=5))
    flow = add_flow(settings, FlowSpec(name="real", class_path="sample_flows:Succeed"))
    worker = Worker(settings, name="flooded")
    worker.start()
    stop = threading.Event()
    seen: dict[str, float] = {}

    def flood_then_enqueue() -> None:
        before, started = worker.stats.claim_requests, time.monotonic()
        _flood(settings, stop)
        seen["claims"], seen["elapsed"] = worker.stats.claim_requests - before, time.monotonic() - started
        # After the flood, a real job: the worker must take it at its wake-up, not at a 30 s poll.
        try:
            seen["job_id"] = trigger_run(settings, flow).job_id
        finally:
            close_database()  # this thread's own connection

    try:
        worker.run_once()  # the runner is ready; the first claim found nothing
        flooder = threading.Thread(target=flood_then_enqueue)
        flooder.start()
        deadline = time.monotonic() + 20
        while "job_id" not in seen or Job.get_by_id(int(seen["job_id"])).status == "queued":
            assert time.monotonic() < deadline, "the job enqueued after the flood was not claimed"
            worker.run_once()
        flooder.join()
    finally:
        stop.set()
        worker.request_stop(force=True)
        worker.close()
    assert seen["claims"] <= seen["elapsed"] / MIN_IDLE_CLAIM_INTERVAL + 5, seen
