"""Latency: how long a job waits between being enqueued and being started by an idle worker."""

from __future__ import annotations

import argparse
import json
import time

from benchmarks import baseline
from benchmarks.common import STAMP, BenchError, as_utc, percentile, progress
from benchmarks.harness import Bench, Scenario
from benchmarks.procs import dfjob_command, running_logs, start
from benchmarks.results import Figure, Goal, dfjob_at_most
from benchmarks.servers import Env, Server

WARMUP = 3
# Between two samples, so that the worker is back waiting for work when the next job comes.
IDLE_GAP = 0.03


def wait_succeeded(env: Env, job_id: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row = env.sql("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row and row[0] == "succeeded":
            return
        if time.monotonic() > deadline:
            raise BenchError(f"job {job_id} not done after {timeout:.0f}s (status {row}):\n{running_logs()}")
        time.sleep(0.001)


def sample_dfjob(env: Env, triggers: int) -> tuple[list[float], list[float]]:
    """started_at - created_at of each run, and (from the Stamp flow) when run() was entered, in ms."""
    from dfjob.models import DataFlow
    from dfjob.trigger import trigger_run

    env.add_flows(1, STAMP)
    flow = DataFlow.get_by_id(1)
    start(dfjob_command(env.config, "worker", "--concurrency", "1"), env.folder / "worker.log", "worker", env.folder)
    samples: list[float] = []
    entered: list[float] = []
    for index in range(WARMUP + triggers):
        time.sleep(IDLE_GAP)
        job_id = trigger_run(env.settings, flow).job_id
        wait_succeeded(env, job_id)
        created, started, result = env.sql(
            "SELECT jobs.created_at, data_flow_runs.started_at, data_flow_runs.result FROM jobs"
            " JOIN data_flow_runs ON data_flow_runs.job_id = jobs.id WHERE jobs.id = ?",
            (job_id,),
        ).fetchone()
        if index >= WARMUP:
            samples.append((as_utc(started) - as_utc(created)).total_seconds() * 1000)
            entered.append((json.loads(result)["entered"] - as_utc(created).timestamp()) * 1000)
    return samples, entered


def sample_baseline(env: Env, triggers: int) -> list[float]:
    """finished_at (the baseline worker's stamp) - created_at of each job, in ms."""
    env.add_flows(1, STAMP)
    mode = {"mode": "listen", "poll": 1.0} if env.postgres else {"mode": "poll", "poll": 0.001}
    spec = {"backend": env.backend, "target": env.raw_target, **mode}
    start(baseline.command(spec), env.folder / "raw.log", "baseline worker", env.folder)
    raw = baseline.RawQueue(env.backend, env.raw_target)
    samples: list[float] = []
    try:
        for index in range(WARMUP + triggers):
            time.sleep(IDLE_GAP)
            job_id = raw.enqueue(1)
            wait_succeeded(env, job_id)
            created, stamped = env.sql("SELECT created_at, finished_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if index >= WARMUP:
                samples.append((as_utc(stamped) - as_utc(created)).total_seconds() * 1000)
    finally:
        raw.close()
    return samples


def latency(bench: Bench, server: Server) -> None:
    """enqueue -> in_progress on an idle `dfjob worker` (trigger_run from this process; the
    run's started_at minus the job's created_at, both stamped by dfjob). Baseline on
    Postgres: a hand-written worker that LISTENs, and on a NOTIFY claims the job and stamps
    it; on SQLite (no notifications): a hand-written worker polling every 1 ms with a plain
    SELECT, then claiming. Both measure stamp - created_at the same way.
    """
    triggers = bench.args.triggers
    with bench.fresh(server, "latency-dfjob") as env:
        samples, entered = sample_dfjob(env, triggers)
    progress(server.name, f"latency dfjob p50 {percentile(samples, 50):.2f} ms")
    with bench.fresh(server, "latency-raw") as env:
        raw_samples = sample_baseline(env, triggers)
    progress(server.name, f"latency baseline p50 {percentile(raw_samples, 50):.2f} ms")
    baseline_name = (
        "hand-written worker: LISTEN/NOTIFY wake-up, claim, stamp"
        if server.name == "postgres"
        else "hand-written worker: SELECT poll every 1 ms, claim, stamp"
    )
    for pct in (50, 95):
        bench.add(
            server.name,
            Figure(
                key=f"latency_p{pct}",
                label=f"latency p{pct} enqueue->in_progress",
                unit="ms",
                dfjob=percentile(samples, pct),
                baseline=percentile(raw_samples, pct),
                baseline_name=baseline_name,
                details={
                    "triggers": triggers,
                    "dfjob_to_run_entered_ms": round(percentile(entered, pct), 3),
                    "dfjob_min_ms": round(min(samples), 3),
                    "dfjob_max_ms": round(max(samples), 3),
                    "baseline_min_ms": round(min(raw_samples), 3),
                    "baseline_max_ms": round(max(raw_samples), 3),
                },
            ),
        )


def keys(args: argparse.Namespace) -> list[str]:
    return ["latency_p50", "latency_p95"]


SCENARIO = Scenario(
    latency,
    keys,
    goals=(
        Goal("latency_p50", "<= 3 ms", dfjob_at_most(3.0), backend="postgres"),
        Goal("latency_p50", "<= 10 ms", dfjob_at_most(10.0), backend="sqlite"),
    ),
)
