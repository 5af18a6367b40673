"""peewee, without psycopg until a Postgres database is opened.

peewee imports psycopg as it is imported itself (about 0.2 s of every command's start), though
only Postgres needs it: each command on the embedded SQLite would pay for it. This module imports
peewee with psycopg hidden, and `load_psycopg` gives peewee the driver when a Postgres database is
made (`db.make_database`). `dfjob.db` imports peewee from here, before any other dfjob module does.
"""

from __future__ import annotations

import sys

from dfjob.errors import DfjobError

_hide = "psycopg" not in sys.modules and "peewee" not in sys.modules
if _hide:
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # makes `import psycopg` fail in peewee
try:
    import peewee
finally:
    if _hide:
        del sys.modules["psycopg"]


def load_psycopg() -> None:
    """Give peewee psycopg 3 and the names it takes from it, as its own import would have."""
    if getattr(peewee, "psycopg", None) is not None:
        return
    try:
        import psycopg
        from psycopg.pq import TransactionStatus
        from psycopg.types.json import Json, Jsonb
    except ImportError:
        raise DfjobError("Postgres needs psycopg: pip install 'dfjob[postgres]'") from None
    names = {"psycopg": psycopg, "TransactionStatus": TransactionStatus, "Json_pg3": Json, "Jsonb_pg3": Jsonb}
    for name, value in names.items():
        setattr(peewee, name, value)


__all__ = ["load_psycopg", "peewee"]
