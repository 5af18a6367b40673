"""`dfjob serve` in tests: started as the real command on a free port, waited for, and asked
over HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.e2e.conftest import Daemon, Dfjob
from tests.support.hosts import free_port
from tests.support.waiting import wait_for

TOKEN = "test-token-0123456789abcdef"


@dataclass
class Served:
    """A running `dfjob serve` and the base URL it answers on."""

    daemon: Daemon
    base: str

    def request(
        self, method: str, path: str, token: str | None = TOKEN, json: Any = None, content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:  # fmt: skip
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.request(method, self.base + path, headers=headers, json=json, content=content, timeout=30)

    def get(self, path: str, token: str | None = TOKEN) -> httpx.Response:
        return self.request("GET", path, token)

    def post(
        self, path: str, token: str | None = TOKEN, json: Any = None, content: bytes | None = None
    ) -> httpx.Response:
        return self.request("POST", path, token, json=json, content=content)

    def ok(self, path: str) -> Any:
        """GET `path`, which must answer 200 with JSON."""
        response = self.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()


def execute_sql(url: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Change the database behind the server's back (`?` placeholders), committed at once."""
    if url.startswith("sqlite:"):
        import sqlite3

        with sqlite3.connect(url[len("sqlite:///") :]) as conn:
            conn.execute(sql, params)
        return
    import psycopg

    with psycopg.connect(url, autocommit=True, options="-c search_path=dfjob") as pg:
        pg.execute(sql.replace("?", "%s"), params)


def _answers(base: str) -> bool:
    try:
        httpx.get(base + "/healthz", timeout=2)
    except httpx.TransportError:
        return False
    return True


def start_serve(dfjob: Dfjob, *args: str) -> Served:
    """`dfjob serve --port <free>` against `dfjob`'s config; returns once it answers HTTP."""
    port = free_port()
    daemon = dfjob.start("serve", "--port", str(port), *args, name="serve")
    base = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        if daemon.process.poll() is not None:
            raise AssertionError(f"dfjob serve exited {daemon.process.returncode}: {daemon.stderr()}")
        return _answers(base)

    wait_for(answering, timeout=30, interval=0.05, what="dfjob serve to answer")
    return Served(daemon, base)
