"""Schema versions in-process: a fresh schema and an upgraded one are the same, and the checks
every command makes refuse other versions."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from typing import Any

import pytest

from dfjob import db, migrations, sql
from dfjob.errors import DfjobError


def _describe() -> dict[str, Any]:
    """Tables with their columns, indexes and foreign keys, as the database itself reports them."""
    schema = db.pg_schema()
    if schema is None:
        tables = [
            row[0]
            for row in sql.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall()
        ]
        return {
            "columns": {table: sql.execute(f"PRAGMA table_info({table})").fetchall() for table in tables},
            "foreign_keys": {table: sql.execute(f"PRAGMA foreign_key_list({table})").fetchall() for table in tables},
            "indexes": sorted(
                (name, " ".join((text or "").split()))
                for name, text in sql.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'").fetchall()
            ),
        }
    return {
        "columns": sql.execute(
            "SELECT table_name, ordinal_position, column_name, data_type, character_maximum_length, is_nullable,"
            " column_default FROM information_schema.columns WHERE table_schema = ? ORDER BY 1, 2",
            (schema,),
        ).fetchall(),
        "indexes": [
            (name, _without_casts(definition))
            for name, definition in sql.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = ? ORDER BY 1", (schema,)
            ).fetchall()
        ],
        "constraints": sql.execute(
            "SELECT conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
            " JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = ? ORDER BY 1",
            (schema,),
        ).fetchall(),
        "sequences": sql.execute(
            "SELECT sequence_name, data_type FROM information_schema.sequences WHERE sequence_schema = ? ORDER BY 1",
            (schema,),
        ).fetchall(),
    }


def _without_casts(definition: str) -> str:
    """An index definition without type casts and brackets: Postgres prints the same predicate
    with casts in different places depending on how it was created (a restored dump, say)."""
    return re.sub(r"::[a-z ]+(\[\])?|[()\s]", "", definition)


def _fresh_url(backend: str, tmp_path: Any, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    url: str = request.getfixturevalue("make_empty_postgres")()
    return url


def test_a_fresh_schema_and_an_upgraded_version_1_database_are_the_same(
    backend: str, v1_database_url: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    db.connect(v1_database_url, str(tmp_path))
    assert migrations.database_version() == 1
    done = migrations.upgrade()
    assert (done.before, done.after) == (1, migrations.LATEST)
    assert [step.version for step in done.applied] == list(range(2, migrations.LATEST + 1))
    upgraded = _describe()
    db.close_database()

    db.connect(_fresh_url(backend, tmp_path, request), str(tmp_path))
    assert migrations.database_version() == 0
    assert migrations.create_schema() == migrations.LATEST
    fresh = _describe()
    db.close_database()

    assert upgraded == fresh


def test_upgrade_records_each_step_and_a_second_upgrade_applies_nothing(v1_database_url: str, tmp_path: Any) -> None:
    db.connect(v1_database_url, str(tmp_path))
    migrations.upgrade()
    again = migrations.upgrade()
    assert (again.before, again.after, again.applied) == (migrations.LATEST, migrations.LATEST, [])
    rows = sql.execute("SELECT version, name, applied_at FROM dfjob.dfjob_schema ORDER BY version").fetchall()
    assert [row[0] for row in rows] == list(range(1, migrations.LATEST + 1))
    assert all(name and applied_at for _, name, applied_at in rows[1:])
    db.close_database()


def test_a_database_at_another_version_is_refused_with_one_clear_line(v1_database_url: str, tmp_path: Any) -> None:
    db.connect(v1_database_url, str(tmp_path))
    with pytest.raises(DfjobError, match=r"^the database schema is version 1; run `dfjob db upgrade`$"):
        migrations.prepare(create=True, where="here")
    migrations.upgrade()
    migrations.prepare(create=False, where="here")
    newer = migrations.LATEST + 1
    sql.execute("INSERT INTO dfjob.dfjob_schema (version, name) VALUES (?, 'from the future')", (newer,))
    expected = rf"^the database schema is version {newer}, newer than this dfjob \({migrations.LATEST}\);"
    expected += " upgrade dfjob$"
    with pytest.raises(DfjobError, match=expected):
        migrations.prepare(create=True, where="here")
    with pytest.raises(DfjobError, match=expected):
        migrations.upgrade()
    db.close_database()


def test_an_empty_database_is_created_only_by_commands_that_write(
    backend: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    db.connect(_fresh_url(backend, tmp_path, request), str(tmp_path))
    with pytest.raises(DfjobError, match=r"^no dfjob database at somewhere \(run `dfjob db init`\)$"):
        migrations.prepare(create=False, where="somewhere")
    assert migrations.database_version() == 0
    migrations.prepare(create=True, where="somewhere")
    assert migrations.database_version() == migrations.LATEST
    db.close_database()


def test_the_sqlite_fixture_is_a_version_1_database() -> None:
    # Guards the fixture itself: the upgrade tests start from what dfjob 0.1.0 wrote.
    from tests.conftest import FIXTURES_DIR

    with closing(sqlite3.connect(FIXTURES_DIR / "v1.sqlite3")) as conn:
        assert conn.execute("SELECT MAX(version) FROM dfjob_schema").fetchone() == (1,)
        statuses = {row[0] for row in conn.execute("SELECT status FROM jobs")}
    assert statuses == {"queued", "running", "succeeded", "failed", "cancelled"}
