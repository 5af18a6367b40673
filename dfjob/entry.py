"""The `dfjob` command's entry point. Stop signals are caught before anything else is imported,
so a daemon stopped at any moment of its start exits cleanly (see `signals`)."""

from __future__ import annotations


def main() -> None:
    from dfjob import signals

    signals.catch_early()
    from dfjob.drivers import defer_psycopg

    defer_psycopg()  # a command on SQLite never imports the Postgres driver
    from dfjob.cli import main as run

    run()
