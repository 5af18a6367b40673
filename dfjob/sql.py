"""Running SQL on either database.

Tables are written `dfjob.jobs`: that names the configured Postgres schema (`database.schema`)
there and the plain table on SQLite. `?` placeholders everywhere, turned into psycopg's `%s` on
Postgres. `IN` lists are one array parameter on Postgres, so a statement's text never depends on
how many values it gets and psycopg prepares it once; and a pipeline that sends several
statements to Postgres in one round trip.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any

import peewee

from dfjob.db import database_proxy, is_postgres, pg_schema

_QUALIFIER = re.compile(r"\bdfjob\.(?=[a-z_])")


@functools.lru_cache(maxsize=512)
def to_dialect(sql: str, schema: str | None) -> str:
    """The statement for the database in use: Postgres when `schema` is given, else SQLite."""
    if schema is None:
        return _QUALIFIER.sub("", sql)
    return _QUALIFIER.sub(f'"{schema}".', sql).replace("?", "%s")


def execute(sql: str, params: Sequence[Any] = ()) -> Any:
    """Run one statement on the current database; returns the cursor."""
    return database_proxy.obj.execute_sql(to_dialect(sql, pg_schema()), params)


def marks(count: int) -> str:
    return ", ".join("?" * count)


def in_values(column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    """`column IN (…)` and its parameters."""
    if is_postgres():
        return f"{column} = ANY(?)", [list(values)]
    return f"{column} IN ({marks(len(values))})", list(values)


def dump_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def pipeline(statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple[Any, ...]]]:
    """Postgres: send every statement at once and read all results after one sync."""
    database = database_proxy.obj
    # Driver errors become peewee's, as for every other statement (the stubs do not declare it).
    with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
        conn = database.connection()
        with conn.pipeline():
            cursors = [conn.cursor() for _ in statements]
            for cursor, (sql, params) in zip(cursors, statements, strict=True):
                cursor.execute(to_dialect(sql, pg_schema()), params)
        return [cursor.fetchall() if cursor.description else [] for cursor in cursors]
