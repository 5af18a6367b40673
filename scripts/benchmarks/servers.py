"""Database servers and the fresh databases every measurement runs on.

A `Server` makes and drops databases: SQLite files in the bench's temporary folder, or databases
named `dfjob_bench_<pid>_<n>` on a Postgres server. `fresh_env` gives one such database, with
dfjob's schema and a config file pointing at it, as an `Env`; it stops every process still running
and drops the database on the way out, so nothing leaks from one measurement into the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from benchmarks.common import QUEUE, SCRIPTS, db_stamp, utc_now
from benchmarks.procs import stop_all

if TYPE_CHECKING:
    from dfjob.config import Settings

TABLE_NAME = re.compile(r"\b(FROM|JOIN|UPDATE|INTO) +(jobs|data_flows|data_flow_runs|run_logs)\b")


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
        from dfjob.passwords import redact_url

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

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """One write transaction on dfjob's connection."""
        from dfjob.db import write_transaction

        with write_transaction():
            yield

    @property
    def ts(self) -> str:
        """A timestamp parameter inside INSERT … SELECT (Postgres cannot infer its type there)."""
        return "CAST(? AS TIMESTAMP)" if self.postgres else "?"

    def series(self, count: int) -> str:
        """A query yielding g = 1..count."""
        if self.postgres:
            return f"SELECT g FROM generate_series(1, {int(count)}) AS t(g)"
        return f"WITH RECURSIVE t(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM t WHERE g < {int(count)}) SELECT g FROM t"

    def add_flows(self, count: int, class_path: str, every_seconds: int | None = None, due: bool = False) -> None:
        """`count` enabled flows named bench-1.., in bulk; `due`: next_run_at an hour ago (not measured)."""
        now = db_stamp(utc_now())
        next_run = self.ts if due else "NULL"
        params = [class_path, *([db_stamp(utc_now() - timedelta(hours=1))] if due else []), now, now]
        every = str(int(every_seconds)) if every_seconds else "NULL"
        with self.atomic():
            self.sql(
                "INSERT INTO data_flows (name, class_path, queue, priority, enabled, every_seconds, cron,"
                " configuration, max_attempts, timeout_seconds, last_run_at, last_run_status, next_run_at,"
                " created_at, updated_at)"
                f" SELECT 'bench-' || g, ?, '{QUEUE}', 0, TRUE, {every}, NULL, '{{}}', NULL, NULL, NULL, NULL,"
                f" {next_run}, {self.ts}, {self.ts} FROM ({self.series(count)}) AS s",
                params,
            )

    def enqueue_all(self) -> None:
        """One queued job per data flow: the rows dfjob's enqueue writes, in bulk (not measured)."""
        now = db_stamp(utc_now())
        with self.atomic():
            self.sql(
                "INSERT INTO jobs (data_flow_id, queue, priority, status, attempts, max_attempts, rescues, run_at,"
                f" params, created_at) SELECT id, queue, priority, 'queued', 0, 3, 0, {self.ts}, '{{}}', {self.ts}"
                " FROM data_flows ORDER BY id",
                (now, now),
            )
            self.sql("UPDATE data_flows SET last_run_at = ?, last_run_status = 'in_progress'", (now,))


@contextlib.contextmanager
def fresh_env(server: Server, folder: Path) -> Iterator[Env]:
    """A new database on `server` with dfjob's schema, its config in `folder` (created here)."""
    from dfjob.config import load_settings
    from dfjob.migrations import create_schema

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
        stop_all(grace=10)
        env.close()
        server.drop(url)
