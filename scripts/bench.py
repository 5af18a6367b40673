#!/usr/bin/env python3
"""dfjob benchmark: every dfjob figure next to a hand-written baseline measured in the same run.

    scripts/bench [--quick] [--json FILE] [--backend sqlite|postgres|all] [--postgres-url URL]
                  [--concurrency C] [--jobs N] [--workers 1,2,4] [--scenarios drain,latency,...]

It sets up its own databases: SQLite files in a temporary folder, and on the Postgres server of
`--postgres-url` (default $DFJOB_TEST_POSTGRES_URL, else postgresql://postgres@127.0.0.1:5432/test)
databases named `dfjob_bench_<pid>_<n>`, each dropped as soon as its measurement is done. An
unreachable Postgres skips the Postgres scenarios with one line saying why.

Scenarios (each on SQLite and on Postgres):
1. drain     N no-op flows, one queued job each; W `dfjob worker --burst --concurrency C` processes.
             jobs/s = N / (last job's finished_at - the moment the workers were started), so worker
             start-up (interpreter, imports, C runner processes) is included. Baselines: W processes
             of a hand-written loop claiming 1 (or 10) jobs per `UPDATE … RETURNING` transaction
             (SKIP LOCKED on Postgres, BEGIN IMMEDIATE on SQLite) and marking them done in a
             second transaction.
2. latency   enqueue -> in_progress on an idle `dfjob worker` (trigger_run from this process; the
             run's started_at minus the job's created_at, both stamped by dfjob). Baseline on
             Postgres: a hand-written worker that LISTENs, and on a NOTIFY claims the job and stamps
             it; on SQLite (no notifications): a hand-written worker polling every 1 ms with a plain
             SELECT, then claiming. Both measure stamp - created_at the same way.
3. heartbeat one `heartbeat(settings)` over F due flows vs a hand-written pass that selects the due
             flows and inserts their F jobs in batched multi-row INSERTs, in one transaction.
4. history   the drain (W = 2) with H finished jobs and runs already in the tables (ANALYZEd)
             vs the same drain on empty tables, measured just before it.
5. idle      a `dfjob worker --concurrency C` with nothing to do: CPU share (utime+stime of the
             supervisor and its runners, % of one core) and peak RSS (VmHWM of the supervisor;
             runners in the details). Baseline: a hand-written worker polling every 1 s.

The baselines are deliberately minimal queues on dfjob's own tables: no run rows, no events, no
logging, no user code in child processes. They show the floor the database allows, not a
competitor. This is a benchmark, not a test: its figures depend on the machine and on whatever
else runs on it, and `--quick` sizes are only a smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from dfjob.config import Settings

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
QUEUE = "default"
CHANNEL = "dfjob_bench_jobs"
TABLE_NAME = re.compile(r"\b(FROM|JOIN|UPDATE|INTO) +(jobs|data_flows|data_flow_runs)\b")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BACKENDS = ("sqlite", "postgres")
SCENARIOS = ("drain", "latency", "heartbeat", "history", "idle")
# Goals that only mean something at full size.
SIZE_DEPENDENT = ("drain", "heartbeat", "history")


def utc_now() -> datetime:
    return datetime.now(UTC)


def db_stamp(value: datetime) -> str:
    """The same stored form as dfjob's `to_db_time`: naive UTC text with microseconds."""
    return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def as_utc(value: Any) -> datetime:
    """A timestamp read back from either database, as an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime), value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# -- the hand-written baseline: plain psycopg / sqlite3 on dfjob's tables --------------------------


class RawQueue:
    """A minimal job queue on the `jobs` table, written the way one would by hand."""

    def __init__(self, backend: str, target: str, worker: str = "raw") -> None:
        self.postgres = backend == "postgres"
        self.worker = worker
        self.conn: Any
        if self.postgres:
            import psycopg

            self.conn = psycopg.connect(target, autocommit=True, options="-c search_path=dfjob")
        else:
            self.conn = sqlite3.connect(target, isolation_level=None, timeout=30)
            # The same pragmas as dfjob's SQLite connections.
            for pragma in ("journal_mode = wal", "synchronous = full", "foreign_keys = 1", "busy_timeout = 30000"):
                self.conn.execute(f"PRAGMA {pragma}")
        self._claims: dict[int, str] = {}

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s") if self.postgres else sql, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self.postgres:
            with self.conn.transaction():
                yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _claim_sql(self, batch: int) -> str:
        if batch not in self._claims:
            lock = " FOR UPDATE SKIP LOCKED" if self.postgres else ""
            pick = (
                "SELECT id FROM jobs WHERE status = 'queued' AND queue = ? AND run_at <= ?"
                f" ORDER BY priority, run_at, id LIMIT {batch}{lock}"
            )
            if batch == 1:
                where = f"id = ({pick})"
            elif self.postgres:
                where = f"id = ANY(ARRAY({pick}))"
            else:
                where = f"id IN ({pick})"
            self._claims[batch] = (
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = ?, lease_expires_at = ?"
                f" WHERE {where} RETURNING id"
            )
        return self._claims[batch]

    def step(self, batch: int) -> bool:
        """Claim up to `batch` jobs (one transaction), then mark them done (another); False when none."""
        now = utc_now()
        with self.transaction():
            rows = self.execute(
                self._claim_sql(batch), (self.worker, db_stamp(now + timedelta(seconds=60)), QUEUE, db_stamp(now))
            ).fetchall()
        if not rows:
            return False
        ids = [row[0] for row in rows]
        with self.transaction():
            self.execute(
                "UPDATE jobs SET status = 'succeeded', finished_at = ?, locked_by = NULL, lease_expires_at = NULL"
                f" WHERE id IN ({', '.join('?' * len(ids))})",
                (db_stamp(utc_now()), *ids),
            )
        return True

    def has_ready(self) -> bool:
        row = self.execute(
            "SELECT id FROM jobs WHERE status = 'queued' AND queue = ? AND run_at <= ? LIMIT 1",
            (QUEUE, db_stamp(utc_now())),
        ).fetchone()
        return row is not None

    def enqueue(self, data_flow_id: int) -> int:
        """One queued job (and a NOTIFY on Postgres), in one transaction."""
        now = db_stamp(utc_now())
        with self.transaction():
            rows = self.execute(
                "INSERT INTO jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues, run_at,"
                " params, created_at) VALUES (?, ?, 0, 'queued', 0, 3, 0, ?, '{}', ?) RETURNING id",
                (data_flow_id, QUEUE, now, now),
            ).fetchall()
            if self.postgres:
                self.execute("SELECT pg_notify(?, ?)", (CHANNEL, QUEUE))
        return int(rows[0][0])


def baseline_worker(spec: dict[str, Any]) -> int:
    """`bench.py --baseline-worker JSON`: one baseline process (drain, listen or poll)."""
    raw = RawQueue(spec["backend"], spec["target"], f"raw:{os.getpid()}")
    mode = spec["mode"]
    if mode == "drain":
        while raw.step(spec["batch"]):
            pass
        return 0
    if mode == "listen":
        import psycopg

        listener = psycopg.connect(spec["target"], autocommit=True)
        listener.execute(f"LISTEN {CHANNEL}")
        while True:
            while raw.step(1):
                pass
            for _ in listener.notifies(timeout=spec["poll"], stop_after=1):
                pass
    if mode == "poll":
        while True:
            if raw.has_ready():
                while raw.step(1):
                    pass
            time.sleep(spec["poll"])
    raise SystemExit(f"unknown baseline mode {mode!r}")


# -- processes -------------------------------------------------------------------------------------


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path
    name: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


RUNNING: list[Proc] = []


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("DFJOB_DATABASE_URL", "DFJOB_CONFIG"):
        env.pop(name, None)
    return env


def start(command: Sequence[str], log: Path, name: str, cwd: Path) -> Proc:
    with open(log, "ab") as handle:
        popen = subprocess.Popen(
            list(command), cwd=cwd, env=child_env(), stdin=subprocess.DEVNULL, stdout=handle, stderr=handle
        )
    proc = Proc(popen, log, name)
    RUNNING.append(proc)
    return proc


def finish_all(procs: Sequence[Proc], timeout: float) -> None:
    """Wait for processes that end by themselves; raise with their log if one fails or hangs."""
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            try:
                code = proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError(f"{proc.name} still running after {timeout:.0f}s:\n{proc.log_tail()}") from None
            if code != 0:
                raise BenchError(f"{proc.name} exited with status {code}:\n{proc.log_tail()}")
    finally:
        for proc in procs:
            stop(proc)


def stop(proc: Proc, grace: float = 30.0) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; returns the exit status."""
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
    if proc in RUNNING:
        RUNNING.remove(proc)
    return int(proc.popen.returncode)


def dfjob_command(config: Path, *args: str, profile: Path | None = None) -> list[str]:
    prefix = [sys.executable]
    if profile is not None:
        prefix += ["-m", "cProfile", "-o", str(profile)]
    return [*prefix, "-m", "dfjob", "--config", str(config), *args]


def baseline_command(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--baseline-worker", json.dumps(spec)]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(item) for item in (task / "children").read_text().split()]
    return found


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


# -- servers and fresh databases ---------------------------------------------------------------------


class BenchError(Exception):
    pass


class SQLiteServer:
    name = "sqlite"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.count = 0

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL), files under {self.base}"

    def create(self) -> str:
        self.count += 1
        folder = self.base / f"sqlite-{self.count}"
        folder.mkdir()
        return f"sqlite:///{folder / 'bench.db'}"

    def raw_target(self, url: str) -> str:
        return url[len("sqlite:///") :]

    def drop(self, url: str) -> None:
        shutil.rmtree(Path(self.raw_target(url)).parent, ignore_errors=True)


class PostgresServer:
    name = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self.count = 0
        self.version = ""

    def _admin(self, statement: str) -> Any:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5, options="-c search_path=dfjob") as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else None

    def check(self) -> None:
        self.version = str(self._admin("SELECT current_setting('server_version')")[0][0])

    def describe(self) -> str:
        from dfjob.db import redact_url

        return f"PostgreSQL {self.version} at {redact_url(self.url)}, databases dfjob_bench_{os.getpid()}_*"

    def create(self) -> str:
        self.count += 1
        name = f"dfjob_bench_{os.getpid()}_{self.count}"
        self._admin(f"CREATE DATABASE {name}")
        return urlunsplit(urlsplit(self.url)._replace(path="/" + name))

    def raw_target(self, url: str) -> str:
        return url

    def drop(self, url: str) -> None:
        """Drop a bench database; if the server is restarting, keep trying for a minute."""
        name = urlsplit(url).path.lstrip("/")
        assert name.startswith("dfjob_bench_"), name
        deadline = time.monotonic() + 60
        while True:
            try:
                self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                return
            except Exception as exc:  # noqa: BLE001 (retried, then reported)
                if time.monotonic() > deadline:
                    print(f"warning: could not drop database {name}: {exc}", file=sys.stderr, flush=True)
                    return
                time.sleep(1)


Server = SQLiteServer | PostgresServer


@dataclass
class Env:
    """One fresh database with a config file pointing at it; dfjob in this process is connected to it."""

    server: Server
    url: str
    folder: Path
    config: Path
    settings: Settings

    @property
    def backend(self) -> str:
        return self.server.name

    @property
    def postgres(self) -> bool:
        return self.server.name == "postgres"

    @property
    def raw_target(self) -> str:
        return self.server.raw_target(self.url)

    def open(self) -> None:
        from dfjob import db

        db.connect(self.url, str(self.folder))

    def close(self) -> None:
        from dfjob import db

        database = db.database_proxy.obj
        if database is not None and not database.is_closed():
            database.close()

    def sql(self, statement: str, params: Sequence[Any] = ()) -> Any:
        """One statement through dfjob's own connection; its tables are found in dfjob's schema."""
        from dfjob import sql

        return sql.execute(TABLE_NAME.sub(r"\1 dfjob.\2", statement), params)

    @property
    def ts(self) -> str:
        """A timestamp parameter inside INSERT … SELECT (Postgres cannot infer its type there)."""
        return "CAST(? AS TIMESTAMP)" if self.postgres else "?"

    def series(self, count: int) -> str:
        """A query yielding g = 1..count."""
        if self.postgres:
            return f"SELECT g FROM generate_series(1, {int(count)}) AS t(g)"
        return f"WITH RECURSIVE t(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM t WHERE g < {int(count)}) SELECT g FROM t"


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.count = 0
        self.figures: dict[str, dict[str, Figure]] = {}
        self.skipped: dict[str, str] = {}
        self.errors: list[str] = []

    # -- environments ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def fresh(self, server: Server, label: str) -> Iterator[Env]:
        from dfjob.config import load_settings
        from dfjob.migrations import create_schema

        self.count += 1
        folder = self.work / f"{server.name}-{self.count:03d}-{label}"
        folder.mkdir()
        url = server.create()
        config = folder / "dfjob.toml"
        config.write_text(
            f"[database]\nurl = {json.dumps(url)}\n\n[flows]\npaths = [{json.dumps(str(SCRIPTS))}]\n\n"
            '[log]\nformat = "json"\nlevel = "info"\n'
        )
        env = Env(server, url, folder, config, load_settings(str(config)))
        try:
            env.open()
            create_schema()
            yield env
        finally:
            for proc in list(RUNNING):
                stop(proc, grace=10)
            env.close()
            server.drop(url)

    def add_flows(
        self, env: Env, count: int, class_path: str, every_seconds: int | None = None, due: bool = False
    ) -> None:
        now = db_stamp(utc_now())
        next_run = env.ts if due else "NULL"
        params = [class_path, *([db_stamp(utc_now() - timedelta(hours=1))] if due else []), now, now]
        every = str(int(every_seconds)) if every_seconds else "NULL"
        with env_atomic(env):
            env.sql(
                "INSERT INTO data_flows (name, class_path, queue, priority, enabled, every_seconds, cron,"
                " configuration, max_attempts, timeout_seconds, last_run_at, last_run_status, next_run_at,"
                " created_at, updated_at)"
                f" SELECT 'bench-' || g, ?, '{QUEUE}', 0, TRUE, {every}, NULL, '{{}}', NULL, NULL, NULL, NULL,"
                f" {next_run}, {env.ts}, {env.ts} FROM ({env.series(count)}) AS s",
                params,
            )

    def enqueue_all(self, env: Env) -> None:
        """One queued job per data flow: the rows dfjob's enqueue writes, in bulk (not measured)."""
        now = db_stamp(utc_now())
        with env_atomic(env):
            env.sql(
                "INSERT INTO jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues, run_at,"
                f" params, created_at) SELECT id, queue, priority, 'queued', 0, 3, 0, {env.ts}, '{{}}', {env.ts}"
                " FROM data_flows ORDER BY id",
                (now, now),
            )
            env.sql("UPDATE data_flows SET last_run_at = ?, last_run_status = 'in_progress'", (now,))

    def add_history(self, env: Env, rows: int, flows: int) -> float:
        """`rows` finished jobs, each with its run, spread over the first `flows` data flows; then ANALYZE."""
        began = time.perf_counter()
        old = db_stamp(utc_now() - timedelta(days=1))
        with env_atomic(env):
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

    # -- measurements ---------------------------------------------------------------------------

    def drain_once(self, env: Env, kind: str, workers: int, jobs: int) -> tuple[float, dict[str, Any]]:
        """Start `workers` processes of `kind` (dfjob, raw1, raw10) on the queued jobs; jobs/s until the last."""
        env.close()  # this process holds no connection while they run
        concurrency = self.args.concurrency
        began = utc_now()
        procs = []
        for index in range(workers):
            log = env.folder / f"{kind}-{index}.log"
            if kind == "dfjob":
                profile = None
                if self.args.profile_workers:
                    profile_dir = Path(self.args.profile_workers)
                    profile_dir.mkdir(parents=True, exist_ok=True)
                    profile = profile_dir / f"{env.backend}-{env.folder.name}-w{index}.prof"
                command = dfjob_command(
                    env.config, "worker", "--burst", "--concurrency", str(concurrency), profile=profile
                )
            else:
                spec = {"backend": env.backend, "target": env.raw_target, "mode": "drain", "batch": int(kind[3:])}
                command = baseline_command(spec)
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

    def drain(self, server: Server) -> None:
        jobs = self.args.jobs
        for workers in self.args.workers:
            results: dict[str, tuple[float, dict[str, Any]]] = {}
            for kind in ("dfjob", "raw1", "raw10"):
                with self.fresh(server, f"drain-{kind}-w{workers}") as env:
                    self.add_flows(env, jobs, "bench_flows:Noop")
                    self.enqueue_all(env)
                    results[kind] = self.drain_once(env, kind, workers, jobs)
                progress(server.name, f"drain W={workers} {kind}: {results[kind][0]:,.0f} jobs/s")
            for kind, name in (("raw1", "raw 1/claim"), ("raw10", "raw 10/claim")):
                self.add(
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

    def latency(self, server: Server) -> None:
        triggers = self.args.triggers
        with self.fresh(server, "latency-dfjob") as env:
            samples, entered = self._latency_dfjob(env, triggers)
        progress(server.name, f"latency dfjob p50 {percentile(samples, 50):.2f} ms")
        with self.fresh(server, "latency-raw") as env:
            raw_samples = self._latency_raw(env, triggers)
        progress(server.name, f"latency baseline p50 {percentile(raw_samples, 50):.2f} ms")
        baseline_name = (
            "hand-written worker: LISTEN/NOTIFY wake-up, claim, stamp"
            if server.name == "postgres"
            else "hand-written worker: SELECT poll every 1 ms, claim, stamp"
        )
        for pct in (50, 95):
            self.add(
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

    def _latency_dfjob(self, env: Env, triggers: int) -> tuple[list[float], list[float]]:
        from dfjob.models import DataFlow
        from dfjob.trigger import trigger_run

        self.add_flows(env, 1, "bench_flows:Stamp")
        flow = DataFlow.get_by_id(1)
        start(
            dfjob_command(env.config, "worker", "--concurrency", "1"), env.folder / "worker.log", "worker", env.folder
        )
        samples: list[float] = []
        entered: list[float] = []
        for index in range(WARMUP + triggers):
            time.sleep(IDLE_GAP)  # the worker is back waiting for work
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

    def _latency_raw(self, env: Env, triggers: int) -> list[float]:
        self.add_flows(env, 1, "bench_flows:Stamp")
        mode = {"mode": "listen", "poll": 1.0} if env.postgres else {"mode": "poll", "poll": 0.001}
        spec = {"backend": env.backend, "target": env.raw_target, **mode}
        start(baseline_command(spec), env.folder / "raw.log", "baseline worker", env.folder)
        raw = RawQueue(env.backend, env.raw_target)
        samples: list[float] = []
        try:
            for index in range(WARMUP + triggers):
                time.sleep(IDLE_GAP)
                job_id = raw.enqueue(1)
                wait_succeeded(env, job_id)
                created, stamped = env.sql(
                    "SELECT created_at, finished_at FROM jobs WHERE id = ?", (job_id,)
                ).fetchone()
                if index >= WARMUP:
                    samples.append((as_utc(stamped) - as_utc(created)).total_seconds() * 1000)
        finally:
            raw.close()
        return samples

    def heartbeat(self, server: Server) -> None:
        from dfjob.heartbeat import heartbeat

        flows = self.args.heartbeat_flows
        with self.fresh(server, "heartbeat-dfjob") as env:
            self.add_flows(env, flows, "bench_flows:Noop", every_seconds=60, due=True)
            began = time.perf_counter()
            result = heartbeat(env.settings)
            seconds = time.perf_counter() - began
            if result.enqueued != flows:
                raise BenchError(f"heartbeat enqueued {result.enqueued} of {flows} due flows")
        progress(server.name, f"heartbeat dfjob {seconds:.3f} s")
        with self.fresh(server, "heartbeat-raw") as env:
            self.add_flows(env, flows, "bench_flows:Noop", every_seconds=60, due=True)
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
        self.add(
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

    def history(self, server: Server) -> None:
        jobs, rows = self.args.jobs, self.args.history_rows
        # The empty-table drain again, right before: start-up noise between runs is large on a small machine.
        with self.fresh(server, "history-empty") as env:
            self.add_flows(env, jobs, "bench_flows:Noop")
            self.enqueue_all(env)
            empty, empty_details = self.drain_once(env, "dfjob", 2, jobs)
        progress(server.name, f"history: empty-table drain W=2 dfjob: {empty:,.0f} jobs/s")
        with self.fresh(server, "history") as env:
            self.add_flows(env, jobs, "bench_flows:Noop")
            fill_seconds = self.add_history(env, rows, jobs)
            progress(server.name, f"history: {rows:,} finished jobs and runs written in {fill_seconds:.1f} s")
            self.enqueue_all(env)
            plan = claim_plan(env)
            rate, details = self.drain_once(env, "dfjob", 2, jobs)
        progress(server.name, f"history drain W=2 dfjob: {rate:,.0f} jobs/s")
        self.add(
            server.name,
            Figure(
                key="history",
                label=f"drain W=2 with {rows:,} finished rows",
                unit="jobs/s",
                dfjob=rate,
                baseline=empty,
                baseline_name="dfjob's own drain W=2 on empty tables, measured just before",
                details={
                    "history_rows": rows,
                    "fill_seconds": round(fill_seconds, 1),
                    "claim_plan": plan,
                    "dfjob": details,
                    "empty": empty_details,
                },
            ),
        )

    def idle(self, server: Server) -> None:
        seconds = self.args.idle_seconds
        concurrency = self.args.concurrency
        with self.fresh(server, "idle") as env:
            env.close()
            worker = start(
                dfjob_command(env.config, "worker", "--concurrency", str(concurrency)),
                env.folder / "worker.log",
                "worker",
                env.folder,
            )
            spec = {"backend": env.backend, "target": env.raw_target, "mode": "poll", "poll": 1.0}
            raw = start(baseline_command(spec), env.folder / "raw.log", "baseline worker", env.folder)
            deadline = time.monotonic() + 60
            while len(children(worker.pid)) < concurrency or "worker.started" not in worker.log_tail(50):
                if worker.popen.poll() is not None:
                    raise BenchError(f"idle worker exited with {worker.popen.returncode}:\n{worker.log_tail()}")
                if time.monotonic() > deadline:
                    raise BenchError(f"idle worker did not start within 60s:\n{worker.log_tail()}")
                time.sleep(0.05)
            runners = children(worker.pid)
            tree = [worker.pid, *runners]
            settle(tree)
            before = sum(cpu_ticks(pid) for pid in tree), cpu_ticks(raw.pid)
            began = time.monotonic()
            time.sleep(seconds)
            after = sum(cpu_ticks(pid) for pid in tree), cpu_ticks(raw.pid)
            wall = time.monotonic() - began
            supervisor_kb = status_kb(worker.pid, "VmHWM")
            runner_kb = [status_kb(pid, "VmHWM") for pid in runners]
            raw_kb = status_kb(raw.pid, "VmHWM")
            code = stop(worker)
            stop(raw)
            if code != 0:
                raise BenchError(f"idle worker exited with {code} on SIGTERM:\n{worker.log_tail()}")
        cpu = (after[0] - before[0]) / CLK_TCK / wall * 100
        raw_cpu = (after[1] - before[1]) / CLK_TCK / wall * 100
        progress(server.name, f"idle dfjob {cpu:.2f} % CPU, {supervisor_kb / 1024:.1f} MB")
        baseline_name = "hand-written worker polling every 1 s (SELECT, then claim)"
        self.add(
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
        self.add(
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
                    "runner_peak_rss_mb_max": round(max(runner_kb, default=0) / 1024, 1),
                    "runner_peak_rss_mb_sum": round(sum(runner_kb) / 1024, 1),
                },
            ),
        )

    # -- results --------------------------------------------------------------------------------

    def add(self, backend: str, figure: Figure) -> None:
        goal = GOALS.get((backend, figure.key)) or GOALS.get(("*", figure.key))
        if goal is not None:
            figure.goal = goal[0]
            too_small = (self.args.quick and figure.key.split("_")[0] in SIZE_DEPENDENT) or (
                figure.key == "heartbeat" and self.args.heartbeat_flows != 10_000
            )
            figure.met = None if too_small else goal[1](figure)
        self.figures.setdefault(backend, {})[figure.key] = figure


@contextlib.contextmanager
def env_atomic(env: Env) -> Iterator[None]:
    from dfjob.db import write_transaction

    with write_transaction():
        yield


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


def claim_plan(env: Env) -> str:
    """How the database would run dfjob's claim statement right now, in one line."""
    from dfjob import sql
    from dfjob.store import postgres, sqlite

    now = db_stamp(utc_now())
    later = db_stamp(utc_now() + timedelta(seconds=60))
    if not env.postgres:
        claim = sqlite.CLAIM.format(queues="?")
        rows = sql.execute("EXPLAIN QUERY PLAN " + claim, ("bench", "token", later, QUEUE, now, 8)).fetchall()
        return "; ".join(str(row[-1]) for row in rows)
    rows = sql.execute("EXPLAIN " + postgres.CLAIM, ([QUEUE], now, 8, "bench", "token", later, "bench", now)).fetchall()
    return "; ".join(" ".join(str(row[0]).split()) for row in rows if "Scan" in row[0] or "Sort" in row[0])


def settle(pids: Sequence[int], limit: float = 20.0) -> None:
    """Wait until freshly started processes stop burning CPU (imports done): <= 1 tick in 0.5 s."""
    deadline = time.monotonic() + limit
    last = sum(cpu_ticks(pid) for pid in pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(cpu_ticks(pid) for pid in pids)
        if now - last <= 1:
            return
        last = now


def wait_succeeded(env: Env, job_id: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row = env.sql("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row and row[0] == "succeeded":
            return
        if time.monotonic() > deadline:
            logs = "\n".join(proc.log_tail() for proc in RUNNING)
            raise BenchError(f"job {job_id} not done after {timeout:.0f}s (status {row}):\n{logs}")
        time.sleep(0.001)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


WARMUP = 3
IDLE_GAP = 0.03


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    dfjob: float | None
    baseline: float | None
    baseline_name: str
    goal: str = ""
    met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.dfjob is None or not self.baseline:
            return None
        return self.dfjob / self.baseline

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        for name in ("dfjob", "baseline"):
            if data[name] is not None:
                data[name] = round(data[name], 4)
        return data


def _ratio_at_least(threshold: float) -> Callable[[Figure], bool | None]:
    return lambda figure: None if figure.ratio is None else figure.ratio >= threshold


def _dfjob_at_most(limit: float, strict: bool = False) -> Callable[[Figure], bool | None]:
    def check(figure: Figure) -> bool | None:
        if figure.dfjob is None:
            return None
        return figure.dfjob < limit if strict else figure.dfjob <= limit

    return check


GOALS: dict[tuple[str, str], tuple[str, Callable[[Figure], bool | None]]] = {
    ("postgres", "drain_w2_vs_raw1"): ("ratio >= 3x", _ratio_at_least(3.0)),
    ("sqlite", "drain_w1_vs_raw1"): ("ratio >= 1x", _ratio_at_least(1.0)),
    ("postgres", "latency_p50"): ("<= 3 ms", _dfjob_at_most(3.0)),
    ("sqlite", "latency_p50"): ("<= 10 ms", _dfjob_at_most(10.0)),
    ("*", "heartbeat"): ("<= 1 s at 10,000", _dfjob_at_most(1.0)),
    ("*", "history"): ("ratio >= 0.9x", _ratio_at_least(0.9)),
    ("*", "idle_cpu"): ("< 1 % CPU", _dfjob_at_most(1.0, strict=True)),
    ("*", "idle_rss"): ("< 60 MB", _dfjob_at_most(60.0, strict=True)),
}


def scenario_keys(workers: Sequence[int]) -> list[str]:
    """Every figure key a full run produces per backend, in table order."""
    keys = [f"drain_w{w}_vs_{kind}" for w in workers for kind in ("raw1", "raw10")]
    return [*keys, "latency_p50", "latency_p95", "heartbeat", "history", "idle_cpu", "idle_rss"]


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "jobs/s":
        return f"{value:,.0f} jobs/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "% CPU":
        return f"{value:.2f} % CPU"
    return f"{value:.1f} {unit}"


def render_table(bench: Bench) -> str:
    header = ("scenario", "backend", "dfjob", "baseline", "ratio", "goal", "verdict")
    rows: list[tuple[str, ...]] = []
    for backend in BACKENDS:
        if backend in bench.skipped:
            rows.append(("(all scenarios)", backend, "skipped", bench.skipped[backend], "", "", ""))
            continue
        for figure in bench.figures.get(backend, {}).values():
            verdict = {True: "met", False: "MISSED", None: "-"}[figure.met] if figure.goal else ""
            rows.append(
                (
                    figure.label,
                    backend,
                    format_value(figure.dfjob, figure.unit),
                    format_value(figure.baseline, figure.unit),
                    "-" if figure.ratio is None else f"{figure.ratio:.2f}x",
                    figure.goal,
                    verdict,
                )
            )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    rule = "-+-".join("-" * width for width in widths)
    head = " | ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()
    return "\n".join([head, rule, *lines])


def progress(backend: str, message: str) -> None:
    print(f"[{backend}] {message}", file=sys.stderr, flush=True)


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


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    parser.add_argument("--idle-seconds", type=float, help="idle measurement (default 10; --quick 2)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="subset to run (default all)")
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
    args.idle_seconds = args.idle_seconds or (2.0 if quick else 10.0)
    args.workers = [int(item) for item in args.workers.split(",") if item.strip()]
    args.scenarios = [item.strip() for item in args.scenarios.split(",") if item.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if not 1 <= args.concurrency <= 256 or not args.workers or min(args.workers) < 1 or args.jobs < 1:
        parser.error("--concurrency, --workers and --jobs must be positive")
    return args


def run(args: argparse.Namespace) -> int:
    from dfjob.db import redact_url

    began = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dfjob-bench-") as temp:
        work = Path(temp)
        quiet_dfjob_logs(work / "bench-process.log")
        bench = Bench(args, work)
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
            for scenario in args.scenarios:
                scenario_began = time.monotonic()
                try:
                    getattr(bench, scenario)(server)
                    progress(server.name, f"{scenario} done in {time.monotonic() - scenario_began:.1f} s")
                except Exception as exc:  # noqa: BLE001 (one failed scenario must not lose the others)
                    text = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                    message = f"{scenario} failed: {text}"
                    bench.errors.append(f"[{server.name}] {message}")
                    progress(server.name, message)
    seconds = time.monotonic() - began
    print()
    print(render_table(bench))
    print()
    print("ratio = dfjob / baseline (higher is better for jobs/s, lower for ms, s, % CPU and MB).")
    print("Baselines:")
    names: dict[tuple[str, str], list[str]] = {}
    for backend, figures in bench.figures.items():
        for figure in figures.values():
            users = names.setdefault((figure.key.split("_")[0], figure.baseline_name), [])
            if backend not in users:
                users.append(backend)
    for (scenario, name), users in names.items():
        print(f"  {scenario} ({', '.join(users)}): {name}")
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
            "keys": scenario_keys(args.workers),
            "figures": {
                backend: {key: figure.as_dict() for key, figure in figures.items()}
                for backend, figures in bench.figures.items()
            },
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 1 if bench.errors else 0


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--baseline-worker"]:
        return baseline_worker(json.loads(argv[1]))
    args = parse_args(argv)
    os.environ.pop("DFJOB_DATABASE_URL", None)
    os.environ.pop("DFJOB_CONFIG", None)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run(args)
    finally:
        for proc in list(RUNNING):
            stop(proc, grace=5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
