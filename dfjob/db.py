"""Database URLs to peewee databases, behind one proxy the models are bound to.

SQLite gets WAL, a busy timeout, foreign keys and `BEGIN IMMEDIATE` for every transaction (one
writer at a time, and no lock upgrades that fail halfway). Postgres goes through psycopg 3 with a
short connect timeout, so an unreachable server is a clear error within seconds.
A URL's password is never printed: `redact_url` and `scrub` are used wherever a URL or a driver
message could reach output or logs.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import parse_qs, unquote, urlsplit

import peewee

from dfjob.errors import DatabaseUnavailable, DfjobError

database_proxy = peewee.DatabaseProxy()
DEFAULT_SCHEMA = "dfjob"

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "full",
    "foreign_keys": 1,
    "busy_timeout": 30000,
}
CONNECT_TIMEOUT_SECONDS = 5

_password: str | None = None
# Postgres: the schema dfjob's tables live in (`database.schema`); None on SQLite.
_schema: str | None = None


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>://[^/@:]*):[^/]*@")  # greedy: up to the last @ of the netloc


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***` (even when the rest of it is malformed)."""
    url = _URL_PASSWORD.sub(r"\g<head>:***@", url, count=1)
    return _QUERY_PASSWORD.sub(r"\g<1>***", url)


def scrub(text: str) -> str:
    """Remove the current database password from a message, wherever a driver put it."""
    if _password:
        text = text.replace(_password, "***")
    return text


def make_database(url: str, base_dir: str) -> peewee.Database:
    """Build (not connect) the database a URL names; relative SQLite paths use `base_dir`."""
    global _password
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        path = sqlite_path(url, base_dir)
        return peewee.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=30, lock_type="IMMEDIATE")
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        _password = unquote(parts.password) if parts.password else None
        if _password is None:
            _password = parse_qs(parts.query).get("password", [None])[0]
        conninfo = "postgresql://" + url.split("://", 1)[1]
        return peewee.PostgresqlDatabase(
            conninfo, prefer_psycopg3=True, connect_timeout=CONNECT_TIMEOUT_SECONDS, autoconnect=True
        )
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


def pg_schema() -> str | None:
    """The Postgres schema of the database in use, or None on SQLite."""
    return _schema


def advisory_key(purpose: str, schema: str | None = None) -> int:
    """A Postgres advisory lock key for `purpose` in the schema in use (or `schema`): two dfjob
    installs that share one database (in two schemas) never share a lock."""
    digest = hashlib.blake2b(f"dfjob:{schema or _schema}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def connect(url: str, base_dir: str, schema: str = DEFAULT_SCHEMA) -> peewee.Database:
    """Bind the proxy to the URL's database and open a connection, or fail with one clear line."""
    global _schema
    database = make_database(url, base_dir)
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


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that mean the server went away, not that a statement was wrong."""
    if isinstance(exc, peewee.InterfaceError):
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
