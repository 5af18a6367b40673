"""`dfjob serve` on a large history: p50 and p95 of every dashboard page and API call, over HTTP
from a client in this process, against the same requests on a database with one flow and one run."""

from __future__ import annotations

import argparse
import socket
import time
from typing import Any

import httpx

from benchmarks import operator
from benchmarks.common import BenchError, percentile, progress
from benchmarks.harness import Bench, Scenario
from benchmarks.procs import dfjob_command, start, stop
from benchmarks.results import Figure, Goal, at_full_size, dfjob_at_most
from benchmarks.servers import Env, Server

TOKEN = "bench-token-0123456789"
SAMPLES = 100
# name -> path; {flow}, {run} and {flow_name} are filled in from the database.
REQUESTS = {
    "overview": "/",
    "flows_page": "/flows",
    "flow_page": "/flows/{flow}",
    "run_page": "/runs/{run}",
    "jobs_page": "/jobs",
    "jobs_failed_page": "/jobs?status=failed",
    "api_status": "/api/status",
    "api_flows": "/api/flows?limit=50",
    "api_flow": "/api/flows/{flow_name}",
    "api_jobs": "/api/jobs",
    "api_jobs_failed": "/api/jobs?status=failed",
    "api_runs": "/api/runs",
    "api_runs_flow": "/api/runs?flow={flow}",
    "api_run": "/api/runs/{run}",
    "api_run_log": "/api/runs/{run}/log",
    "api_workers": "/api/workers",
    "metrics": "/metrics",
}
UNJUDGED = ("metrics",)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _targets(env: Env) -> dict[str, str]:
    flow_id, flow_name = env.sql("SELECT id, name FROM data_flows ORDER BY id DESC LIMIT 1").fetchone()
    logged = env.sql("SELECT MAX(run_id) FROM run_logs").fetchone()[0]
    run_id = logged if logged is not None else env.sql("SELECT MAX(id) FROM data_flow_runs").fetchone()[0]
    values = {"flow": str(flow_id), "flow_name": str(flow_name), "run": str(run_id)}
    return {name: path.format(**values) for name, path in REQUESTS.items()}


def measure(env: Env, samples: int) -> dict[str, tuple[float, float]]:
    """(p50, p95) in ms of each request against a real `dfjob serve` on `env`'s database."""
    with open(env.config, "a", encoding="utf-8") as config:
        config.write(f'\n[serve]\ntokens = ["{TOKEN}"]\n')
    port = _free_port()
    proc = start(dfjob_command(env.config, "serve", "--port", str(port)), env.folder / "serve.log", "serve", env.folder)
    base = f"http://127.0.0.1:{port}"
    found: dict[str, tuple[float, float]] = {}
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            _wait_until_healthy(client, proc)
            for name, path in _targets(env).items():
                found[name] = _time(client, path, samples if name not in UNJUDGED else max(5, samples // 10))
    finally:
        stop(proc)
    return found


def _wait_until_healthy(client: httpx.Client, proc: Any) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(f"dfjob serve exited {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise BenchError(f"dfjob serve did not answer /healthz within 60 s:\n{proc.log_tail()}")


def _time(client: httpx.Client, path: str, samples: int) -> tuple[float, float]:
    first = client.get(path)  # warm: imports, template compilation, cold caches
    if first.status_code != 200:
        raise BenchError(f"GET {path} answered {first.status_code}: {first.text[:300]}")
    took = []
    for _ in range(samples):
        began = time.perf_counter()
        client.get(path)
        took.append((time.perf_counter() - began) * 1000)
    return percentile(took, 50), percentile(took, 95)


def web(bench: Bench, server: Server) -> None:
    """p50/p95 of every dashboard page and API call over HTTP to a real `dfjob serve`, with H
    finished runs over 10,000 flows (goal: 100 ms p95 each, /metrics excepted), vs the same requests
    on a database with one flow and one run.
    """
    runs, flows = bench.args.history_rows, bench.args.operator_flows
    samples = SAMPLES if not bench.args.quick else 10
    with bench.fresh(server, "web-empty") as env:
        operator.fill(env, 1, 1)
        empty = measure(env, samples)
    with bench.fresh(server, "web") as env:
        fill_seconds = operator.fill(env, runs, flows)
        progress(server.name, f"web: {runs:,} runs over {flows:,} flows written in {fill_seconds:.1f} s")
        full = measure(env, samples)
    for name in REQUESTS:
        p50, p95 = full[name]
        progress(
            server.name, f"web {name}: p50 {p50:.1f} ms, p95 {p95:.1f} ms (empty database p95 {empty[name][1]:.1f} ms)"
        )
        bench.add(
            server.name,
            Figure(
                key=f"web_{name}",
                label=f"web {name} p95 with {runs:,} runs, {flows:,} flows",
                unit="ms",
                dfjob=p95,
                baseline=empty[name][1],
                baseline_name="the same request on a database with one flow and one run",
                details={"p50_ms": round(p50, 2), "samples": samples, "history_rows": runs, "flows": flows},
            ),
        )


def keys(args: argparse.Namespace) -> list[str]:
    return [f"web_{name}" for name in REQUESTS]


SCENARIO = Scenario(
    web,
    keys,
    goals=tuple(
        Goal(f"web_{name}", "p95 <= 100 ms", dfjob_at_most(100), judged=at_full_size)
        for name in REQUESTS
        if name not in UNJUDGED
    ),
)
