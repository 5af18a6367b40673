"""Idle: what a worker with nothing to do costs, in CPU and memory."""

from __future__ import annotations

import argparse
import time

from benchmarks import baseline
from benchmarks.common import BenchError, progress
from benchmarks.harness import Bench, Scenario
from benchmarks.procs import CLK_TCK, children, cpu_ticks, descendants, dfjob_command, settle, start, status_kb, stop
from benchmarks.results import Figure, Goal, dfjob_at_most
from benchmarks.servers import Server


def idle(bench: Bench, server: Server) -> None:
    """a `dfjob worker --concurrency C` with nothing to do: CPU share (utime+stime of the
    supervisor, its runner template and its runners, % of one core) and peak RSS (VmHWM of the
    supervisor; template and runners in the details). Baseline: a hand-written worker polling
    every 1 s.
    """
    seconds = bench.args.idle_seconds
    concurrency = bench.args.concurrency
    with bench.fresh(server, "idle") as env:
        env.close()
        worker = start(
            dfjob_command(env.config, "worker", "--concurrency", str(concurrency)),
            env.folder / "worker.log",
            "worker",
            env.folder,
        )
        spec = {"backend": env.backend, "target": env.raw_target, "mode": "poll", "poll": 1.0}
        raw = start(baseline.command(spec), env.folder / "raw.log", "baseline worker", env.folder)
        deadline = time.monotonic() + 60
        # The worker's runner template and the runners forked from it.
        while len(descendants(worker.pid)) < concurrency + 1 or "worker.started" not in worker.log_tail(50):
            if worker.popen.poll() is not None:
                raise BenchError(f"idle worker exited with {worker.popen.returncode}:\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"idle worker did not start within 60s:\n{worker.log_tail()}")
            time.sleep(0.05)
        [template] = children(worker.pid)
        runners = children(template)
        tree = [worker.pid, template, *runners]
        settle(tree)
        before = sum(cpu_ticks(pid) for pid in tree), cpu_ticks(raw.pid)
        began = time.monotonic()
        time.sleep(seconds)
        after = sum(cpu_ticks(pid) for pid in tree), cpu_ticks(raw.pid)
        wall = time.monotonic() - began
        supervisor_kb = status_kb(worker.pid, "VmHWM")
        runner_kb = [status_kb(pid, "VmHWM") for pid in runners]
        template_kb = status_kb(template, "VmHWM")
        raw_kb = status_kb(raw.pid, "VmHWM")
        code = stop(worker)
        stop(raw)
        if code != 0:
            raise BenchError(f"idle worker exited with {code} on SIGTERM:\n{worker.log_tail()}")
    cpu = (after[0] - before[0]) / CLK_TCK / wall * 100
    raw_cpu = (after[1] - before[1]) / CLK_TCK / wall * 100
    progress(server.name, f"idle dfjob {cpu:.2f} % CPU, {supervisor_kb / 1024:.1f} MB")
    baseline_name = "hand-written worker polling every 1 s (SELECT, then claim)"
    bench.add(
        server.name,
        Figure(
            key="idle_cpu",
            label=f"idle CPU over {seconds:g} s",
            unit="% CPU",
            dfjob=cpu,
            baseline=raw_cpu,
            baseline_name=baseline_name,
            details={"concurrency": concurrency, "seconds": round(wall, 2), "clock_ticks_per_second": CLK_TCK},
        ),
    )
    bench.add(
        server.name,
        Figure(
            key="idle_rss",
            label="idle peak RSS (supervisor)",
            unit="MB",
            dfjob=supervisor_kb / 1024,
            baseline=raw_kb / 1024,
            baseline_name=baseline_name,
            details={
                "runners": len(runner_kb),
                "template_peak_rss_mb": round(template_kb / 1024, 1),
                "runner_peak_rss_mb_max": round(max(runner_kb, default=0) / 1024, 1),
                "runner_peak_rss_mb_sum": round(sum(runner_kb) / 1024, 1),
            },
        ),
    )


def keys(args: argparse.Namespace) -> list[str]:
    return ["idle_cpu", "idle_rss"]


SCENARIO = Scenario(
    idle,
    keys,
    goals=(
        Goal("idle_cpu", "< 1 % CPU", dfjob_at_most(1.0, strict=True)),
        Goal("idle_rss", "< 60 MB", dfjob_at_most(60.0, strict=True)),
    ),
)
