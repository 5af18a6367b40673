"""Waking idle workers the moment a job is enqueued; polling stays the source of truth.

- Postgres: enqueue sends a NOTIFY on the schema's channel in its transaction (see `Store.notify`); each
  worker keeps one extra connection that LISTENs, and its socket is one more thing the worker's
  loop waits on. `worker.notify = false` turns this off (PgBouncer in transaction mode).
- SQLite has no notifications, but its workers always share a host with the database file: each
  idle worker binds a Unix datagram socket in a folder beside the file, and an enqueue sends one
  byte to each socket there after it commits. A socket whose worker died is removed by the next
  sender.
Either way a lost wake-up costs at most one poll interval, never a job.

The SQLite folder is private: created with mode 0700, refused when it is a symlink, owned by
someone else or open to others (a wake-up folder planted elsewhere must not make dfjob remove
files there), and only sockets are ever removed from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import uuid
from typing import Protocol

import peewee

from dfjob.db import database_proxy, is_postgres, pg_schema
from dfjob.errors import DfjobError

# AF_UNIX paths are limited to 108 bytes; longer ones are reached through /proc/self/fd.
MAX_SOCKET_PATH = 100


def channel() -> str:
    """The NOTIFY channel of the schema in use: two installs in one database wake only their own
    workers. Channel names are identifiers (at most 63 bytes): a long schema name is hashed."""
    name = f"dfjob_{pg_schema()}"
    if len(name) > 63:
        name = "dfjob_" + hashlib.blake2b(name.encode(), digest_size=16).hexdigest()
    return name


# What a wake-up says: a queue name (a job is ready there), CANCEL (a running job was asked to
# stop) or SCHEDULE (a flow's schedule changed: the scheduler looks again when it is next due).
CANCEL = "cancel"
SCHEDULE = "schedule"


class Listener(Protocol):
    def fileno(self) -> int: ...

    def drain(self) -> set[str]:
        """Every wake-up that arrived, read and forgotten: what they said."""
        ...

    def close(self) -> None: ...


def sqlite_wake_dir(database: peewee.Database) -> str | None:
    """The folder beside a SQLite file where idle workers' sockets live (None for `:memory:`)."""
    path = str(database.database)
    if path == ":memory:" or not path:
        return None
    return os.path.abspath(path) + "-wake"


@contextlib.contextmanager
def _short_path(folder: str, name: str):  # type: ignore[no-untyped-def]
    """A socket address for folder/name that fits AF_UNIX's limit."""
    full = os.path.join(folder, name)
    if len(full.encode()) <= MAX_SOCKET_PATH:
        yield full
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def checked_folder(folder: str, create: bool) -> bool:
    """True when `folder` is a private folder of ours (created, mode 0700, when `create` and it is
    missing); False when it does not exist; refused (DfjobError) when it is not safe to use."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise DfjobError(f"wake-up folder {folder} is not a plain folder (a symlink?): refusing to use it")
    if info.st_uid != os.geteuid():
        raise DfjobError(f"wake-up folder {folder} belongs to another user: refusing to use it")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return True


class SQLiteListener:
    """A datagram socket beside the database file that enqueuers poke."""

    def __init__(self, folder: str) -> None:
        checked_folder(folder, create=True)
        self.folder = folder
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        with _short_path(folder, self.name) as address:
            self.sock.bind(address)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> set[str]:
        said: set[str] = set()
        with contextlib.suppress(BlockingIOError, OSError):
            while data := self.sock.recv(64):
                said.add(data.decode(errors="replace"))
        return said

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.folder, self.name))


class PostgresListener:
    """A dedicated autocommit connection that LISTENs on the enqueue channel."""

    def __init__(self, conninfo: str) -> None:
        import psycopg

        self.conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
        self.conn.execute(f'LISTEN "{channel()}"')

    def fileno(self) -> int:
        return self.conn.fileno()

    def drain(self) -> set[str]:
        return {notice.payload for notice in self.conn.notifies(timeout=0)}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def open_listener(enabled: bool) -> Listener | None:
    """The wake-up channel for this worker's database, or None (polling only)."""
    database = database_proxy.obj
    if is_postgres(database):
        if not enabled:
            return None
        return PostgresListener(database.database)
    folder = sqlite_wake_dir(database)
    return SQLiteListener(folder) if folder else None


def wake_sqlite_workers(said: str = "j") -> None:
    """After an enqueue (or a cancel) commits on SQLite: poke every worker of this database file."""
    folder = sqlite_wake_dir(database_proxy.obj)
    try:
        if folder is None or not checked_folder(folder, create=False):
            return
        names = [name for name in os.listdir(folder) if name.endswith(".sock")]
    except (DfjobError, OSError):
        return  # waking is an optimisation: the workers still poll
    if not names:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for name in names:
            with _short_path(folder, name) as address:
                try:
                    sender.sendto(said.encode(), address)
                except BlockingIOError:
                    pass  # its buffer is full of wake-ups already
                except (ConnectionRefusedError, FileNotFoundError):
                    _remove_socket(os.path.join(folder, name))  # its worker is gone
                except OSError:
                    pass


def _remove_socket(path: str) -> None:
    """Remove a dead worker's socket, and nothing that is not a socket."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
