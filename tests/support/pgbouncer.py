"""A real PgBouncer in front of a Postgres, for tests: transaction pooling, trust auth.

Debian 12 ships PgBouncer 1.18.0 (`pgbouncer --version`). Prepared statements only survive
transaction pooling from PgBouncer 1.21 on (with `max_prepared_statements`), so with this version a
client must not prepare: psycopg needs `prepare_threshold=None` (its default, 5, prepares a query
from its fifth run on, and the next transaction may then land on a server that never saw it).

It runs as the unprivileged test user (PgBouncer refuses root), in a network namespace when given
one. `url()` is its TCP address; `local_url()` goes through its Unix socket and works from anywhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.support.hosts import (
    Namespace,
    Unavailable,
    as_server_user,
    free_port,
    kill_process,
    private_dir,
    run,
    server_user_env,
)
from tests.support.waiting import wait_for

PGBOUNCER = Path(os.environ.get("DFJOB_PGBOUNCER", "/usr/sbin/pgbouncer"))


def pgbouncer_version(binary: Path = PGBOUNCER) -> str:
    """`PgBouncer 1.18.0` (the first line of `pgbouncer --version`); Unavailable when not installed."""
    if not binary.exists():
        raise Unavailable(f"PgBouncer is not installed ({binary}; Debian package `pgbouncer`)")
    return run([str(binary), "--version"]).splitlines()[0].strip()


class PgBouncer:
    """One pgbouncer process and its folder (config, auth file, log, Unix socket)."""

    def __init__(
        self,
        server_host: str,
        server_port: int,
        *,
        namespace: Namespace | None = None,
        listen_addr: str = "127.0.0.1",
        port: int | None = None,
        pool_mode: str = "transaction",
        pool_size: int = 20,
        settings: Mapping[str, str | int] | None = None,
        binary: Path = PGBOUNCER,
    ) -> None:
        """`server_host` is an address or a Unix socket folder; `port` defaults to 6432 inside a
        namespace (nothing else listens there) and to a free port outside."""
        self.version = pgbouncer_version(binary)
        self.binary = binary
        self.server_host = server_host
        self.server_port = server_port
        self.namespace = namespace
        self.listen_addr = listen_addr
        self.port = port if port is not None else (6432 if namespace is not None else free_port(listen_addr))
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.settings = dict(settings or {})
        self.root = private_dir("pgbouncer")
        self.log_path = self.root / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"PgBouncer({self.listen_addr}:{self.port} -> {self.server_host}:{self.server_port})"

    def _write_config(self) -> Path:
        auth_file = self.root / "userlist.txt"
        auth_file.write_text('"postgres" ""\n', encoding="utf-8")  # trust still wants the user listed
        settings: dict[str, str | int] = {
            "listen_addr": self.listen_addr,
            "listen_port": self.port,
            "unix_socket_dir": str(self.root),
            "auth_type": "trust",
            "auth_file": str(auth_file),
            "pool_mode": self.pool_mode,
            "default_pool_size": self.pool_size,
            "max_client_conn": 500,
            "ignore_startup_parameters": "extra_float_digits",
            "admin_users": "postgres",
            "server_login_retry": 1,
            "server_connect_timeout": 5,
        }
        settings.update(self.settings)
        config = self.root / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n\n"
            "[pgbouncer]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()),
            encoding="utf-8",
        )
        return config

    def start(self) -> PgBouncer:
        """Start it in the foreground (its log in `log_path`) and wait until its socket accepts."""
        argv = as_server_user([str(self.binary), str(self._write_config())])
        if self.namespace is not None:
            argv = self.namespace.argv(argv)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
                env=server_user_env(self.root),
                start_new_session=True,
            )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited {self.process.returncode}:\n{self.log()}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.root / f".s.PGSQL.{self.port}"))
                except OSError:
                    return False
            return True

        wait_for(ready, timeout=20, what=f"{self} accepting connections")
        return self

    def stop(self) -> None:
        """SIGTERM (immediate shutdown), SIGKILL if it lingers."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_process(self.process)
        self.process = None

    def cleanup(self) -> None:
        """Stop it and remove its folder; safe to call twice, and after its namespace is gone."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    def url(self, database: str = "postgres", host: str | None = None) -> str:
        """`postgresql://postgres@HOST:PORT/DATABASE` (HOST defaults to its listen address)."""
        return f"postgresql://postgres@{host or self.listen_addr}:{self.port}/{database}"

    def local_url(self, database: str = "postgres") -> str:
        """Through its Unix socket: usable from the test process whatever the namespace."""
        return f"postgresql://postgres@/{database}?host={quote(str(self.root), safe='/')}&port={self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
