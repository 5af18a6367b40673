"""Helpers for end-to-end tests: the real `dfjob` command in subprocesses, against a config file.

- `make_dfjob(url, worker={...}, retry={...})` writes a `dfjob.toml` into its own folder under
  `tmp_path` (JSON logs, sample flows importable, quick polling) and returns a `Dfjob` handle.
- `Dfjob.run(*args)` runs one command and returns `(code, stdout, stderr)`; `Dfjob.json(*args)`
  runs it with `--json`, insists on exit 0 and parses stdout.
- `Dfjob.start(*args)` starts a daemon in its own session (so the whole group can be signalled);
  every daemon and its runner children are killed at teardown, whatever happened.
- `Dfjob.db` reads the database directly (sqlite3 or psycopg), for cheap polling in `wait_for`.
- Besides `tests/support`, `flows.paths` holds a folder with `e2e_flows`, flows these tests need
  that the shared sample flows do not have.

Separate hosts (tests/support/hosts.py, pgbouncer.py, faketime.py; they need root, `ip netns`,
nftables, PgBouncer and libfaketime, and skip without them, or fail when DFJOB_REQUIRE_NETNS=1):
- `private_postgres`: a Postgres of the test's own on 127.0.0.1, to stop, restart or pause (hang).
- `make_network(hosts=2, postgres=True)` / `network`: hosts as network namespaces on one bridge,
  a private Postgres in a namespace of its own; per host link_down/link_up and blackhole/restore.
- `make_pgbouncer(server_host, server_port, …)`: a real PgBouncer (transaction pooling).
- `faketime(offset)`: an environment whose processes see the wall clock shifted by `offset` s.
- `make_dfjob(network.url(db), read_url=network.postgres.local_url(db), host=network.hosts[0])`:
  its commands run on that host and `Dfjob.db` reads through the Unix socket;
  `Dfjob.start(…, host=h, env=faketime(30))` / `Dfjob.run(…, host=h, env=…)` pick another host, a skewed clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import pytest

from dfjob.models import from_db_time
from tests.support.faketime import faketime_env
from tests.support.hosts import Host, Network, PrivatePostgres, Unavailable
from tests.support.pgbouncer import PgBouncer
from tests.support.waiting import wait_for

DFJOB = Path(sys.executable).parent / "dfjob"
SUPPORT_DIR = Path(__file__).resolve().parent.parent / "support"

E2E_FLOWS = '''
"""Flows only the end-to-end tests use (written into the test's folder, on flows.paths)."""

import os
import time
from pathlib import Path

import dfjob


class SleepOnce(dfjob.Flow):
    """The first call writes its pid to config.marker and sleeps config.seconds; later calls return at once."""

    def run(self):
        counter = Path(self.config["counter"])
        calls = int(counter.read_text() or 0) if counter.exists() else 0
        counter.write_text(str(calls + 1))
        if calls == 0:
            Path(self.config["marker"]).write_text(f"{os.getpid()}\\n")
            time.sleep(float(self.config.get("seconds", 30)))
        return {"calls": calls + 1}


class TimedLedger(dfjob.Flow):
    """Appends `key start pid` to config.ledger, sleeps config.seconds, appends `key end pid`."""

    def run(self):
        key, ledger = self.config["key"], self.config["ledger"]
        with open(ledger, "a", encoding="utf-8") as out:
            out.write(f"{key} start {os.getpid()}\\n")
        time.sleep(float(self.config.get("seconds", 0)))
        with open(ledger, "a", encoding="utf-8") as out:
            out.write(f"{key} end {os.getpid()}\\n")
        return {"key": key}
'''


# -- config --------------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_config(directory: Path, database_url: str, **sections: dict[str, Any] | list[dict[str, Any]]) -> Path:
    """Write `dfjob.toml` into `directory`; `sections` override or add keys per section (a list:
    that many `[[section]]` tables)."""
    flows_dir = directory / "flows"
    flows_dir.mkdir(parents=True, exist_ok=True)
    (flows_dir / "e2e_flows.py").write_text(E2E_FLOWS, encoding="utf-8")
    config: dict[str, dict[str, Any]] = {
        "database": {"url": database_url},
        "flows": {"paths": [str(SUPPORT_DIR), str(flows_dir)]},
        "worker": {"poll_interval": 0.1, "lease_seconds": 60, "shutdown_grace": 5},
        "retry": {"max_attempts": 3, "backoff_initial": 0, "backoff_max": 0},
        "log": {"format": "json"},
    }
    tables: list[tuple[str, dict[str, Any]]] = []  # [[name]] arrays of tables, such as alerts
    for name, values in sections.items():
        if isinstance(values, list):
            tables += [(name, table) for table in values]
        else:
            config.setdefault(name, {}).update(values)
    text = "\n".join(
        f"[{name}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in values.items())
        for name, values in config.items()
    )
    text += "".join(
        f"\n[[{name}]]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in table.items())
        for name, table in tables
    )
    path = directory / "dfjob.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment plus `extra`, without the variables that would override the config file."""
    env = dict(os.environ)
    env.update(extra or {})
    for name in ("DFJOB_CONFIG", "DFJOB_DATABASE_URL"):
        env.pop(name, None)
    return env


def run_dfjob(
    config: Path, *args: str, timeout: float = 120, host: Host | None = None, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `dfjob --config CONFIG ARGS…` to the end (on `host`, with `env` added, when given);
    returns (exit code, stdout, stderr)."""
    argv = [str(DFJOB), "--config", str(config), *args]
    done = subprocess.run(
        host.argv(argv) if host is not None else argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_child_env(env),
        cwd=config.parent,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout, done.stderr


def log_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty stderr line parsed as JSON (fails on a line that is not JSON)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- processes -----------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: state, ppid, …; None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def children_of(pid: int) -> list[int]:
    """Live child processes of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_of(int(entry.name)) == pid and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def read_pid(marker: Path) -> int | None:
    """The pid a flow wrote to its marker file, once it is completely written."""
    try:
        text = marker.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") else None


@dataclass
class Daemon:
    """A `dfjob` daemon started in its own session; its stderr goes to a file."""

    process: subprocess.Popen[bytes]
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        """Signal the daemon process alone."""
        self.process.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        """Signal its whole process group (the daemon and its runner children), as systemd or Ctrl-C do."""
        os.killpg(self.pid, signum)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Its JSON log lines so far (complete lines only), optionally only those of one event."""
        text = self.stderr()
        lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
        parsed = log_lines("\n".join(lines))
        return [line for line in parsed if name is None or line.get("event") == name]

    def kill_all(self) -> None:
        """SIGKILL the daemon and everything still in its process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


# -- the database, read directly ---------------------------------------------------------------


def as_time(value: Any) -> datetime | None:
    """A stored time (SQLite text or a Postgres timestamp) as an aware UTC datetime."""
    return from_db_time(value)


@dataclass
class Database:
    url: str

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run one read-only query (`?` placeholders) on a fresh connection; rows as dicts."""
        if self.url.startswith("sqlite:"):
            conn = sqlite3.connect(self.url[len("sqlite:///") :], timeout=30)
            try:
                cursor = conn.execute(sql, tuple(params))
                names = [column[0] for column in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5, options="-c search_path=dfjob") as pg:
            pg_cursor = pg.execute(sql.replace("?", "%s"), tuple(params))
            assert pg_cursor.description is not None
            names = [column.name for column in pg_cursor.description]
            return [dict(zip(names, row, strict=True)) for row in pg_cursor.fetchall()]

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        [row] = self.rows(sql, params)
        return next(iter(row.values()))

    def jobs(self) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM jobs ORDER BY id")

    def runs(self) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM data_flow_runs ORDER BY id")


# -- the handle ----------------------------------------------------------------------------------


@dataclass
class Dfjob:
    """One config file (one database) and the commands run against it."""

    config: Path
    url: str
    daemons: list[Daemon] = field(default_factory=list)
    read_url: str | None = None  # where `db` reads, when the test process cannot use `url` (hosts)
    host: Host | None = None  # where commands and daemons run unless told otherwise (None: right here)

    @property
    def directory(self) -> Path:
        return self.config.parent

    @property
    def db(self) -> Database:
        return Database(self.read_url or self.url)

    def run(
        self, *args: str, timeout: float = 120, host: Host | None = None, env: Mapping[str, str] | None = None
    ) -> tuple[int, str, str]:
        return run_dfjob(self.config, *args, timeout=timeout, host=host or self.host, env=env)

    def json(self, *args: str) -> Any:
        """Run a command with `--json`; it must exit 0 and print one JSON document."""
        code, out, err = self.run(*args, "--json")
        assert code == 0, f"dfjob {' '.join(args)} exited {code}: {err}"
        return json.loads(out)

    def ok(self, *args: str, timeout: float = 120) -> str:
        """Run a command that must exit 0; returns its stderr."""
        code, _, err = self.run(*args, timeout=timeout)
        assert code == 0, f"dfjob {' '.join(args)} exited {code}: {err}"
        return err

    def start(
        self, *args: str, name: str = "daemon", host: Host | None = None, env: Mapping[str, str] | None = None
    ) -> Daemon:
        """Start `dfjob --config … ARGS…` in a new session (on `host`, with `env` added, when
        given); it is killed at teardown."""
        stderr_path = self.directory / f"{name}-{len(self.daemons)}.stderr"
        argv = [str(DFJOB), "--config", str(self.config), *args]
        with open(stderr_path, "wb") as stderr:
            options: dict[str, Any] = {
                "stdin": subprocess.DEVNULL,
                "stdout": subprocess.DEVNULL,
                "stderr": stderr,
                "env": _child_env(env),
                "cwd": self.directory,
                "start_new_session": True,
            }
            host = host or self.host
            process = host.run(argv, **options) if host is not None else subprocess.Popen(argv, **options)
        daemon = Daemon(process, stderr_path)
        self.daemons.append(daemon)
        return daemon

    def add_flow(self, name: str, class_path: str, *options: str, config: dict[str, Any] | None = None) -> int:
        args = ["flows", "add", name, "--class", class_path, *options]
        if config is not None:
            args += ["--config-json", json.dumps(config)]
        return int(self.json(*args)["id"])

    def trigger(self, ref: str, *options: str) -> int:
        result = self.json("trigger", ref, *options)
        assert result["deduplicated"] is False
        return int(result["job_id"])

    def job(self, job_id: int) -> dict[str, Any]:
        [job] = self.db.rows("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return job

    def runs_of(self, job_id: int) -> list[dict[str, Any]]:
        return self.db.rows("SELECT * FROM data_flow_runs WHERE job_id = ? ORDER BY id", (job_id,))

    def wait_for_pid(self, marker: Path, timeout: float = 30) -> int:
        """Wait until a flow has written its pid to `marker`: its run() has begun."""
        return wait_for(lambda: read_pid(marker), timeout=timeout, what=f"a pid in {marker}")


@pytest.fixture
def make_dfjob(tmp_path: Path) -> Iterator[Callable[..., Dfjob]]:
    """`make_dfjob(url, name=…, read_url=…, host=…, worker={…}, retry={…})`: a config in its own
    folder, daemons killed at the end. On a network: `host` is where its commands and daemons run
    by default, and `read_url` where `Dfjob.db` reads, since the test process cannot reach `url`
    (`network.postgres.local_url(db)`)."""
    daemons: list[Daemon] = []

    def make(
        url: str, name: str = "dfjob", read_url: str | None = None, host: Host | None = None, **sections: Any
    ) -> Dfjob:
        directory = tmp_path / name
        directory.mkdir(parents=True, exist_ok=True)
        return Dfjob(write_config(directory, url, **sections), url, daemons, read_url, host)

    yield make
    for daemon in daemons:
        daemon.kill_all()


@pytest.fixture
def dfjob(make_dfjob: Callable[..., Dfjob], database_url: str) -> Dfjob:
    """The default set-up on the test's backend."""
    return make_dfjob(database_url)


# -- separate hosts, a private Postgres, PgBouncer, skewed clocks -----------------------------------

# CI sets it: there a missing piece (root, `ip netns`, nftables, PgBouncer, libfaketime) is a failure.
REQUIRE_NETNS = os.environ.get("DFJOB_REQUIRE_NETNS") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it when DFJOB_REQUIRE_NETNS=1."""
    if REQUIRE_NETNS:
        pytest.fail(f"DFJOB_REQUIRE_NETNS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running Postgres 15 of the test's own on 127.0.0.1 (a free port): stop, restart, pause it at
    will. Stopped and removed at teardown, whatever happened."""
    try:
        postgres = PrivatePostgres()
    except Unavailable as exc:
        unavailable(str(exc))
    try:
        postgres.start()
        yield postgres
    finally:
        postgres.cleanup()


@pytest.fixture
def make_network() -> Iterator[Callable[..., Network]]:
    """`make_network(hosts=2, postgres=True)`: a Network (see tests/support/hosts.py) with that many
    hosts and, unless postgres=False, a private Postgres on `network.db_address`:5432. Every process,
    namespace, veth and bridge is gone after the test, whatever happened."""
    networks: list[Network] = []

    def make(hosts: int = 2, postgres: bool = True) -> Network:
        network = Network()
        networks.append(network)
        try:
            network.create(hosts=hosts)
        except Unavailable as exc:
            unavailable(str(exc))
        if postgres:
            network.start_postgres()
        return network

    yield make
    errors = []
    for network in reversed(networks):
        try:
            network.cleanup()
        except RuntimeError as exc:
            errors.append(str(exc))
    assert not errors, errors


@pytest.fixture
def network(make_network: Callable[..., Network]) -> Network:
    """Two hosts (`network.hosts`) and a private Postgres they reach at `network.url(db)`."""
    return make_network()


@pytest.fixture
def make_pgbouncer() -> Iterator[Callable[..., PgBouncer]]:
    """`make_pgbouncer(server_host, server_port, namespace=None, listen_addr="127.0.0.1", port=None,
    pool_mode="transaction", pool_size=20, settings=None)`: a running PgBouncer; stopped at teardown.
    In a network: `make_pgbouncer(network.db_address, 5432, namespace=network.db, listen_addr=network.db_address)`."""
    bouncers: list[PgBouncer] = []

    def make(server_host: str, server_port: int, **kwargs: Any) -> PgBouncer:
        try:
            bouncer = PgBouncer(server_host, server_port, **kwargs)
        except Unavailable as exc:
            unavailable(str(exc))
        bouncers.append(bouncer)
        return bouncer.start()

    yield make
    for bouncer in bouncers:
        bouncer.cleanup()


@pytest.fixture
def faketime() -> Callable[..., dict[str, str]]:
    """`faketime(offset_seconds, base=None)`: an environment whose processes see the wall clock
    shifted by the offset, the monotonic clock real (see tests/support/faketime.py)."""
    try:
        faketime_env(0)
    except Unavailable as exc:
        unavailable(str(exc))
    return faketime_env
