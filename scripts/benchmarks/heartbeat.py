"""Heartbeat: one pass of dfjob's scheduler step over many due flows, against one batched INSERT pass."""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.baseline import RawQueue
from benchmarks.common import NOOP, BenchError, db_stamp, progress, utc_now
from benchmarks.harness import Bench, Scenario
from benchmarks.results import Figure, Goal, dfjob_at_most
from benchmarks.servers import Server

# The size the goal is stated for.
GOAL_FLOWS = 10_000


def raw_enqueue_due(raw: RawQueue) -> int:
    """The hand-written heartbeat: the due flows' jobs in batched multi-row INSERTs, one transaction."""
    now = db_stamp(utc_now())
    created = 0
    with raw.transaction():
        lock = " FOR UPDATE SKIP LOCKED" if raw.postgres else ""
        due = raw.execute(
            f"SELECT id, queue, priority FROM data_flows WHERE enabled AND next_run_at <= ?{lock}", (now,)
        ).fetchall()
        for begin in range(0, len(due), 500):
            chunk = due[begin : begin + 500]
            params: list[Any] = []
            for flow_id, queue, priority in chunk:
                params += [flow_id, queue, priority, now, now]
            values = ", ".join("(?, ?, ?, 'queued', 0, 3, 0, ?, '{}', ?)" for _ in chunk)
            rows = raw.execute(
                "INSERT INTO jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues, run_at,"
                f" params, created_at) VALUES {values} ON CONFLICT DO NOTHING RETURNING id",
                params,
            ).fetchall()
            created += len(rows)
    return created


def heartbeat(bench: Bench, server: Server) -> None:
    """one `heartbeat(settings)` over F due flows vs a hand-written pass that selects the due
    flows and inserts their F jobs in batched multi-row INSERTs, in one transaction.
    """
    from dfjob.heartbeat import heartbeat as dfjob_heartbeat

    flows = bench.args.heartbeat_flows
    with bench.fresh(server, "heartbeat-dfjob") as env:
        env.add_flows(flows, NOOP, every_seconds=60, due=True)
        began = time.perf_counter()
        result = dfjob_heartbeat(env.settings)
        seconds = time.perf_counter() - began
        if result.enqueued != flows:
            raise BenchError(f"heartbeat enqueued {result.enqueued} of {flows} due flows")
    progress(server.name, f"heartbeat dfjob {seconds:.3f} s")
    with bench.fresh(server, "heartbeat-raw") as env:
        env.add_flows(flows, NOOP, every_seconds=60, due=True)
        env.close()
        raw = RawQueue(env.backend, env.raw_target)
        try:
            began = time.perf_counter()
            created = raw_enqueue_due(raw)
            raw_seconds = time.perf_counter() - began
        finally:
            raw.close()
        if created != flows:
            raise BenchError(f"raw heartbeat inserted {created} of {flows} jobs")
    progress(server.name, f"heartbeat baseline {raw_seconds:.3f} s")
    bench.add(
        server.name,
        Figure(
            key="heartbeat",
            label=f"heartbeat over {flows:,} due flows",
            unit="s",
            dfjob=seconds,
            baseline=raw_seconds,
            baseline_name="hand-written: SELECT due flows, INSERT jobs 500 rows per statement, one transaction",
            details={"flows": flows},
        ),
    )


def keys(args: argparse.Namespace) -> list[str]:
    return ["heartbeat"]


def at_goal_size(args: argparse.Namespace) -> bool:
    return not args.quick and args.heartbeat_flows == GOAL_FLOWS


SCENARIO = Scenario(
    heartbeat,
    keys,
    goals=(Goal("heartbeat", "<= 1 s at 10,000", dfjob_at_most(1.0), judged=at_goal_size),),
)
