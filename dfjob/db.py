"""Database URLs to peewee databases, behind one proxy the models are bound to.

SQLite gets WAL, a busy timeout, foreign keys and `BEGIN IMMEDIATE` for every transaction (one
writer at a time, and no lock upgrades that fail halfway). Postgres goes through psycopg 3 with a
short connect timeout, so an unreachable server is a clear error within seconds.
A URL's password is never printed: `passwords.redact_url` and `passwords.scrub` are used wherever a
URL or a driver message could reach output or logs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote, unquote

import peewee

from dfjob.drivers import load_psycopg
from dfjob.errors import DatabaseUnavailable, DfjobError
from dfjob.passwords import USER_PASSWORD, redact_url, remember, scrub, url_password

database_proxy = peewee.DatabaseProxy()
DEFAULT_SCHEMA = "dfjob"

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "full",
    "foreign_keys": 1,
    "busy_timeout": 30000,
}
CONNECT_TIMEOUT_SECONDS = 5
# Seconds after which a connection whose packets go unanswered is given up (workers use less).
DEFAULT_NETWORK_TIMEOUT = 30.0

# Postgres: the schema dfjob's tables live in (`database.schema`); None on SQLite.
_schema: str | None = None
# What the proxy is bound to: (url, base_dir, schema).
_bound: tuple[str, str, str] | None = None


def _conninfo(url: str) -> str:
    """The URL as libpq reads it: a password written with "/", "@" or "?" unescaped is escaped."""
    url = "postgresql://" + url.split("://", 1)[1]
    match = USER_PASSWORD.match(url)
    if not match:
        return url
    password = quote(unquote(match.group("password")), safe="")
    return f"{match.group('user')}:{password}@{match.group('rest')}"


def make_database(
    url: str, base_dir: str, network_timeout: float = DEFAULT_NETWORK_TIMEOUT, prepared_statements: bool = True
) -> peewee.Database:
    """Build (not connect) the database a URL names; relative SQLite paths use `base_dir`.

    Postgres connections detect a dead network path within about `network_timeout` seconds:
    TCP keepalives and `tcp_user_timeout` end a connection whose packets go unanswered, whether
    a query is in flight or not. `prepared_statements=False` is for PgBouncer in transaction
    pooling mode, which cannot keep a prepared statement from one transaction to the next.
    """
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        path = sqlite_path(url, base_dir)
        return peewee.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=30, lock_type="IMMEDIATE")
    if scheme in ("postgresql", "postgres"):
        remember(url_password(url))
        conninfo = _conninfo(url)
        options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "keepalives": 1,
            "keepalives_idle": max(1, round(network_timeout / 3)),
            "keepalives_interval": max(1, round(network_timeout / 6)),
            "keepalives_count": 3,
            "tcp_user_timeout": max(1000, round(network_timeout * 1000)),
        }
        if not prepared_statements:
            options["prepare_threshold"] = None
        load_psycopg()
        return peewee.PostgresqlDatabase(conninfo, prefer_psycopg3=True, autoconnect=True, **options)
    raise DfjobError(f"database.url: unknown scheme {scheme!r} in {redact_url(url)} (use sqlite or postgresql)")


def sqlite_path(url: str, base_dir: str) -> str:
    """`sqlite:///rel.db` is relative to `base_dir`; `sqlite:////abs.db` is absolute."""
    if not url.startswith("sqlite:///"):
        raise DfjobError(f"database.url: {url!r} is not of the form sqlite:///path.db")
    path = url[len("sqlite:///") :]
    if not path:
        raise DfjobError("database.url: the SQLite URL names no file")
    if path == ":memory:" or os.path.isabs(path):
        return path
    return os.path.join(base_dir, path)


def is_postgres(database: peewee.Database | None = None) -> bool:
    db = database or database_proxy.obj
    return isinstance(db, peewee.PostgresqlDatabase)


# Postgres: milliseconds a statement of this process may run (and a transaction sit idle) before
# the server ends it; None leaves the server's defaults. Workers keep theirs short (`lease/3`).
_statement_limit_ms: int | None = None


def set_statement_limit(seconds: float | None) -> None:
    global _statement_limit_ms
    _statement_limit_ms = None if seconds is None else max(100, round(seconds * 1000))


def statement_limit_ms() -> int | None:
    return _statement_limit_ms


def pg_schema() -> str | None:
    """The Postgres schema of the database in use, or None on SQLite."""
    return _schema


def _create_private(path: str) -> None:
    """A SQLite file dfjob creates is readable by its owner only; SQLite gives its `-wal` and
    `-shm` files the same mode."""
    if path == ":memory:" or os.path.exists(path):
        return
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def advisory_key(purpose: str, schema: str | None = None) -> int:
    """A Postgres advisory lock key for `purpose` in the schema in use (or `schema`): two dfjob
    installs that share one database (in two schemas) never share a lock."""
    digest = hashlib.blake2b(f"dfjob:{schema or _schema}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def is_connected_to(url: str, base_dir: str, schema: str = DEFAULT_SCHEMA) -> bool:
    """The proxy is bound to this database already (a Client in a process that opened it)."""
    return database_proxy.obj is not None and _bound == (url, base_dir, schema)


def connect(
    url: str,
    base_dir: str,
    schema: str = DEFAULT_SCHEMA,
    network_timeout: float = DEFAULT_NETWORK_TIMEOUT,
    prepared_statements: bool = True,
) -> peewee.Database:
    """Bind the proxy to the URL's database and open a connection, or fail with one clear line."""
    global _schema, _bound
    database = make_database(url, base_dir, network_timeout, prepared_statements)
    _bound = (url, base_dir, schema)
    if isinstance(database, peewee.SqliteDatabase):
        _create_private(str(database.database))
    _schema = schema if isinstance(database, peewee.PostgresqlDatabase) else None
    database_proxy.initialize(database)  # the models pick up `_schema` here (see models.py)
    try:
        database.connect(reuse_if_open=True)
    except (peewee.OperationalError, peewee.InterfaceError) as exc:
        raise DatabaseUnavailable(f"cannot connect to {redact_url(url)}: {describe_error(exc)}") from None
    return database


def describe_error(exc: BaseException) -> str:
    """A driver error as one scrubbed line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return scrub(text)


# Postgres refusals that say "not now", not "never": a statement or lock timeout (a server that did
# not answer in time), a deadlock or serialization failure, a server shutting down.
TRANSIENT_SQLSTATES = frozenset({"57014", "55P03", "40P01", "40001", "57P01", "57P02", "57P03", "53300"})


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that mean the server went away or could not answer in time, not that a
    statement was wrong: the caller backs off and tries again."""
    if isinstance(exc, peewee.InterfaceError):
        return True
    # peewee wraps the driver's exception: the original, with its SQLSTATE, is the context.
    for original in (exc.__cause__, exc.__context__, *(exc.args[:1] if exc.args else ())):
        if getattr(original, "sqlstate", None) in TRANSIENT_SQLSTATES:
            return True
    if isinstance(exc, peewee.OperationalError):
        text = str(exc).lower()
        if "locked" in text or "busy" in text:  # SQLite contention: a retry, not an outage
            return True
        markers = (
            "connection",
            "server closed",
            "terminating",
            "could not connect",
            "shutting down",
            "the database system",
        )
        return any(marker in text for marker in markers)
    return False


def reset_connection() -> None:
    """Drop a broken connection so the next statement opens a fresh one."""
    database = database_proxy.obj
    if database is None:
        return
    try:
        database.close()
    except Exception:  # noqa: BLE001 (the socket is already gone; closing is best effort)
        conn = database._state.conn
        database._state.reset()
        del conn


def close_database() -> None:
    """Close this thread's connection, if any (best effort: the process may be exiting anyway)."""
    database = database_proxy.obj
    if database is not None and not database.is_closed():
        with suppress(peewee.DatabaseError, peewee.InterfaceError):
            database.close()


@contextmanager
def write_transaction() -> Iterator[None]:
    """One short write transaction (`BEGIN IMMEDIATE` on SQLite)."""
    with database_proxy.obj.atomic():
        yield
