"""The `dfjob` command's core: the top-level group, what every command shares (settings, the
database, output) and the entry point. The commands live in the modules beside this one.

Every refused request ends as one `Error: …` line on stderr and exit status 1; exit 2 is left to
click's own parse errors; tracebacks appear only with `--debug`.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click
import peewee

from dfjob import __version__, dbclock, events, migrations, signals
from dfjob.config import LOG_LEVELS, Settings, load_settings, resolve_path
from dfjob.db import (
    DEFAULT_NETWORK_TIMEOUT,
    close_database,
    connect,
    describe_error,
    is_connection_error,
    reset_connection,
    sqlite_path,
)
from dfjob.errors import DatabaseUnavailable, DfjobError
from dfjob.flow import add_import_paths
from dfjob.passwords import redact_url, scrub
from dfjob.text import printable

_debug = False
# Commands that run until stopped: SIGTERM/SIGINT stop them cleanly (see `signals`).
DAEMONS = frozenset({"worker", "scheduler", "serve"})
MAX_START_BACKOFF = 30.0


class App:
    """What every command shares: settings, read once; the database, opened on first need."""

    def __init__(self, config_path: str | None, database_url: str | None, log_format: str | None) -> None:
        self._args = (config_path, database_url, log_format)
        self._settings: Settings | None = None
        self._open = False

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(*self._args)
        return self._settings

    def open(
        self, writes: bool = True, daemon: bool = False, network_timeout: float = DEFAULT_NETWORK_TIMEOUT
    ) -> Settings:
        """Settings, logging, monitoring callbacks and a database at this release's schema.

        A command that writes creates the tables of an empty database; one that only reads
        (`writes=False`) creates nothing and refuses a database that is not there.
        """
        settings = self.settings
        if not self._open:
            self.configure_logging(daemon)
            # Flow folders first: monitoring callbacks may live there too.
            add_import_paths(tuple(resolve_path(settings, path) for path in settings.flows.paths))
            events.load_callbacks(settings)
            self._prepare(writes, daemon, network_timeout)
            dbclock.sync()
            self._open = True
        return settings

    def configure_logging(self, daemon: bool) -> None:
        settings = self.settings
        level = settings.log.level
        if not daemon and events.resolved_format(settings.log.format) == "console" and level != "debug":
            # At a terminal a command's own line says what happened; its lifecycle events
            # (still given to callbacks, and to JSON logs) would only say it twice.
            level = max(level, "warning", key=LOG_LEVELS.index)
        events.configure_logging(settings.log.format, level)

    def _prepare(self, writes: bool, daemon: bool, network_timeout: float) -> None:
        """Open the database and check its schema. A daemon whose database cannot be reached
        waits for it (`db.unavailable`, with backoff) instead of exiting; a stop ends the wait."""
        backoff = 0.0
        while True:
            try:
                migrations.prepare(create=writes, where=self.connect(writes, network_timeout))
                return
            except Exception as exc:
                if not daemon or not (isinstance(exc, DatabaseUnavailable) or is_connection_error(exc)):
                    raise
                backoff = min(MAX_START_BACKOFF, max(1.0, backoff * 2))
                events.emit(events.DB_UNAVAILABLE, error=str(exc) or describe_error(exc), retry_in=backoff)
                reset_connection()
                if signals.stopped.wait(backoff):
                    raise SystemExit(0) from None

    def connect(self, writes: bool, network_timeout: float = DEFAULT_NETWORK_TIMEOUT) -> str:
        """Open the database without checking its schema; returns how to name it in messages.
        Without `writes`, a SQLite file that does not exist is refused rather than created."""
        settings = self.settings
        url = settings.database.url
        if url.startswith("sqlite:"):
            where = sqlite_path(url, settings.base_dir)
            if not writes and where != ":memory:" and not os.path.exists(where):
                raise DfjobError(f"no dfjob database at {where} (run `dfjob db init`)")
        else:
            where = f"{redact_url(url)} (schema {settings.database.schema})"
        database = settings.database
        connect(url, settings.base_dir, database.schema, network_timeout, database.prepared_statements)
        return where


def current_app() -> App:
    app = click.get_current_context().find_object(App)
    if app is None:
        raise RuntimeError("a dfjob command ran outside the `dfjob` group")
    return app


def emit(as_json: bool, value: Any, text: Callable[[], str]) -> None:
    # Callbacks print to stderr only while stdout is theirs to borrow: let them finish first.
    events.flush()
    if as_json:
        click.echo(json.dumps(value, ensure_ascii=False))
    else:
        click.echo(text())


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", help="Config file (default: $DFJOB_CONFIG, ./dfjob.toml).")
@click.option("--database-url", metavar="URL", help="Overrides database.url and $DFJOB_DATABASE_URL.")
@click.option("--log-format", type=click.Choice(["json", "console", "auto"]), help="Overrides log.format.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="dfjob")
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, database_url: str | None, log_format: str | None, debug: bool
) -> None:
    """dfjob: run Python data flows on a schedule and on demand, with a full run history."""
    global _debug
    _debug = debug
    if ctx.invoked_subcommand not in DAEMONS:
        signals.release()
    ctx.obj = App(config_path, database_url, log_format)


# -- entry point ---------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    if _debug:
        click.echo(scrub(traceback.format_exc()).rstrip(), err=True)
    click.echo(f"Error: {printable(' '.join(message.split()))}", err=True)
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; every failure is one `Error: …` line and exit status 1."""
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="dfjob", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted")
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DfjobError as exc:
        _fail(str(exc))
    except peewee.DatabaseError as exc:
        _fail(f"database error: {describe_error(exc)}")
    except KeyboardInterrupt:
        _fail("interrupted")
    except Exception as exc:  # noqa: BLE001 (a bug still ends as one Error line; --debug shows it)
        _fail(f"{type(exc).__name__}: {describe_error(exc)}")
    finally:
        events.flush()
        close_database()
    sys.exit(result if isinstance(result, int) else 0)
