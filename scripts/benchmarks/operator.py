"""The operator's queries: `status`, `runs --flow X`, `jobs --status failed` and `runs logs` on a
large history, against the same queries on an empty database."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import NOOP, QUEUE, db_stamp, percentile, progress, utc_now
from benchmarks.harness import Bench, Scenario
from benchmarks.results import Figure, Goal, at_full_size, dfjob_at_most
from benchmarks.servers import Env, Server

# One run in this many failed; history spread over this many hours (30 days).
FAILED_EVERY = 100
SPREAD_HOURS = 720
# Runs with a log, and lines in each.
LOGGED_RUNS = 2000
LOG_LINES = 200
SAMPLES = 200
QUERIES = ("status", "runs_flow", "jobs_failed", "runs_logs")


def _mod(env: Env, value: str, divisor: int) -> str:
    """`value` modulo `divisor` in SQL (`%` is a placeholder character to psycopg)."""
    return f"mod({value}, {divisor})" if env.postgres else f"({value} % {divisor})"


def _hours_before(env: Env) -> str:
    """SQL for `? minus (g mod SPREAD_HOURS) hours`, g from the series."""
    if env.postgres:
        return f"CAST(? AS TIMESTAMP) - {_mod(env, 'g', SPREAD_HOURS)} * INTERVAL '1 hour'"
    return f"strftime('%Y-%m-%d %H:%M:%f', ?, '-' || {_mod(env, 'g', SPREAD_HOURS)} || ' hours')"


def fill(env: Env, runs: int, flows: int) -> float:
    """`flows` flows; `runs` finished jobs with one run each, one in FAILED_EVERY failed, spread over
    30 days; LOGGED_RUNS of those runs with LOG_LINES log lines each. Then (VACUUM) ANALYZE."""
    began = time.perf_counter()
    env.add_flows(flows, NOOP)
    now = db_stamp(utc_now())
    when = _hours_before(env)
    failed = f"{_mod(env, 'g', FAILED_EVERY)} = 0"
    status = f"CASE WHEN {failed} THEN 'failed' ELSE 'succeeded' END"
    with env.atomic():
        env.sql(
            "INSERT INTO jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues, run_at,"
            " params, created_at, finished_at, last_error, key, triggered_by, cancel_requested)"
            f" SELECT 1 + {_mod(env, 'g', flows)}, '{QUEUE}', 0, {status}, 1, 1, 0, {when}, '{{}}', {when}, {when},"
            f" CASE WHEN {failed} THEN 'ValueError: bad row' END, 'k' || g, 'trigger', FALSE"
            f" FROM ({env.series(runs)}) AS s",
            (now, now, now),
        )
        env.sql(
            "INSERT INTO data_flow_runs (data_flow_id, job_id, attempt, status, queue, worker, created_at,"
            " started_at, ended_at, duration_ms, error_message, log_bytes, log_dropped_bytes)"
            " SELECT data_flow_id, id, 1, CASE WHEN status = 'failed' THEN 'failed' ELSE 'success' END, queue,"
            " 'bench', created_at, created_at, finished_at, 12, last_error, 0, 0 FROM jobs ORDER BY id"
        )
        env.sql(
            "INSERT INTO run_logs (run_id, seq, at, stream, text, part)"
            f" SELECT r.id, s.g, r.started_at, 'stdout', 'processed batch ' || s.g || ' of the nightly load', 'head'"
            f" FROM data_flow_runs r, ({env.series(LOG_LINES)}) AS s"
            f" WHERE {_mod(env, 'r.id', max(1, runs // LOGGED_RUNS))} = 0"
        )
    # A month of history has been through autovacuum on a real server: its pages are all-visible,
    # so index-only scans read no heap. VACUUM ANALYZE gives the bulk-written copy the same state.
    env.sql("VACUUM ANALYZE" if env.postgres else "ANALYZE")
    return time.perf_counter() - began


def queries(env: Env) -> dict[str, Callable[[], Any]]:
    """Each query as the command runs it (text form: the page and its "showing 50 of N" count)."""
    from dfjob import history, overview, runlogs

    flow_id = int(env.sql("SELECT MAX(id) FROM data_flows").fetchone()[0])
    logged = env.sql("SELECT MAX(run_id) FROM run_logs").fetchone()[0]
    run_id = int(logged if logged is not None else env.sql("SELECT MAX(id) FROM data_flow_runs").fetchone()[0])

    def runs_flow() -> Any:
        page = history.list_runs(flow_id, limit=50)
        return page, history.count_runs(flow_id)

    def jobs_failed() -> Any:
        page = history.list_jobs(status=["failed"], limit=50)
        return page, history.count_jobs(status=["failed"])

    return {
        "status": overview.status,
        "runs_flow": runs_flow,
        "jobs_failed": jobs_failed,
        "runs_logs": lambda: runlogs.read(run_id),
    }


def p95_ms(call: Callable[[], Any], samples: int) -> float:
    call()  # warm: the first call pays for imports and cold caches
    took = []
    for _ in range(samples):
        began = time.perf_counter()
        call()
        took.append((time.perf_counter() - began) * 1000)
    return percentile(took, 95)


def measure(env: Env, samples: int) -> dict[str, float]:
    return {name: p95_ms(call, samples) for name, call in queries(env).items()}


def operator(bench: Bench, server: Server) -> None:
    """p95 of the queries behind `status`, `runs --flow X`, `jobs --status failed` and `runs logs`,
    in one process, with H finished runs over 10,000 flows (goal: 100 ms each),
    vs the same queries on a database with one flow and one run.
    """
    runs, flows = bench.args.history_rows, bench.args.operator_flows
    samples = SAMPLES if not bench.args.quick else 20
    with bench.fresh(server, "operator-empty") as env:
        fill(env, 1, 1)
        empty = measure(env, samples)
    with bench.fresh(server, "operator") as env:
        fill_seconds = fill(env, runs, flows)
        progress(server.name, f"operator: {runs:,} runs over {flows:,} flows written in {fill_seconds:.1f} s")
        full = measure(env, samples)
    for name in QUERIES:
        progress(server.name, f"operator {name}: p95 {full[name]:.1f} ms (empty database {empty[name]:.1f} ms)")
        bench.add(
            server.name,
            Figure(
                key=f"operator_{name}",
                label=f"{name.replace('_', ' ')} p95 with {runs:,} runs, {flows:,} flows",
                unit="ms",
                dfjob=full[name],
                baseline=empty[name],
                baseline_name="the same query on a database with one flow and one run",
                details={
                    "samples": samples,
                    "history_rows": runs,
                    "flows": flows,
                    "fill_seconds": round(fill_seconds, 1),
                },
            ),
        )


def keys(args: argparse.Namespace) -> list[str]:
    return [f"operator_{name}" for name in QUERIES]


SCENARIO = Scenario(
    operator,
    keys,
    goals=tuple(Goal(f"operator_{name}", "p95 <= 100 ms", dfjob_at_most(100), judged=at_full_size) for name in QUERIES),
)
