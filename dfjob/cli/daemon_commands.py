"""`dfjob worker`, `heartbeat` and `scheduler`: the processes that run and schedule jobs."""

from __future__ import annotations

import click

from dfjob.cli.app import cli, current_app, emit, json_option
from dfjob.config import check_queue_name
from dfjob.db import set_statement_limit
from dfjob.errors import DfjobError
from dfjob.heartbeat import heartbeat as run_heartbeat
from dfjob.signals import on_stop

# -- daemons -------------------------------------------------------------------------------------


@cli.command()
@click.option("--queue", "queues", multiple=True, help="A queue to serve (repeatable; default worker.queues).")
@click.option("--concurrency", type=int, help="Jobs run at once (default worker.concurrency).")
@click.option("--burst", is_flag=True, help="Exit 0 once no job is ready.")
@click.option("--max-jobs", type=int, help="Exit after this many jobs.")
def worker(queues: tuple[str, ...], concurrency: int | None, burst: bool, max_jobs: int | None) -> None:
    """Claim and run jobs (the daemon). SIGTERM/SIGINT stop it gracefully; a second one at once."""
    from dfjob.worker import Worker

    settings = current_app().settings
    for name in queues or settings.worker.queues:
        check_queue_name(name, settings.queues.allowed, "--queue" if queues else "worker.queues")
    if concurrency is not None and not 1 <= concurrency <= 256:
        raise DfjobError(f"--concurrency must be between 1 and 256, not {concurrency}")
    if max_jobs is not None and max_jobs < 1:
        raise DfjobError(f"--max-jobs must be at least 1, not {max_jobs}")
    # A dead network path must be noticed well within a lease (see `leases`).
    current_app().open(daemon=True, network_timeout=settings.worker.lease_seconds / 4)
    set_statement_limit(settings.worker.lease_seconds / 3)
    daemon = Worker(settings, queues or None, concurrency, max_jobs)
    with on_stop(lambda count: daemon.request_stop(force=count > 1)):
        daemon.run(burst=burst)


@cli.command()
@json_option
def heartbeat(as_json: bool) -> None:
    """One pass: enqueue every enabled data flow whose schedule is due (for cron)."""
    settings = current_app().open()
    result = run_heartbeat(settings)
    data = {"due": result.due, "enqueued": result.enqueued, "skipped": result.skipped}
    emit(as_json, data, lambda: f"{result.due} due, {result.enqueued} enqueued, {result.skipped} skipped")


@cli.command()
@click.option("--interval", type=float, default=60.0, show_default=True, help="Seconds between heartbeats.")
def scheduler(interval: float) -> None:
    """Run the heartbeat every --interval seconds (the daemon); prunes history daily."""
    from dfjob.scheduler import Scheduler

    if not 0.1 <= interval <= 86400:
        raise DfjobError(f"--interval must be between 0.1 and 86400 seconds, not {interval:g}")
    settings = current_app().open(daemon=True)
    daemon = Scheduler(settings, interval)
    with on_stop(lambda count: daemon.request_stop()):
        daemon.run()
