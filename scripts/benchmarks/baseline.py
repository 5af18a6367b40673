"""The hand-written baseline: a minimal job queue in plain psycopg / sqlite3 on dfjob's own tables.

It does what one would write by hand and no more: no run rows, no events, no logging, no user code in
child processes. Scenarios use `RawQueue` in this process, or start it as a worker process with
`command(spec)`, which runs `python scripts/benchmarks --baseline-worker SPEC` (see `run_worker`).
This module imports nothing from dfjob, so a baseline process carries none of dfjob's imports.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import CHANNEL, QUEUE, db_stamp, utc_now

PACKAGE = Path(__file__).resolve().parent


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


def command(spec: dict[str, Any]) -> list[str]:
    """The command line of one baseline worker process; `spec` as `run_worker` takes it."""
    return [sys.executable, str(PACKAGE), "--baseline-worker", json.dumps(spec)]


def run_worker(spec: dict[str, Any]) -> int:
    """One baseline process: `backend`, `target` (URL or SQLite file) and `mode`, one of

    drain   claim `batch` jobs at a time until none is left, then exit 0;
    listen  (Postgres) LISTEN on the bench channel, claim on every NOTIFY (or after `poll` seconds);
    poll    every `poll` seconds a plain SELECT for a ready job, then claim; until stopped.
    """
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
