"""scripts/bench runs end to end (figures are never asserted), and the claim stays on its index.

The bench smoke tests run `scripts/bench --quick` in a subprocess: on SQLite always, on Postgres when
DFJOB_TEST_POSTGRES_URL is set. The plan test fills a Postgres job table with a large finished
history and checks that the exact claim statement dfjob sends still reads the partial `jobs_claim`
index, in the planner's custom plan and in the generic plan a prepared statement ends up using.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dfjob import db
from dfjob.migrations import create_schema
from dfjob.sql import to_dialect
from dfjob.store.postgres import CLAIM, LOCK_LIMITS

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "scripts" / "bench"
POSTGRES_URL = os.environ.get("DFJOB_TEST_POSTGRES_URL", "")
WORKERS = (1, 2, 4)
WEB = (
    "overview", "flows_page", "flow_page", "run_page", "jobs_page", "jobs_failed_page", "api_status", "api_flows",
    "api_flow", "api_jobs", "api_jobs_failed", "api_runs", "api_runs_flow", "api_run", "api_run_log", "api_workers",
    "metrics",
)  # fmt: skip
KEYS = [
    *(f"drain_w{w}_vs_{kind}" for w in WORKERS for kind in ("raw1", "raw10")),
    *(f"throughput_{shape}" for shape in ("2x4", "2x1", "1x1")),
    "startup_exec",
    "startup_ready",
    "latency_p50",
    "latency_p95",
    "heartbeat",
    "lateness_p50",
    "lateness_p99",
    "history",
    *(f"operator_{query}" for query in ("status", "runs_flow", "jobs_failed", "runs_logs")),
    *(f"web_{name}" for name in WEB),
    "idle_cpu",
    "idle_rss",
]
LABELS = [
    *(f"drain W={w} vs raw {n}/claim" for w in WORKERS for n in (1, 10)),
    *(f"drain {p} x concurrency {c} vs raw 1/claim" for p, c in ((2, 4), (2, 1), (1, 1))),
    "exec -> first job started",
    "worker.started -> first job started",
    "latency p50 enqueue->in_progress",
    "latency p95 enqueue->in_progress",
    "heartbeat over",
    "scheduler lateness p50",
    "scheduler lateness p99",
    "drain W=2 with",
    *(f"{query} p95 with" for query in ("status", "runs flow", "jobs failed", "runs logs")),
    *(f"web {name} p95 with" for name in WEB),
    "idle CPU over",
    "idle peak RSS (supervisor)",
]


def _run_bench(tmp_path: Path, backend: str, *extra: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "bench.json"
    env = {key: value for key, value in os.environ.items() if key not in ("DFJOB_DATABASE_URL", "DFJOB_CONFIG")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        [str(BENCH), "--quick", "--backend", backend, "--json", str(out), *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    return done.stdout, json.loads(out.read_text())


def _assert_complete(stdout: str, document: dict[str, Any], backend: str) -> None:
    assert document["errors"] == []
    assert backend not in document["skipped"]
    assert document["keys"] == KEYS
    figures = document["figures"][backend]
    assert sorted(figures) == sorted(KEYS)
    for key in KEYS:
        figure = figures[key]
        assert isinstance(figure["dfjob"], float | int), (key, figure)
        assert isinstance(figure["baseline"], float | int), (key, figure)
        assert figure["dfjob"] >= 0, (key, figure)
        assert figure["baseline"] >= 0, (key, figure)
    table_lines = [line for line in stdout.splitlines() if f"| {backend} " in line]
    for label in LABELS:
        assert any(line.startswith(label) for line in table_lines), f"no table line for {label!r} on {backend}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_quick_runs_every_scenario_on_sqlite(tmp_path: Path) -> None:
    stdout, document = _run_bench(tmp_path, "sqlite")
    _assert_complete(stdout, document, "sqlite")
    assert "postgres" not in document["figures"]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_bench_quick_runs_every_scenario_on_postgres(tmp_path: Path, postgres_template: str) -> None:
    # postgres_template: skips without a server (fails when DFJOB_REQUIRE_POSTGRES=1).
    stdout, document = _run_bench(tmp_path, "postgres", "--postgres-url", POSTGRES_URL)
    _assert_complete(stdout, document, "postgres")
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"dfjob_bench_{document['meta']['pid']}_%",)
        ).fetchall()
    assert left == [], "the bench left its databases behind"


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", []):
        found += _nodes(child)
    return found


# Partial indexes that hold only active (queued or running) jobs: reading them costs the same with
# any history behind. With a handful of queued jobs the planner may pick either for the candidates.
ACTIVE_ONLY = {"jobs_claim", "jobs_active_key", "jobs_running", "jobs_running_limit", "jobs_queued_schedule"}


def _assert_claim_plan(plan: dict[str, Any], part: str | None) -> None:
    """The claim finds due jobs through partial indexes of active jobs (`jobs_claim`, or
    `jobs_active_key` when the planner finds it as cheap), never the primary key or an index over
    the history; nothing reads the whole job table. `part`: the CTE that picks the candidates
    (None: the whole statement does). The update then finds each picked row by primary key.
    """
    shown = json.dumps(plan, indent=1)
    nodes = _nodes(plan["Plan"])
    # The job table is never read whole (a small data_flows table may be: it holds no history).
    assert not [node for node in nodes if node["Node Type"] == "Seq Scan" and node["Relation Name"] == "jobs"], shown
    if part is not None:
        picked = [node for node in nodes if node.get("Subplan Name") == f"CTE {part}"]
        assert len(picked) == 1, shown
        nodes = _nodes(picked[0])
    job_indexes = {node["Index Name"] for node in nodes if node.get("Index Name", "").startswith("jobs")}
    assert job_indexes & {"jobs_claim", "jobs_active_key"}, shown
    if part is not None:
        assert job_indexes <= ACTIVE_ONLY, shown


@pytest.mark.slow
@pytest.mark.postgres
def test_claim_uses_the_partial_index_with_a_large_finished_history(postgres_url: str) -> None:
    database = db.connect(postgres_url, ".")
    create_schema()
    database.execute_sql(
        "INSERT INTO dfjob.data_flows (name, class_path, queue, priority, enabled, configuration, created_at,"
        " updated_at)"
        " SELECT 'flow-' || g, 'sample_flows:Succeed', 'default', 0, TRUE, '{}', now(), now()"
        " FROM generate_series(1, 50) AS t(g)"
    )
    database.execute_sql(
        "INSERT INTO dfjob.jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues, run_at,"
        " params,"
        " created_at, finished_at)"
        " SELECT 1 + (g - (g / 50) * 50), 'default', 0, 'succeeded', 1, 3, 0, now() - interval '1 day', '{}',"
        " now() - interval '1 day', now() - interval '1 day' FROM generate_series(1, 200000) AS t(g)"
    )
    database.execute_sql(
        "INSERT INTO dfjob.jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues, run_at,"
        " params,"
        " created_at) SELECT g, 'default', 0, 'queued', 0, 3, 0, now(), '{}', now() FROM generate_series(1, 5) AS t(g)"
    )
    database.execute_sql("ANALYZE")
    now, later = "2030-01-01 00:00:00.000000", "2030-01-01 00:01:00.000000"
    statements = [
        (LOCK_LIMITS, ["token", ["default"], now, 40], None),
        (CLAIM, ["token", ["default"], now, 40, 8, 8, "bench-worker", "token", later, "bench-worker", now], "cand"),
    ]
    for index, (statement, params, part) in enumerate(statements):
        sql = to_dialect(statement, "dfjob")
        # The custom plan: what EXPLAIN shows for these parameter values.
        rows = database.execute_sql("EXPLAIN (FORMAT JSON) " + sql, params).fetchall()
        _assert_claim_plan(rows[0][0][0], part)
        # The generic plan: psycopg prepares a statement run often, and Postgres may then plan it once for all values.
        numbered = sql
        for number in range(1, sql.count("%s") + 1):
            numbered = numbered.replace("%s", f"${number}", 1)
        database.execute_sql(f"PREPARE claim_plan_{index} AS {numbered}")
        database.execute_sql("SET plan_cache_mode = force_generic_plan")
        arguments = ", ".join(
            "'{default}'" if isinstance(value, list) else str(value) if isinstance(value, int) else f"'{value}'"
            for value in params
        )
        rows = database.execute_sql(f"EXPLAIN (FORMAT JSON) EXECUTE claim_plan_{index}({arguments})").fetchall()
        _assert_claim_plan(rows[0][0][0], part)
        database.execute_sql("RESET plan_cache_mode")
    database.close()
