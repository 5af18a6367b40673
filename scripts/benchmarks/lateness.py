"""Lateness: how long after its slot a scheduled job is enqueued by `dfjob scheduler`."""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

from benchmarks import baseline
from benchmarks.common import NOOP, BenchError, as_utc, db_stamp, percentile, progress, utc_now
from benchmarks.harness import Bench, Scenario
from benchmarks.procs import dfjob_command, running_logs, start
from benchmarks.results import Figure, Goal, at_full_size, dfjob_at_most
from benchmarks.servers import Env, Server

EVERY_SECONDS = 1
# The scheduler's periodic pass, far longer than a slot: only its wake-ups can be on time.
INTERVAL = "60"


def _scheduled(env: Env) -> list[float]:
    """Seconds from each scheduled job's slot to its INSERT, oldest first."""
    rows = env.sql("SELECT scheduled_for, created_at FROM jobs WHERE triggered_by = 'schedule' ORDER BY id").fetchall()
    return [(as_utc(created) - as_utc(slot)).total_seconds() for slot, created in rows]


def sample_dfjob(env: Env, slots: int) -> list[float]:
    env.add_flows(1, NOOP, every_seconds=EVERY_SECONDS)
    first = utc_now() + timedelta(seconds=3)
    env.sql("UPDATE data_flows SET next_run_at = ?", (db_stamp(first),))
    start(dfjob_command(env.config, "worker"), env.folder / "worker.log", "worker", env.folder)
    start(dfjob_command(env.config, "scheduler", "--interval", INTERVAL), env.folder / "scheduler.log", "scheduler",
          env.folder)  # fmt: skip
    deadline = time.monotonic() + 3 + slots * EVERY_SECONDS * 2 + 30
    while len(lateness := _scheduled(env)) < slots:
        if time.monotonic() > deadline:
            raise BenchError(f"only {len(lateness)} of {slots} slots enqueued:\n{running_logs()}")
        time.sleep(0.2)
    return lateness[:slots]


def sample_baseline(env: Env, slots: int) -> list[float]:
    """A hand-written scheduler loop: sleep until the slot, INSERT the job, stamp it."""
    env.add_flows(slots, NOOP)  # one per slot: no worker runs these jobs
    raw = baseline.RawQueue(env.backend, env.raw_target)
    lateness = []
    try:
        slot = utc_now() + timedelta(seconds=1)
        for index in range(slots):
            time.sleep(max(0.0, (slot - utc_now()).total_seconds()))
            job_id = raw.enqueue(index + 1)
            created = env.sql("SELECT created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            lateness.append((as_utc(created) - slot).total_seconds())
            slot += timedelta(seconds=EVERY_SECONDS)
    finally:
        raw.close()
    return lateness


def lateness(bench: Bench, server: Server) -> None:
    """how late `dfjob scheduler --interval 60` enqueues each slot of a flow due every second, over
    N slots (created_at minus scheduled_for, with a worker running the jobs), p50 and p99
    vs a hand-written loop that sleeps until each slot and INSERTs the job.
    """
    slots = 10 if bench.args.quick else 100
    with bench.fresh(server, "lateness-dfjob") as env:
        samples = sample_dfjob(env, slots)
    with bench.fresh(server, "lateness-raw") as env:
        raw = sample_baseline(env, slots)
    for pct in (50, 99):
        value, floor = percentile(samples, pct) * 1000, percentile(raw, pct) * 1000
        progress(server.name, f"lateness p{pct}: {value:.1f} ms (hand-written loop {floor:.1f} ms)")
        bench.add(
            server.name,
            Figure(
                key=f"lateness_p{pct}",
                label=f"scheduler lateness p{pct} over {slots} slots",
                unit="ms",
                dfjob=value,
                baseline=floor,
                baseline_name="hand-written loop: sleep until the slot, INSERT the job",
                details={"slots": slots, "max_ms": round(max(samples) * 1000, 1), "interval": int(INTERVAL)},
            ),
        )


def keys(args: argparse.Namespace) -> list[str]:
    return ["lateness_p50", "lateness_p99"]


SCENARIO = Scenario(
    lateness,
    keys,
    goals=(Goal("lateness_p99", "< 1000 ms", dfjob_at_most(1000, strict=True), judged=at_full_size),),
)
