"""Shared fixtures: one set of tests runs on SQLite (a temp file) and on Postgres (a database
cloned per test from a template that already holds the schema)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dfjob import clock, db, events
from dfjob.config import DatabaseSettings, FlowSettings, RetrySettings, Settings, WorkerSettings
from dfjob.migrations import create_schema

SUPPORT_DIR = Path(__file__).parent / "support"
FIXTURES_DIR = Path(__file__).parent / "fixtures"
POSTGRES_URL = os.environ.get("DFJOB_TEST_POSTGRES_URL", "")
REQUIRE_POSTGRES = os.environ.get("DFJOB_REQUIRE_POSTGRES") == "1"
# One template per test session, so sessions running side by side do not drop each other's.
TEMPLATE = f"dfjob_test_template_{os.getpid()}"


def _admin_execute(statement: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(statement)


def _url_for(database: str) -> str:
    base, _, _ = POSTGRES_URL.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """Create the template database once per session; skip (or fail in CI) without a server."""
    if not POSTGRES_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("DFJOB_REQUIRE_POSTGRES=1 but DFJOB_TEST_POSTGRES_URL is not set")
        pytest.skip("set DFJOB_TEST_POSTGRES_URL to run the Postgres tests")
    try:
        _admin_execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        _admin_execute(f"CREATE DATABASE {TEMPLATE}")
    except Exception as exc:  # noqa: BLE001 (any failure to reach the server means: no Postgres here)
        if REQUIRE_POSTGRES:
            pytest.fail(f"Postgres required but unavailable: {exc}")
        pytest.skip(f"Postgres unavailable: {exc}")
    db.connect(_url_for(TEMPLATE), ".")
    create_schema()
    db.database_proxy.obj.close()
    yield TEMPLATE
    _admin_execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _fresh_postgres(template: str) -> Iterator[str]:
    name = f"dfjob_t_{uuid.uuid4().hex[:12]}"
    _admin_execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield _url_for(name)
    finally:
        database = db.database_proxy.obj
        if database is not None and not database.is_closed():
            database.close()
        _admin_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty dfjob database on the test's backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'dfjob.db'}"
        return
    template = request.getfixturevalue("postgres_template")
    yield from _fresh_postgres(template)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh Postgres database, for tests that only make sense there."""
    template = request.getfixturevalue("postgres_template")
    yield from _fresh_postgres(template)


@pytest.fixture
def make_empty_postgres(request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """`make_empty_postgres()`: a brand-new Postgres database with nothing of dfjob's in it."""
    request.getfixturevalue("postgres_template")  # skips (or fails in CI) without a server
    names: list[str] = []

    def make() -> str:
        names.append(f"dfjob_e_{uuid.uuid4().hex[:12]}")
        _admin_execute(f"CREATE DATABASE {names[-1]}")
        return _url_for(names[-1])

    yield make
    database = db.database_proxy.obj
    if database is not None and not database.is_closed():
        database.close()
    for name in names:
        _admin_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_postgres_url(make_empty_postgres: Callable[[], str]) -> str:
    """A brand-new Postgres database with nothing of dfjob's in it."""
    return make_empty_postgres()


@pytest.fixture
def v1_database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database made by dfjob 0.1.0 (schema version 1), loaded from the committed fixtures
    (see tests/fixtures/make_v1.py): flows, and jobs that are queued, running and finished."""
    if backend == "sqlite":
        path = tmp_path / "v1.sqlite3"
        shutil.copy(FIXTURES_DIR / "v1.sqlite3", path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("make_empty_postgres")()
    subprocess.run(
        ["psql", "--quiet", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", FIXTURES_DIR / "v1.postgres.sql"],
        check=True,
        capture_output=True,
    )
    return url


def make_settings(database_url: str, base_dir: Path, **sections: object) -> Settings:
    """Settings for tests: sample flows importable, retries at once, quick polling."""
    settings = Settings(
        database=DatabaseSettings(url=database_url),
        flows=FlowSettings(paths=(str(SUPPORT_DIR),)),
        retry=RetrySettings(max_attempts=3, backoff_initial=0, backoff_max=0),
        worker=WorkerSettings(poll_interval=0.05, lease_seconds=60, shutdown_grace=5),
        base_dir=str(base_dir),
    )
    return replace(settings, **sections)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path)


@pytest.fixture
def database(settings: Settings) -> Iterator[Settings]:
    """Connected, with tables; yields the settings. Closes the connection afterwards."""
    db.connect(settings.database.url, settings.base_dir)
    create_schema()
    yield settings
    db.database_proxy.obj.close()


@pytest.fixture(autouse=True)
def _reset_process_state() -> Iterator[None]:
    """Each test leaves real time, no callbacks and default logging behind."""
    yield
    clock.travel(0)
    events._callbacks.clear()
    events.reset_logging()


class CapturedEvents(list[tuple[str, dict[str, object]]]):
    """The events a callback saw; reading it first waits for the callbacks' thread to catch up."""

    def __iter__(self) -> Iterator[tuple[str, dict[str, object]]]:
        events.flush()
        return super().__iter__()

    def __len__(self) -> int:
        events.flush()
        return super().__len__()

    def __getitem__(self, index: Any) -> Any:
        events.flush()
        return super().__getitem__(index)

    def clear(self) -> None:
        events.flush()
        super().clear()


@pytest.fixture
def captured_events() -> CapturedEvents:
    """Every lifecycle event emitted in this process, in order."""
    seen = CapturedEvents()
    events._callbacks.append(("test", lambda name, payload: list.append(seen, (name, payload))))
    return seen
