"""`dfjob.Client`: what an application uses to enqueue and look up jobs, without the command line.

It reads the same configuration as the CLI (`Client(config=…, database_url=…)`, else
`$DFJOB_CONFIG` or the nearest `dfjob.toml`), checks requests with the same rules, and goes
through the same code as `dfjob trigger`; a refused request raises `DfjobError` with the message
the CLI prints. One Client may be shared by any number of threads: each thread uses a database
connection of its own. A process talks to one dfjob database at a time.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

from dfjob import dbclock, events, history, migrations, registry
from dfjob.config import Settings, load_settings, resolve_path
from dfjob.db import close_database, connect, is_connected_to
from dfjob.errors import DfjobError
from dfjob.flow import add_import_paths
from dfjob.store.rows import FINISHED, Enqueued, TriggeredBy
from dfjob.trigger import parse_run_at
from dfjob.trigger import request as request_trigger

WAIT_POLL_SECONDS = 0.2


class Client:
    """Enqueue data flows and look up their jobs and runs from Python."""

    def __init__(self, config: str | None = None, database_url: str | None = None) -> None:
        self.settings: Settings = load_settings(config, database_url)
        self._lock = threading.Lock()
        self._ready = False

    def _open(self) -> Settings:
        with self._lock:
            if not self._ready:
                settings = self.settings
                add_import_paths(tuple(resolve_path(settings, path) for path in settings.flows.paths))
                events.load_callbacks(settings)
                if not is_connected_to(settings.database.url, settings.base_dir, settings.database.schema):
                    connect(settings.database.url, settings.base_dir, settings.database.schema)
                where = settings.database.url.split("?", 1)[0]
                migrations.prepare(create=True, where=where)
                dbclock.sync()
                self._ready = True
        return self.settings

    def close(self) -> None:
        """Close the calling thread's database connection (a thread that is about to end)."""
        close_database()

    def trigger(
        self,
        flow: str | int,
        params: dict[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | str | None = None,
        key: str | None = None,
    ) -> Enqueued:
        """Enqueue a job for the data flow (id or name); returns `job_id`, `data_flow_id`, `queue`
        and `deduplicated` (an active job with the same key already stood for this request)."""
        when = _run_at(run_at)
        settings = self._open()
        enqueued, _ = request_trigger(
            settings, flow, params=params, queue_name=queue, priority=priority, run_at=when, key=key,
            triggered_by=TriggeredBy.API,
        )  # fmt: skip
        return enqueued

    def job(self, job_id: int) -> dict[str, Any]:
        """The job object, as `dfjob jobs show` prints it (with `runs`)."""
        self._open()
        return history.get_job(job_id, with_runs=True)

    def wait(self, job_id: int, timeout: float | None = None) -> dict[str, Any]:
        """The job object once the job has finished (succeeded, failed or cancelled); TimeoutError
        if it has not within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout} s")
            time.sleep(WAIT_POLL_SECONDS if deadline is None else min(WAIT_POLL_SECONDS, deadline - time.monotonic()))

    def runs(self, flow: str | int | None = None, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Run history, newest first, as `dfjob runs --json` prints it."""
        self._open()
        flow_id = None if flow is None else registry.get_flow(str(flow)).id
        return history.list_runs(flow_id, [status] if status else None, limit)

    def flows(self) -> list[dict[str, Any]]:
        """Every data flow, as `dfjob flows list --json` prints them."""
        settings = self._open()
        return registry.flows_to_dicts(registry.all_flows(), settings.retry.max_attempts)


def _run_at(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, str):
        return None if value is None else parse_run_at(value)
    if value.tzinfo is None:
        raise DfjobError("run_at must be an aware datetime (with a time zone) or an ISO 8601 string")
    return value
