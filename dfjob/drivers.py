"""For the `dfjob` command, peewee without psycopg until a Postgres database is opened.

peewee imports psycopg as it is imported itself (about 0.15 s of every command's start), though
only Postgres needs it: each command on the embedded SQLite would pay for it. The command's entry
point calls `defer_psycopg` first, which imports peewee with psycopg hidden; `load_psycopg` gives
peewee the driver when a Postgres database is made (`db.make_database`), or before monitoring
callbacks are imported (user code may open a peewee Postgres database of its own). An application
that imports dfjob keeps its peewee as peewee made itself.
A test compares peewee after `load_psycopg` with peewee imported as usual, name by name.
"""

from __future__ import annotations

import sys

from dfjob.errors import DfjobError


def defer_psycopg() -> None:
    """Import peewee without psycopg, unless either is imported already."""
    if "peewee" in sys.modules or "psycopg" in sys.modules:
        return
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # makes `import psycopg` fail in peewee
    try:
        import peewee  # noqa: F401
    finally:
        del sys.modules["psycopg"]


def load_psycopg() -> None:
    """Give peewee psycopg 3 and the names it takes from it, as its own import would have."""
    import peewee

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
    # The adapter's class body reads the driver's transaction states at import; without them it
    # cannot tell a broken connection from an idle one.
    adapter = peewee.Psycopg3Adapter
    adapter.txn_idle = TransactionStatus.IDLE
    adapter.txn_inerror = TransactionStatus.INERROR
    adapter.txn_unknown = TransactionStatus.UNKNOWN


__all__ = ["defer_psycopg", "load_psycopg"]
