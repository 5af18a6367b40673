"""Upgrading a database made by dfjob 0.1.0 (schema version 1) with the real command, and the
refusals every command makes on a schema of another version."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import closing
from typing import Any

import pytest

from dfjob import db, migrations
from tests.e2e.conftest import DFJOB, Dfjob, _child_env
from tests.support.waiting import wait_for

V1_TABLES = ("data_flows", "jobs", "data_flow_runs")
POSTGRES_ONLY = pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])


def _rows(url: str, table: str, schema: str, columns: list[str] | None = None) -> tuple[list[str], list[Any]]:
    """Every row of one table, ordered by id; with `columns`, only those."""
    select = ", ".join(columns) if columns else "*"
    if url.startswith("sqlite:"):
        with closing(sqlite3.connect(url[len("sqlite:///") :])) as conn:
            cursor = conn.execute(f"SELECT {select} FROM {table} ORDER BY id")
            return [column[0] for column in cursor.description], cursor.fetchall()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        pg_cursor = conn.execute(f'SELECT {select} FROM "{schema}".{table} ORDER BY id')
        assert pg_cursor.description is not None
        return [column.name for column in pg_cursor.description], pg_cursor.fetchall()


def test_a_version_1_database_upgrades_row_for_row_and_a_worker_then_drains_it(
    make_dfjob: Callable[..., Dfjob], v1_database_url: str
) -> None:
    before = {table: _rows(v1_database_url, table, "public") for table in V1_TABLES}
    dfjob = make_dfjob(v1_database_url)

    status = dfjob.json("db", "status")
    assert status["version"] == 1
    assert status["latest"] == migrations.LATEST
    assert [step["version"] for step in status["pending"]] == list(range(2, migrations.LATEST + 1))

    done = dfjob.json("db", "upgrade")
    assert (done["from"], done["to"]) == (1, migrations.LATEST)
    assert [step["version"] for step in done["applied"]] == list(range(2, migrations.LATEST + 1))
    for table, (columns, rows) in before.items():
        assert _rows(v1_database_url, table, "dfjob", columns) == (columns, rows), table
    assert dfjob.json("db", "status") == {"version": migrations.LATEST, "latest": migrations.LATEST, "pending": []}

    # The queued jobs run; the one whose worker was lost is taken back, then runs too.
    dfjob.ok("worker", "--queue", "default", "--queue", "reports", "--burst")
    jobs = {job["id"]: job for job in dfjob.json("jobs")}
    assert {job_id: jobs[job_id]["status"] for job_id in (4, 5, 6)} == {4: "succeeded", 5: "succeeded", 6: "succeeded"}
    assert jobs[6]["rescues"] == 1
    assert not [job for job in jobs.values() if job["status"] in ("queued", "running")]
    lost = [run for run in dfjob.json("runs", "--flow", "nightly-report") if run["job_id"] == 6]
    assert [run["status"] for run in lost] == ["success", "failed"]
    assert lost[1]["error_message"].startswith("worker lost: lost-worker")
    # The id sequences moved with their tables: a new flow does not collide with an old one.
    assert dfjob.add_flow("after-upgrade", "sample_flows:Succeed") == 5


@pytest.mark.timeout(60)
def test_a_worker_on_an_old_schema_exits_1_and_starts_after_the_upgrade(
    make_dfjob: Callable[..., Dfjob], v1_database_url: str
) -> None:
    dfjob = make_dfjob(v1_database_url)
    code, out, err = dfjob.run("worker", "--burst")
    assert (code, out, err) == (1, "", "Error: the database schema is version 1; run `dfjob db upgrade`\n")
    for command in (["flows", "list"], ["trigger", "sync-orders"], ["runs"], ["heartbeat"], ["db", "init"]):
        assert dfjob.run(*command)[::2] == (1, "Error: the database schema is version 1; run `dfjob db upgrade`\n")
    dfjob.ok("db", "upgrade")
    dfjob.ok("worker", "--burst")


@pytest.mark.timeout(60)
def test_every_command_refuses_a_schema_newer_than_it_knows(dfjob: Dfjob) -> None:
    dfjob.ok("db", "init")
    newer = migrations.LATEST + 1
    if dfjob.url.startswith("sqlite:"):
        with closing(sqlite3.connect(dfjob.url[len("sqlite:///") :])) as conn, conn:
            conn.execute("INSERT INTO dfjob_schema (version, name) VALUES (?, 'later')", (newer,))
    else:
        import psycopg

        with psycopg.connect(dfjob.url, autocommit=True) as conn:
            conn.execute("INSERT INTO dfjob.dfjob_schema (version, name) VALUES (%s, 'later')", (newer,))
    message = (
        f"Error: the database schema is version {newer}, newer than this dfjob ({migrations.LATEST}); upgrade dfjob\n"
    )
    for command in (["worker", "--burst"], ["flows", "list"], ["db", "upgrade"], ["db", "init"], ["prune"]):
        assert dfjob.run(*command)[::2] == (1, message), command
    assert dfjob.json("db", "status")["version"] == newer


@POSTGRES_ONLY
@pytest.mark.timeout(60)
def test_two_upgrades_at_once_apply_each_step_once(make_dfjob: Callable[..., Dfjob], v1_database_url: str) -> None:
    import psycopg

    dfjob = make_dfjob(v1_database_url)
    # Hold the upgrade lock so that both commands are waiting on it when it is released.
    with psycopg.connect(v1_database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (db.advisory_key("schema", "dfjob"),))
        upgrades = [
            subprocess.Popen(
                [str(DFJOB), "--config", str(dfjob.config), "db", "upgrade", "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_child_env(),
            )
            for _ in range(2)
        ]
        wait_for(
            lambda: (
                holder.execute("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[
                    0
                ]
                == 2
            ),
            what="both upgrades waiting on the lock",
        )
        holder.execute("SELECT pg_advisory_unlock_all()")
    results = [upgrade.communicate(timeout=30) for upgrade in upgrades]
    assert [upgrade.returncode for upgrade in upgrades] == [0, 0], results
    # The lock is taken per step: the two may share the steps between them, but no step is
    # applied twice and none is left out.
    applied = sorted(step["version"] for out, _ in results for step in json.loads(out)["applied"])
    assert applied == list(range(2, migrations.LATEST + 1))
    versions = dfjob.db.rows("SELECT version FROM dfjob_schema ORDER BY version")
    assert [row["version"] for row in versions] == list(range(1, migrations.LATEST + 1))


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_an_application_table_named_jobs_in_public_is_untouched(
    make_dfjob: Callable[..., Dfjob], empty_postgres_url: str
) -> None:
    import psycopg

    def app_rows() -> list[Any]:
        with psycopg.connect(empty_postgres_url, autocommit=True) as conn:
            return conn.execute("SELECT * FROM public.jobs ORDER BY id").fetchall()

    with psycopg.connect(empty_postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.jobs (id serial PRIMARY KEY, title text NOT NULL, salary integer)")
        conn.execute("INSERT INTO public.jobs (title, salary) VALUES ('data engineer', 100), ('analyst', 90)")
    app = app_rows()
    dfjob = make_dfjob(empty_postgres_url)
    dfjob.ok("db", "init")
    dfjob.ok("db", "upgrade")
    dfjob.trigger(str(dfjob.add_flow("hello", "sample_flows:Succeed")))
    dfjob.ok("worker", "--burst")
    assert [job["status"] for job in dfjob.json("jobs")] == ["succeeded"]
    assert app_rows() == app
    with psycopg.connect(empty_postgres_url, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'jobs'"
            " ORDER BY ordinal_position"
        ).fetchall()
    assert [column[0] for column in columns] == ["id", "title", "salary"]


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_two_installs_share_one_database_in_two_schemas(
    make_dfjob: Callable[..., Dfjob], empty_postgres_url: str
) -> None:
    etl = make_dfjob(empty_postgres_url, name="etl", database={"schema": "etl_jobs"})
    ops = make_dfjob(empty_postgres_url, name="ops", database={"schema": "ops_jobs"})
    etl.add_flow("load", "sample_flows:Succeed")
    ops.add_flow("backup", "sample_flows:Succeed")
    assert [flow["name"] for flow in etl.json("flows", "list")] == ["load"]
    assert [flow["name"] for flow in ops.json("flows", "list")] == ["backup"]
    # An idle worker of one install is not woken by the other's jobs: it only polls (every 0.1 s here)
    # for its own, and runs none of the other's.
    worker = ops.start("worker")
    wait_for(lambda: worker.events("worker.started"), what="the ops worker to start")
    etl.trigger("load")
    ops.trigger("backup")
    wait_for(lambda: ops.json("jobs")[0]["status"] == "succeeded", what="the ops job to run")
    assert etl.json("jobs")[0]["status"] == "queued"
    assert [event["data_flow_name"] for event in worker.events("job.started")] == ["backup"]
