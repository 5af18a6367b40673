"""The bench runner: the command line, the run over every backend and scenario, and the report.

Scenarios are plain functions registered in `benchmarks.scenarios`; each gets the `Bench` (sizes in
`bench.args`, fresh databases from `bench.fresh`, results through `bench.add`) and one server, and
adds its figures. A scenario that raises is recorded as an error and the run goes on with the next.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from benchmarks.common import BACKENDS, BenchError, progress
from benchmarks.procs import stop_all
from benchmarks.results import Figure, Goal, render_baselines, render_table
from benchmarks.servers import Env, PostgresServer, Server, SQLiteServer, fresh_env

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

USAGE = """\
dfjob benchmark: every dfjob figure next to a hand-written baseline measured in the same run.

    scripts/bench [--quick] [--json FILE] [--backend sqlite|postgres|all] [--postgres-url URL]
                  [--concurrency C] [--jobs N] [--workers 1,2,4] [--scenarios drain,latency,...]

It sets up its own databases: SQLite files in a temporary folder, and on the Postgres server of
`--postgres-url` (default $DFJOB_TEST_POSTGRES_URL, else postgresql://postgres@127.0.0.1:5432/test)
databases named `dfjob_bench_<pid>_<n>`, each dropped as soon as its measurement is done. An
unreachable Postgres skips the Postgres scenarios with one line saying why."""

ABOUT_BASELINES = """\
The baselines are deliberately minimal queues on dfjob's own tables: no run rows, no events, no
logging, no user code in child processes. They show the floor the database allows, not a
competitor. This is a benchmark, not a test: its figures depend on the machine and on whatever
else runs on it, and `--quick` sizes are only a smoke test."""


@dataclass(frozen=True)
class Scenario:
    """One scenario: `measure` adds its figures for one server; its docstring is the scenario's --help entry.

    `keys` lists the figure keys a full run of it produces per backend, in table order (the JSON
    document's "keys"); `goals` are what its figures should reach.
    """

    measure: Callable[[Bench, Server], None]
    keys: Callable[[argparse.Namespace], list[str]]
    goals: tuple[Goal, ...] = ()

    def goal(self, backend: str, key: str) -> Goal | None:
        """The goal for one figure: the backend's own, else the one for every backend ("*")."""
        for wanted in (backend, "*"):
            for goal in self.goals:
                if goal.key == key and goal.backend == wanted:
                    return goal
        return None

    def describe(self) -> str:
        return inspect.cleandoc(self.measure.__doc__ or "")


def description(scenarios: dict[str, Scenario]) -> str:
    """The --help text: what the bench does, then each scenario's docstring, numbered."""
    lines = ["Scenarios (each on SQLite and on Postgres):"]
    for number, (name, scenario) in enumerate(scenarios.items(), start=1):
        first, *rest = scenario.describe().splitlines() or [""]
        prefix = f"{number}. {name:<10}"
        lines.append(prefix + first)
        lines += [(" " * len(prefix) + line).rstrip() for line in rest]
    return "\n\n".join([USAGE, "\n".join(lines), ABOUT_BASELINES])


class Bench:
    """One bench run: its arguments, its temporary folder, and the figures, skips and errors so far."""

    def __init__(self, args: argparse.Namespace, work: Path, scenarios: dict[str, Scenario]) -> None:
        self.args = args
        self.work = work
        self.scenarios = scenarios
        self.count = 0
        self.figures: dict[str, dict[str, Figure]] = {}
        self.skipped: dict[str, str] = {}
        self.errors: list[str] = []
        # (scenario, baseline name) -> the backends it was measured on, in the order first seen.
        self.baselines: dict[tuple[str, str], list[str]] = {}
        self._running = ""

    @contextlib.contextmanager
    def fresh(self, server: Server, label: str) -> Iterator[Env]:
        """A new database on `server`, dropped (and its processes stopped) when the block ends."""
        self.count += 1
        with fresh_env(server, self.work / f"{server.name}-{self.count:03d}-{label}") as env:
            yield env

    def add(self, backend: str, figure: Figure) -> None:
        """Record a figure of the running scenario, judged against its goal if it has one."""
        goal = self.scenarios[self._running].goal(backend, figure.key)
        if goal is not None:
            figure.goal = goal.text
            figure.met = goal.check(figure) if goal.judged(self.args) else None
        self.figures.setdefault(backend, {})[figure.key] = figure
        users = self.baselines.setdefault((self._running, figure.baseline_name), [])
        if backend not in users:
            users.append(backend)

    def run(self, server: Server, name: str) -> None:
        """One scenario on one server; a failure becomes an error line, not the end of the run."""
        began = time.monotonic()
        self._running = name
        try:
            self.scenarios[name].measure(self, server)
            progress(server.name, f"{name} done in {time.monotonic() - began:.1f} s")
        except Exception as exc:  # noqa: BLE001 (one failed scenario must not lose the others)
            text = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
            message = f"{name} failed: {text}"
            self.errors.append(f"[{server.name}] {message}")
            progress(server.name, message)
        finally:
            self._running = ""

    def all_keys(self) -> list[str]:
        """Every figure key a full run produces per backend, in table order."""
        return [key for scenario in self.scenarios.values() for key in scenario.keys(self.args)]


LOG_HANDLE: IO[str] | None = None


def quiet_dfjob_logs(path: Path) -> None:
    """dfjob's events in this process (trigger, heartbeat) go to a file, still rendered as JSON."""
    global LOG_HANDLE
    from dfjob import events

    LOG_HANDLE = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole run)
    saved = sys.stderr
    sys.stderr = LOG_HANDLE
    try:
        events.configure_logging("json", "info")
    finally:
        sys.stderr = saved


def parse_args(argv: Sequence[str], scenarios: dict[str, Scenario]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=description(scenarios), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="every scenario at a tiny size (a smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "all"), default="all")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("DFJOB_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL,
        help="server to create the dfjob_bench_* databases on (default $DFJOB_TEST_POSTGRES_URL or %(default)s)",
    )
    parser.add_argument("--concurrency", type=int, help="dfjob worker --concurrency (default 8; --quick 2)")
    parser.add_argument("--jobs", type=int, help="jobs per drain (default 5000; --quick 100)")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts for the drain (default 1,2,4)")
    parser.add_argument("--triggers", type=int, help="latency samples (default 100; --quick 20)")
    parser.add_argument("--heartbeat-flows", type=int, help="due flows (default 10000; --quick 500)")
    parser.add_argument("--history-rows", type=int, help="finished jobs and runs (default 1000000; --quick 20000)")
    parser.add_argument(
        "--operator-flows", type=int, help="flows behind the operator's queries (default 10000; --quick 200)"
    )
    parser.add_argument("--idle-seconds", type=float, help="idle measurement (default 10; --quick 2)")
    parser.add_argument("--scenarios", default=",".join(scenarios), help="subset to run (default all)")
    parser.add_argument(
        "--profile-workers",
        metavar="DIR",
        help="run the drain's dfjob workers under cProfile, one .prof per process in DIR (slows them down)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.concurrency = args.concurrency or (2 if quick else 8)
    args.jobs = args.jobs or (100 if quick else 5000)
    args.triggers = args.triggers or (20 if quick else 100)
    args.heartbeat_flows = args.heartbeat_flows or (500 if quick else 10_000)
    args.history_rows = args.history_rows or (20_000 if quick else 1_000_000)
    args.operator_flows = args.operator_flows or (200 if quick else 10_000)
    args.idle_seconds = args.idle_seconds or (2.0 if quick else 10.0)
    args.workers = [int(item) for item in args.workers.split(",") if item.strip()]
    args.scenarios = [item.strip() for item in args.scenarios.split(",") if item.strip()]
    unknown = set(args.scenarios) - set(scenarios)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if not 1 <= args.concurrency <= 256 or not args.workers or min(args.workers) < 1 or args.jobs < 1:
        parser.error("--concurrency, --workers and --jobs must be positive")
    return args


def connect_servers(args: argparse.Namespace, bench: Bench, work: Path) -> list[Server]:
    """The servers of `--backend`; an unreachable Postgres is recorded as skipped, with the reason."""
    from dfjob.passwords import redact_url

    servers: list[Server] = []
    wanted = BACKENDS if args.backend == "all" else (args.backend,)
    if "sqlite" in wanted:
        servers.append(SQLiteServer(work))
    if "postgres" in wanted:
        postgres = PostgresServer(args.postgres_url)
        try:
            postgres.check()
            servers.append(postgres)
        except Exception as exc:  # noqa: BLE001 (any failure to reach the server means: skip it)
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            bench.skipped["postgres"] = f"cannot connect to {redact_url(args.postgres_url)}: {reason}"
            print(f"postgres: skipped, {bench.skipped['postgres']}", flush=True)
    return servers


def run(args: argparse.Namespace, scenarios: dict[str, Scenario]) -> int:
    began = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dfjob-bench-") as temp:
        work = Path(temp)
        quiet_dfjob_logs(work / "bench-process.log")
        bench = Bench(args, work, scenarios)
        servers = connect_servers(args, bench, work)
        mode = "quick (smoke-test sizes; goals marked '-' need full size)" if args.quick else "full"
        print(
            f"dfjob bench, {mode}: {len(os.sched_getaffinity(0))} CPUs, load average {load_before[0]:.2f},"
            f" jobs per drain {args.jobs:,}, dfjob worker --concurrency {args.concurrency},"
            f" worker processes {','.join(map(str, args.workers))}",
            flush=True,
        )
        for server in servers:
            print(f"  {server.name}: {server.describe()}", flush=True)
        for server in servers:
            for name in args.scenarios:
                bench.run(server, name)
    seconds = time.monotonic() - began
    print()
    print(render_table(bench.figures, bench.skipped))
    print()
    print("ratio = dfjob / baseline (higher is better for jobs/s, lower for ms, s, % CPU and MB).")
    print(render_baselines(bench.baselines))
    print(
        f"Took {seconds:.0f} s; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after."
        " Other processes on this machine make these figures noisy."
    )
    for error in bench.errors:
        print(f"ERROR {error}")
    if args.json:
        document = {
            "meta": {
                "quick": args.quick,
                "pid": os.getpid(),
                "jobs": args.jobs,
                "concurrency": args.concurrency,
                "workers": args.workers,
                "triggers": args.triggers,
                "heartbeat_flows": args.heartbeat_flows,
                "history_rows": args.history_rows,
                "operator_flows": args.operator_flows,
                "idle_seconds": args.idle_seconds,
                "cpus": len(os.sched_getaffinity(0)),
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
                "postgres": next((s.version for s in servers if isinstance(s, PostgresServer)), None),
                "load_average_before": load_before[0],
                "seconds": round(seconds, 1),
            },
            "skipped": bench.skipped,
            "errors": bench.errors,
            "keys": bench.all_keys(),
            "figures": {
                backend: {key: figure.as_dict() for key, figure in figures.items()}
                for backend, figures in bench.figures.items()
            },
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 1 if bench.errors else 0


def main(argv: Sequence[str], scenarios: dict[str, Scenario]) -> int:
    args = parse_args(argv, scenarios)
    os.environ.pop("DFJOB_DATABASE_URL", None)
    os.environ.pop("DFJOB_CONFIG", None)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run(args, scenarios)
    finally:
        stop_all(grace=5)
