"""Postgres under real concurrency: two worker processes share one queue, and concurrent triggers
of one data flow race for its single active job. Each job runs exactly once; one trigger wins."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DFJOB, Daemon, Dfjob, write_config
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def pg_dfjob(postgres_url: str, tmp_path: Path) -> Iterator[Dfjob]:
    """The `dfjob` command against a fresh Postgres database; daemons are killed at the end."""
    daemons: list[Daemon] = []
    yield Dfjob(write_config(tmp_path, postgres_url, worker={"poll_interval": 0.1}), postgres_url, daemons)
    for daemon in daemons:
        daemon.kill_all()


def test_two_burst_workers_run_each_of_500_jobs_exactly_once(pg_dfjob: Dfjob, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    names = [f"flow{index:03d}" for index in range(500)]
    tables = [
        f'[[flow]]\nname = "{name}"\nclass = "sample_flows:Ledger"\nevery = "1h"\n'
        f'config = {{ key = "{name}", ledger = "{ledger}" }}\n'
        for name in names
    ]
    flows_file = tmp_path / "flows.toml"
    flows_file.write_text("\n".join(tables), encoding="utf-8")
    assert pg_dfjob.json("flows", "import", str(flows_file)) == {"created": 500, "updated": 0}
    # Both workers are up and idle before the jobs come, so that neither can take them all alone.
    workers = [pg_dfjob.start("worker", name=f"worker{index}") for index in range(2)]
    wait_for(lambda: len([w for w in pg_dfjob.json("workers") if w["state"] == "alive"]) == 2, what="both workers up")
    # Every flow with `every` is due when added: one heartbeat enqueues them all.
    assert pg_dfjob.json("heartbeat") == {"due": 500, "enqueued": 500, "skipped": 0}

    wait_for(
        lambda: pg_dfjob.db.scalar("SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'") == 500,
        timeout=180,
        what="all 500 jobs done",
    )
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=60) == 0, worker.stderr()[-3000:]
    keys = Counter(line.split()[0] for line in ledger.read_text().splitlines())
    assert keys == Counter(names), "every flow's key must appear exactly once"
    jobs = pg_dfjob.db.jobs()
    assert len(jobs) == 500
    assert Counter(job["status"] for job in jobs) == {"succeeded": 500}
    assert {job["attempts"] for job in jobs} == {1}
    runs = pg_dfjob.db.runs()
    assert len(runs) == 500
    assert Counter(run["status"] for run in runs) == {"success": 500}
    assert len({run["job_id"] for run in runs}) == 500
    claimed_by = Counter(run["worker"] for run in runs)
    assert len(claimed_by) == 2, f"both workers should have claimed jobs: {claimed_by}"


def test_a_claim_finds_jobs_while_another_workers_claim_is_open(pg_dfjob: Dfjob, tmp_path: Path) -> None:
    """Two workers claim at the same moment: while the first's claim transaction is open (its
    first jobs locked, their run limits held), the second claims the next jobs instead of nothing.
    Every flow has a run limit (`max_running` 1 by default), so both must look past the first's."""
    import psycopg

    from dfjob.sql import to_dialect
    from dfjob.store.postgres import PostgresStore
    from dfjob.store.rows import ClaimRequest

    flows_file = tmp_path / "flows.toml"
    tables = [f'[[flow]]\nname = "f{n:02d}"\nclass = "sample_flows:Succeed"\nevery = "1h"\n' for n in range(100)]
    flows_file.write_text("\n".join(tables), encoding="utf-8")
    pg_dfjob.ok("flows", "import", str(flows_file))
    assert pg_dfjob.json("heartbeat")["enqueued"] == 100

    def claim(conn: psycopg.Connection[Any], worker: str, limit: int) -> list[tuple[Any, ...]]:
        request = ClaimRequest(worker, ("default",), limit, datetime.now(UTC), 60.0)
        cursor = None
        for sql, params in PostgresStore._claim_statements(request, f"token-{worker}"):
            cursor = conn.execute(to_dialect(sql, "dfjob"), params)
        assert cursor is not None
        return cursor.fetchall()  # the claim's jobs

    with psycopg.connect(pg_dfjob.url) as first, psycopg.connect(pg_dfjob.url) as second:
        held = claim(first, "first", 8)  # left open: the jobs it looked at and their limits stay locked
        assert len(held) == 8
        taken = claim(second, "second", 4)
        assert len(taken) == 4
        assert not {row[0] for row in held} & {row[0] for row in taken}
        second.commit()
        first.commit()
    jobs = pg_dfjob.db.rows("SELECT locked_by, count(*) AS n FROM jobs WHERE status = 'running' GROUP BY 1 ORDER BY 1")
    assert jobs == [{"locked_by": "first", "n": 8}, {"locked_by": "second", "n": 4}]


def test_concurrent_triggers_of_one_flow_create_one_job(pg_dfjob: Dfjob) -> None:
    flow_id = pg_dfjob.add_flow("once", "sample_flows:Succeed")
    processes = [
        subprocess.Popen(
            [str(DFJOB), "--config", str(pg_dfjob.config), "trigger", "once", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=pg_dfjob.directory,
        )
        for _ in range(8)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        results.append(json.loads(out))

    assert len({result["job_id"] for result in results}) == 1, results
    assert [result["deduplicated"] for result in results].count(False) == 1, results
    assert {result["data_flow_id"] for result in results} == {flow_id}
    jobs = pg_dfjob.db.rows("SELECT id, status FROM jobs WHERE data_flow_id = ?", (flow_id,))
    assert jobs == [{"id": results[0]["job_id"], "status": "queued"}]
