"""History: whether a large table of finished jobs and runs slows the drain down."""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

from benchmarks.common import NOOP, QUEUE, db_stamp, progress, utc_now
from benchmarks.drain import drain_once
from benchmarks.harness import Bench, Scenario
from benchmarks.results import Figure, Goal, at_full_size, ratio_at_least
from benchmarks.servers import Env, Server

WORKERS = 2


def add_history(env: Env, rows: int, flows: int) -> float:
    """`rows` finished jobs, each with its run, spread over the first `flows` data flows; then ANALYZE."""
    began = time.perf_counter()
    old = db_stamp(utc_now() - timedelta(days=1))
    with env.atomic():
        env.sql(
            "INSERT INTO jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues, run_at,"
            " params, created_at, finished_at)"
            f" SELECT 1 + (g - (g / {flows}) * {flows}), '{QUEUE}', 0, 'succeeded', 1, 3, 0, {env.ts}, '{{}}',"
            f" {env.ts}, {env.ts} FROM ({env.series(rows)}) AS s",
            (old, old, old),
        )
        env.sql(
            "INSERT INTO data_flow_runs (data_flow_id, job_id, attempt, status, queue, worker, created_at,"
            " started_at, ended_at, duration_ms) SELECT data_flow_id, id, 1, 'success', queue, 'history',"
            " created_at, created_at, finished_at, 1 FROM jobs WHERE status = 'succeeded'"
        )
    env.sql("ANALYZE")
    return time.perf_counter() - began


def claim_plan(env: Env) -> str:
    """How the database would run dfjob's claim statement right now, in one line."""
    from dfjob import sql
    from dfjob.store import postgres, sqlite

    now = db_stamp(utc_now())
    later = db_stamp(utc_now() + timedelta(seconds=60))
    if not env.postgres:
        claim = sqlite.CLAIM.format(queues="?")
        rows = sql.execute("EXPLAIN QUERY PLAN " + claim, ("bench", "token", later, QUEUE, now, 40, 8, 8)).fetchall()
        return "; ".join(str(row[-1]) for row in rows)
    params = ("token", [QUEUE], now, 40, 8, 8, "bench", "token", later, "bench", now)
    rows = sql.execute("EXPLAIN " + postgres.CLAIM, params).fetchall()
    return "; ".join(" ".join(str(row[0]).split()) for row in rows if "Scan" in row[0] or "Sort" in row[0])


def history(bench: Bench, server: Server) -> None:
    """the drain (W = 2) with H finished jobs and runs already in the tables (ANALYZEd)
    vs the same drain on empty tables, measured just before it.
    """
    jobs, rows = bench.args.jobs, bench.args.history_rows
    # The empty-table drain again, right before: start-up noise between runs is large on a small machine.
    with bench.fresh(server, "history-empty") as env:
        env.add_flows(jobs, NOOP)
        env.enqueue_all()
        empty, empty_details = drain_once(bench, env, "dfjob", WORKERS, jobs)
    progress(server.name, f"history: empty-table drain W={WORKERS} dfjob: {empty:,.0f} jobs/s")
    with bench.fresh(server, "history") as env:
        env.add_flows(jobs, NOOP)
        fill_seconds = add_history(env, rows, jobs)
        progress(server.name, f"history: {rows:,} finished jobs and runs written in {fill_seconds:.1f} s")
        env.enqueue_all()
        plan = claim_plan(env)
        rate, details = drain_once(bench, env, "dfjob", WORKERS, jobs)
    progress(server.name, f"history drain W={WORKERS} dfjob: {rate:,.0f} jobs/s")
    bench.add(
        server.name,
        Figure(
            key="history",
            label=f"drain W={WORKERS} with {rows:,} finished rows",
            unit="jobs/s",
            dfjob=rate,
            baseline=empty,
            baseline_name=f"dfjob's own drain W={WORKERS} on empty tables, measured just before",
            details={
                "history_rows": rows,
                "fill_seconds": round(fill_seconds, 1),
                "claim_plan": plan,
                "dfjob": details,
                "empty": empty_details,
            },
        ),
    )


def keys(args: argparse.Namespace) -> list[str]:
    return ["history"]


SCENARIO = Scenario(
    history,
    keys,
    goals=(Goal("history", "ratio >= 0.9x", ratio_at_least(0.9), judged=at_full_size),),
)
