"""Throughput goals: drains at the shapes people run (2 processes × concurrency 4 or 1 on
Postgres, 1 × 1 on SQLite) against one job per claim, and how soon a worker starts its first job."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from benchmarks.common import NOOP, BenchError, progress
from benchmarks.drain import drain_once
from benchmarks.harness import Bench, Scenario
from benchmarks.procs import dfjob_command, finish_all, start
from benchmarks.results import Figure, Goal, at_full_size, dfjob_at_most, ratio_at_least
from benchmarks.servers import Env, Server

# (processes, concurrency) of each drain, on both databases; and the goals stated for some.
SHAPES = ((2, 4), (2, 1), (1, 1))
GOALS = (("postgres", 2, 4, 2.5), ("postgres", 2, 1, 1.5), ("sqlite", 1, 1, 1.5))
STARTUP_CONCURRENCY = 8
STARTUP_SAMPLES = 3


def _key(processes: int, concurrency: int) -> str:
    return f"throughput_{processes}x{concurrency}"


def _timestamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def startup_once(env: Env) -> tuple[float, float]:
    """One `dfjob worker --burst --concurrency 8` on one ready job: seconds from exec to the job's
    start, and from `worker.started` to it."""
    env.add_flows(1, NOOP)
    env.enqueue_all()
    env.close()
    log = env.folder / "startup.log"
    began = time.time()
    proc = start(
        dfjob_command(env.config, "worker", "--burst", "--concurrency", str(STARTUP_CONCURRENCY)), log, "worker",
        env.folder,
    )  # fmt: skip
    finish_all([proc], timeout=60)
    env.open()
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    started = [event for event in events if event.get("event") == "worker.started"]
    first = [event for event in events if event.get("event") == "job.started"]
    if not started or not first:
        raise BenchError(f"no worker.started / job.started in {log}")
    job_at = _timestamp(first[0])
    return job_at - began, job_at - _timestamp(started[0])


def throughput(bench: Bench, server: Server) -> None:
    """drains of N no-op jobs by 2 x 4, 2 x 1 and 1 x 1 (processes x concurrency), start-up
    included, vs as many hand-written processes claiming 1 job per transaction, with CPU and
    transactions per job in the details; and start-up at concurrency 8: exec to the first job
    started, and worker.started to it.
    """
    jobs = bench.args.jobs
    for processes, concurrency in SHAPES:
        results = {}
        for kind in ("dfjob", "raw1"):
            with bench.fresh(server, f"throughput-{kind}-{processes}x{concurrency}") as env:
                env.add_flows(jobs, NOOP)
                env.enqueue_all()
                results[kind] = drain_once(bench, env, kind, processes, jobs, concurrency)
        progress(server.name, f"throughput {processes}x{concurrency}: {results['dfjob'][0]:,.0f} jobs/s,"
                 f" one per claim {results['raw1'][0]:,.0f}")  # fmt: skip
        bench.add(
            server.name,
            Figure(
                key=_key(processes, concurrency),
                label=f"drain {processes} x concurrency {concurrency} vs raw 1/claim",
                unit="jobs/s",
                dfjob=results["dfjob"][0],
                baseline=results["raw1"][0],
                baseline_name="as many hand-written processes, each claiming 1 job per transaction",
                details={"dfjob": results["dfjob"][1], "baseline": results["raw1"][1]},
            ),
        )
    samples, raw = [], []
    for index in range(STARTUP_SAMPLES):
        with bench.fresh(server, f"throughput-startup-{index}") as env:
            samples.append(startup_once(env))
        with bench.fresh(server, f"throughput-startup-raw-{index}") as env:
            env.add_flows(1, NOOP)
            env.enqueue_all()
            raw.append(drain_once(bench, env, "raw1", 1, 1)[1]["seconds"])
    from_exec = sorted(sample[0] for sample in samples)[len(samples) // 2]
    from_started = sorted(sample[1] for sample in samples)[len(samples) // 2]
    floor = sorted(raw)[len(raw) // 2]
    progress(server.name, f"start-up at concurrency 8: {from_exec:.3f} s from exec, {from_started:.3f} s from"
             f" worker.started (a hand-written worker: {floor:.3f} s)")  # fmt: skip
    for key, label, value in (
        ("startup_exec", "exec -> first job started, concurrency 8 (median)", from_exec),
        ("startup_ready", "worker.started -> first job started, concurrency 8 (median)", from_started),
    ):
        bench.add(
            server.name,
            Figure(
                key=key, label=label, unit="s", dfjob=value, baseline=floor,
                baseline_name="a hand-written worker process: exec to its first job claimed and done",
                details={"samples": [[round(a, 3), round(b, 3)] for a, b in samples], "baseline_samples": raw},
            ),
        )  # fmt: skip


def keys(args: argparse.Namespace) -> list[str]:
    return [*(_key(p, c) for p, c in SHAPES), "startup_exec", "startup_ready"]


SCENARIO = Scenario(
    throughput,
    keys,
    goals=(
        *(
            Goal(_key(p, c), f"ratio >= {goal}x", ratio_at_least(goal), backend=backend, judged=at_full_size)
            for backend, p, c, goal in GOALS
        ),
        Goal("startup_exec", "<= 0.45 s", dfjob_at_most(0.45)),
        Goal("startup_ready", "<= 0.25 s", dfjob_at_most(0.25)),
    ),
)
