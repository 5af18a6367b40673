"""A psycopg session driven through stdin/stdout, one JSON line each way (see hosts.SqlProbe).

Requests: {"op": "connect", "url": ..., "connect_timeout": 5}, {"op": "query", "sql": ...}, {"op": "close"}.
Replies: {"ok": true, "rows": [[...], ...], "elapsed": seconds} or {"ok": false, "error": "Type: message", ...}.
Run by path (`python tests/support/sql_probe.py`) inside a host's namespace.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import psycopg


def main() -> None:
    conn: psycopg.Connection[Any] | None = None
    for line in sys.stdin:
        request = json.loads(line)
        started = time.monotonic()
        reply: dict[str, Any] = {"ok": True}
        try:
            if request["op"] == "connect":
                if conn is not None:
                    conn.close()
                conn = psycopg.connect(
                    request["url"],
                    autocommit=True,
                    connect_timeout=int(request.get("connect_timeout", 5)),
                    prepare_threshold=None,
                )
            elif request["op"] == "query":
                assert conn is not None, "not connected"
                cursor = conn.execute(request["sql"])
                reply["rows"] = [list(row) for row in cursor.fetchall()] if cursor.description else []
            elif request["op"] == "close":
                if conn is not None:
                    conn.close()
                conn = None
            else:
                raise ValueError(f"unknown op {request['op']!r}")
        except Exception as exc:  # noqa: BLE001 (every failure is a reply, the session goes on)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}
        reply["elapsed"] = round(time.monotonic() - started, 3)
        print(json.dumps(reply, default=str), flush=True)


if __name__ == "__main__":
    main()
