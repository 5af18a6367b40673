"""waitress, run as a daemon: listen, serve on a thread pool, stop cleanly when asked.

The event loop runs in the calling thread in short turns, so a stop (a flag set by the signal
handler) is seen within `TURN_SECONDS`; then the listening sockets close and the threads finish
the requests they hold, within `DRAIN_SECONDS`.
"""

from __future__ import annotations

import threading
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

from dfjob.errors import DfjobError

TURN_SECONDS = 0.25
DRAIN_SECONDS = 5.0
THREADS = 8


def listen_address(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class WebServer:
    """One waitress server on `host:port`; `run()` serves until `request_stop()`."""

    def __init__(self, app: Any, host: str, port: int, threads: int = THREADS) -> None:
        self._map: dict[int, Any] = {}
        self._stop = threading.Event()
        listen = listen_address(host, port)
        try:
            self.server: Any = create_server(
                app,
                map=self._map,
                listen=listen,
                threads=threads,
                ident="dfjob",
                # REMOTE_ADDR stays the socket peer: no proxy header is trusted.
                clear_untrusted_proxy_headers=True,
                expose_tracebacks=False,
                asyncore_use_poll=True,
            )
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise DfjobError(f"cannot listen on {listen}: {reason}") from None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where it listens (the port the system chose, when 0 was asked for)."""
        servers = [item for item in self._map.values() if hasattr(item, "effective_port")]
        return [(str(item.effective_host), int(item.effective_port)) for item in servers]

    def request_stop(self) -> None:
        """Only sets a flag: safe from a signal handler."""
        self._stop.set()

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=TURN_SECONDS, map=self._map, use_poll=True, count=1)
        finally:
            self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=DRAIN_SECONDS)
            wasyncore.close_all(self._map)
