"""The drain: how fast W worker processes empty a queue of N no-op jobs, against the baseline queue."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import baseline, costs
from benchmarks.common import NOOP, BenchError, as_utc, db_stamp, progress, utc_now
from benchmarks.harness import Bench, Scenario
from benchmarks.procs import dfjob_command, finish_all, start
from benchmarks.results import Figure, Goal, at_full_size, ratio_at_least
from benchmarks.servers import Env, Server

KINDS = (("raw1", "raw 1/claim"), ("raw10", "raw 10/claim"))


def drain_once(
    bench: Bench, env: Env, kind: str, workers: int, jobs: int, concurrency: int | None = None
) -> tuple[float, dict[str, Any]]:
    """Start `workers` processes of `kind` (dfjob, raw1, raw10) on the queued jobs; jobs/s until the last.
    The details say what each job cost: CPU of the workers (and of the database server, when it
    runs here) and transactions."""
    concurrency = concurrency or bench.args.concurrency
    before = costs.snapshot(env)
    env.close()  # this process holds no connection while they run
    began = utc_now()
    procs = []
    for index in range(workers):
        log = env.folder / f"{kind}-{index}.log"
        if kind == "dfjob":
            profile = None
            if bench.args.profile_workers:
                profile_dir = Path(bench.args.profile_workers)
                profile_dir.mkdir(parents=True, exist_ok=True)
                profile = profile_dir / f"{env.backend}-{env.folder.name}-w{index}.prof"
            command = dfjob_command(env.config, "worker", "--burst", "--concurrency", str(concurrency), profile=profile)
        else:
            spec = {"backend": env.backend, "target": env.raw_target, "mode": "drain", "batch": int(kind[3:])}
            command = baseline.command(spec)
        procs.append(start(command, log, f"{kind} worker {index}", env.folder))
    finish_all(procs, timeout=120 + jobs / 20)
    env.open()
    count, last = env.sql(
        "SELECT COUNT(*), MAX(finished_at) FROM jobs WHERE status = 'succeeded' AND finished_at >= ?",
        (db_stamp(began),),
    ).fetchone()
    if count != jobs:
        left = env.sql("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        raise BenchError(f"{kind}: {count} of {jobs} jobs succeeded ({left})")
    seconds = (as_utc(last) - began).total_seconds()
    details: dict[str, Any] = {"jobs": jobs, "processes": workers, "seconds": round(seconds, 3)}
    details.update(costs.per_job(env, before, jobs, [env.folder / f"{kind}-{index}.log" for index in range(workers)]))
    if kind == "dfjob":
        runs, first = env.sql(
            "SELECT COUNT(*), MIN(started_at) FROM data_flow_runs WHERE status = 'success' AND started_at >= ?",
            (db_stamp(began),),
        ).fetchone()
        if runs != jobs:
            raise BenchError(f"dfjob: {runs} successful runs for {jobs} jobs")
        startup = (as_utc(first) - began).total_seconds()
        details["concurrency"] = concurrency
        details["startup_seconds"] = round(startup, 3)
        if seconds > startup:
            details["jobs_per_second_after_first_start"] = round(jobs / (seconds - startup), 1)
    return jobs / seconds, details


def drain(bench: Bench, server: Server) -> None:
    """N no-op flows, one queued job each; W `dfjob worker --burst --concurrency C` processes.
    jobs/s = N / (last job's finished_at - the moment the workers were started), so worker
    start-up (interpreter, imports, C runner processes) is included. Baselines: W processes
    of a hand-written loop claiming 1 (or 10) jobs per `UPDATE … RETURNING` transaction
    (SKIP LOCKED on Postgres, BEGIN IMMEDIATE on SQLite) and marking them done in a
    second transaction.
    """
    jobs = bench.args.jobs
    for workers in bench.args.workers:
        results: dict[str, tuple[float, dict[str, Any]]] = {}
        for kind in ("dfjob", *(kind for kind, _ in KINDS)):
            with bench.fresh(server, f"drain-{kind}-w{workers}") as env:
                env.add_flows(jobs, NOOP)
                env.enqueue_all()
                results[kind] = drain_once(bench, env, kind, workers, jobs)
            progress(server.name, f"drain W={workers} {kind}: {results[kind][0]:,.0f} jobs/s")
        for kind, name in KINDS:
            bench.add(
                server.name,
                Figure(
                    key=f"drain_w{workers}_vs_{kind}",
                    label=f"drain W={workers} vs {name}",
                    unit="jobs/s",
                    dfjob=results["dfjob"][0],
                    baseline=results[kind][0],
                    baseline_name=(
                        "as many hand-written processes as dfjob's, each claiming 1 (or 10) jobs per"
                        " UPDATE … RETURNING transaction, then marking them done in a second one"
                    ),
                    details={"dfjob": results["dfjob"][1], "baseline": results[kind][1]},
                ),
            )


def keys(args: argparse.Namespace) -> list[str]:
    return [f"drain_w{w}_vs_{kind}" for w in args.workers for kind, _ in KINDS]


SCENARIO = Scenario(
    drain,
    keys,
    goals=(
        Goal("drain_w2_vs_raw1", "ratio >= 3x", ratio_at_least(3.0), backend="postgres", judged=at_full_size),
        Goal("drain_w1_vs_raw1", "ratio >= 1x", ratio_at_least(1.0), backend="sqlite", judged=at_full_size),
    ),
)
