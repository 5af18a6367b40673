"""Settings: frozen dataclasses read from TOML, the environment and command-line flags.

Lookup order for the file: `--config PATH`, `$DFJOB_CONFIG`, then `dfjob.toml` in the working
directory or the nearest folder above it (as git finds `.git`); none means defaults.
`$DFJOB_DATABASE_URL` and `--database-url` override `database.url`. Relative paths in a file are
relative to that file's folder, so cron, systemd and a shell reach the same database.
Every check of user-given names (queues, data flows, modules) lives here too.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dfjob.errors import DfjobError
from dfjob.schedule import parse_duration

# What no database stores as text: NUL, and surrogates that are not part of a pair.
UNSTORABLE_TEXT = re.compile(r"[\x00\ud800-\udfff]")
QUEUE_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
FLOW_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,127}")
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///dfjob.db"
    # Postgres: the schema that holds dfjob's tables, apart from an application's own.
    schema: str = "dfjob"
    # Postgres: false behind PgBouncer in transaction pooling mode (before 1.21), which cannot
    # keep a prepared statement from one transaction to the next.
    prepared_statements: bool = True


@dataclass(frozen=True)
class WorkerSettings:
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 1
    poll_interval: float = 1.0
    notify: bool = True
    lease_seconds: float = 60.0
    shutdown_grace: float = 30.0
    max_result_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 3
    backoff_initial: float = 10.0
    backoff_max: float = 3600.0


@dataclass(frozen=True)
class RunSettings:
    # Output kept per run: its first and last halves, with a marker of what was cut between.
    log_max_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class RetentionSettings:
    finished_jobs: str = "30d"


@dataclass(frozen=True)
class QueueSettings:
    allowed: tuple[str, ...] = ()


@dataclass(frozen=True)
class FlowSettings:
    paths: tuple[str, ...] = ()
    allowed_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class MonitoringSettings:
    callbacks: tuple[str, ...] = ()
    callback_timeout: float = 5.0


ALERT_EVENTS = ("job.failed", "flow.late", "queue.stalled")
ALERT_FORMATS = ("json", "slack")


@dataclass(frozen=True)
class AlertSettings:
    """One `[[alerts]]` destination: where to POST which alerts, in which body, signed or not."""

    url: str = ""
    on: tuple[str, ...] = ALERT_EVENTS
    format: str = "json"
    # HMAC-SHA256 key: the body's signature goes in `X-Dfjob-Signature`.
    secret: str = ""


@dataclass(frozen=True)
class ServeSettings:
    """`dfjob serve`: where it listens, who may read and write, and from which networks."""

    host: str = "127.0.0.1"
    port: int = 8080
    tokens: tuple[str, ...] = ()
    # A file of tokens, one per line (blank lines and `#` comments skipped), read when serve starts.
    token_file: str = ""
    public_read: bool = False
    allow_cidrs: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class LogSettings:
    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    runs: RunSettings = field(default_factory=RunSettings)
    queues: QueueSettings = field(default_factory=QueueSettings)
    flows: FlowSettings = field(default_factory=FlowSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    log: LogSettings = field(default_factory=LogSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    alerts: tuple[AlertSettings, ...] = ()
    # The folder relative paths are resolved against: the config file's, else the working directory.
    base_dir: str = "."
    # The config file these settings were read from, if any (`doctor` says which).
    config_file: str | None = None


def load_settings(
    config_path: str | None = None,
    database_url: str | None = None,
    log_format: str | None = None,
) -> Settings:
    """Build Settings from the first config file found, then the environment, then flags."""
    path = _find_config_file(config_path)
    settings = Settings(base_dir=os.getcwd())
    if path is not None:
        settings = replace(_read_file(path), config_file=str(path.resolve()))
    url = database_url or os.environ.get("DFJOB_DATABASE_URL")
    if url:
        settings = replace(settings, database=replace(settings.database, url=_from_working_directory(url)))
    if log_format:
        _check_choice("--log-format", log_format, LOG_FORMATS)
        settings = replace(settings, log=replace(settings.log, format=log_format))
    return settings


def _from_working_directory(url: str) -> str:
    """A relative SQLite path given on the command line or in the environment is relative to
    the working directory, not to the config file (that rule is for paths written in the file)."""
    prefix = "sqlite:///"
    path = url[len(prefix) :] if url.startswith(prefix) else None
    if path is None or not path or path == ":memory:" or os.path.isabs(path):
        return url
    return prefix + os.path.abspath(path)


def _find_config_file(config_path: str | None) -> Path | None:
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise DfjobError(f"config file not found: {config_path}")
        return path
    from_env = os.environ.get("DFJOB_CONFIG")
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise DfjobError(f"config file not found: {from_env} (from $DFJOB_CONFIG)")
        return path
    folder = Path.cwd()
    for candidate in (folder, *folder.parents):
        local = candidate / "dfjob.toml"
        if local.is_file():
            return local
    return None


def _read_file(path: Path) -> Settings:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DfjobError(f"{path}: cannot read config file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DfjobError(f"{path}: invalid TOML: {exc}") from None
    sections: dict[str, Any] = {}
    defaults = Settings()
    for name, value in data.items():
        if name == "alerts":
            sections[name] = _alerts(path, value)
            continue
        section_type = _section_types().get(name)
        if section_type is None:
            raise DfjobError(f"{path}: unknown section [{name}]")
        if not isinstance(value, dict):
            raise DfjobError(f"{path}: [{name}] must be a table")
        sections[name] = _build_section(path, name, section_type, getattr(defaults, name), value)
    settings = Settings(base_dir=str(path.resolve().parent), **sections)
    validate(settings, str(path))
    return settings


def _section_types() -> dict[str, type]:
    not_sections = ("base_dir", "config_file", "alerts")
    return {f.name: type(getattr(Settings(), f.name)) for f in fields(Settings) if f.name not in not_sections}


def _alerts(path: Path, value: Any) -> tuple[AlertSettings, ...]:
    """`[[alerts]]`: an array of tables, each checked like a section."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise DfjobError(f"{path}: alerts must be [[alerts]] tables")
    return tuple(_build_section(path, "alerts", AlertSettings, AlertSettings(), item) for item in value)


def _build_section(path: Path, name: str, section_type: type, default: Any, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(section_type)}
    given: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise DfjobError(f"{path}: unknown key {name}.{key}")
        given[key] = _coerce(path, f"{name}.{key}", getattr(default, key), value)
    return replace(default, **given)


def _coerce(path: Path, key: str, default: Any, value: Any) -> Any:
    """Check a value against the type of its default; ints are welcome where floats are."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise DfjobError(f"{path}: {key} must be true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise DfjobError(f"{path}: {key} must be a whole number")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise DfjobError(f"{path}: {key} must be a number")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise DfjobError(f"{path}: {key} must be a string")
    if isinstance(default, tuple):
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise DfjobError(f"{path}: {key} must be a list of strings")
    raise AssertionError(f"no coercion for {key}")


def validate(settings: Settings, source: str) -> None:
    """Refuse values that parse but make no sense, naming where they came from."""
    worker, retry = settings.worker, settings.retry
    if not worker.queues:
        raise DfjobError(f"{source}: worker.queues must name at least one queue")
    for queue in worker.queues:
        # Checked against queues.allowed only where a worker serves them (see `cli.worker`).
        check_queue_name(queue, (), f"{source}: worker.queues")
    for queue in settings.queues.allowed:
        check_queue_name(queue, (), f"{source}: queues.allowed")
    _check_range(source, "worker.concurrency", worker.concurrency, 1, 256)
    _check_range(source, "worker.poll_interval", worker.poll_interval, 0.01, 3600)
    _check_range(source, "worker.lease_seconds", worker.lease_seconds, 1, 86400)
    _check_range(source, "worker.shutdown_grace", worker.shutdown_grace, 0, 86400)
    _check_range(source, "worker.max_result_bytes", worker.max_result_bytes, 2, 256 * 1024 * 1024)
    _check_range(source, "retry.max_attempts", retry.max_attempts, 1, 1000)
    _check_range(source, "runs.log_max_bytes", settings.runs.log_max_bytes, 1024, 256 * 1024 * 1024)
    _check_range(source, "monitoring.callback_timeout", settings.monitoring.callback_timeout, 0.01, 3600)
    _check_range(source, "retry.backoff_initial", retry.backoff_initial, 0, 86400 * 30)
    _check_range(source, "retry.backoff_max", retry.backoff_max, 0, 86400 * 30)
    try:
        parse_duration(settings.retention.finished_jobs)
    except DfjobError as exc:
        raise DfjobError(f"{source}: retention.finished_jobs: {exc}") from None
    for module in settings.flows.allowed_modules:
        if not MODULE_NAME.fullmatch(module):
            raise DfjobError(f"{source}: flows.allowed_modules: {module!r} is not a module name")
    for callback in settings.monitoring.callbacks:
        check_callable_path(callback, f"{source}: monitoring.callbacks")
    for alert in settings.alerts:
        _check_alert(alert, source)
    check_serve(settings.serve, source)
    _check_choice(f"{source}: log.format", settings.log.format, LOG_FORMATS)
    _check_choice(f"{source}: log.level", settings.log.level, LOG_LEVELS)
    if not SCHEMA_NAME.fullmatch(settings.database.schema):
        raise DfjobError(
            f"{source}: database.schema must be 1-63 of a-z 0-9 _, starting with a letter or _,"
            f" not {settings.database.schema!r}"
        )
    scheme = settings.database.url.split(":", 1)[0]
    if scheme not in ("sqlite", "postgresql", "postgres"):
        raise DfjobError(f"{source}: database.url: unknown scheme {scheme!r} (use sqlite or postgresql)")


def _check_alert(alert: AlertSettings, source: str) -> None:
    if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", alert.url):
        raise DfjobError(f"{source}: alerts.url must be an http:// or https:// URL")
    if not alert.on:
        raise DfjobError(f"{source}: alerts.on must name at least one of {', '.join(ALERT_EVENTS)}")
    for event in alert.on:
        _check_choice(f"{source}: alerts.on", event, ALERT_EVENTS)
    _check_choice(f"{source}: alerts.format", alert.format, ALERT_FORMATS)


def check_serve(serve: ServeSettings, source: str) -> None:
    """The [serve] section: a host, a port, tokens without spaces, networks that parse."""
    if not serve.host or any(char.isspace() for char in serve.host):
        raise DfjobError(f"{source}: serve.host must be a host name or an IP address, not {serve.host!r}")
    _check_range(source, "serve.port", serve.port, 1, 65535)
    for token in serve.tokens:
        check_token(token, f"{source}: serve.tokens")
    for cidr in serve.allow_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise DfjobError(f"{source}: serve.allow_cidrs: {cidr!r} is not a network such as 10.0.0.0/8") from None


def check_token(token: str, where: str) -> str:
    """A bearer token: printable ASCII without spaces, as an `Authorization` header carries it."""
    if not token or not token.isascii() or not token.isprintable() or any(char.isspace() for char in token):
        raise DfjobError(f"{where}: a token must be printable ASCII characters without spaces")
    return token


def _check_range(source: str, key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise DfjobError(f"{source}: {key} must be between {low:g} and {high:g}, not {value:g}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DfjobError(f"{key} must be one of {', '.join(choices)}, not {value!r}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(text: str, option: str) -> dict[str, Any]:
    """A JSON object given on the command line, in strict JSON (no NaN or Infinity)."""
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise DfjobError(f"{option}: invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DfjobError(f"{option} must be a JSON object")
    return check_json_object(value, option)


def check_json_object(value: dict[str, Any], where: str) -> dict[str, Any]:
    """Refuse what strict JSON cannot hold (NaN, infinities, non-JSON types), e.g. from TOML, and
    text no database stores as it is (a NUL, a lone surrogate)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DfjobError(f"{where}: not representable as JSON: {exc}") from None
    if _holds_unstorable(value):
        raise DfjobError(f"{where}: a text holds a NUL character or a lone surrogate, which cannot be stored")
    return value


def _holds_unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return UNSTORABLE_TEXT.search(value) is not None
    if isinstance(value, dict):
        return any(_holds_unstorable(key) or _holds_unstorable(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_unstorable(item) for item in value)
    return False


def check_queue_name(name: str, allowed: tuple[str, ...], where: str = "queue") -> str:
    """Return the queue name, or refuse it: bad format, or not in `queues.allowed`."""
    if not QUEUE_NAME.fullmatch(name):
        raise DfjobError(
            f"{where}: invalid queue name {name!r} (1-64 of a-z 0-9 _ - ., starting with a letter or digit)"
        )
    if allowed and name not in allowed:
        raise DfjobError(f"{where}: queue {name!r} is not in queues.allowed ({', '.join(allowed)})")
    return name


def is_id(text: str) -> bool:
    """All ASCII digits: an id (`١` and other digits are not)."""
    return text.isascii() and text.isdigit()


def parse_id(text: str, what: str) -> int:
    """A `what` id given on the command line: ASCII digits."""
    if not is_id(text):
        raise DfjobError(f"a {what} id is a number in ASCII digits, not {text!r}")
    return int(text)


def check_flow_name(name: str) -> str:
    """Return the data flow name, or refuse it."""
    if not FLOW_NAME.fullmatch(name):
        raise DfjobError(f"invalid data flow name {name!r} (1-128 of A-Z a-z 0-9 _ - ., starting with a letter)")
    return name


def check_callable_path(path: str, where: str = "class path") -> tuple[str, str]:
    """Split `package.module:Name` into its module and attribute, or refuse it."""
    module, sep, attr = path.partition(":")
    if not sep or not MODULE_NAME.fullmatch(module) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", attr):
        raise DfjobError(f"{where}: {path!r} is not of the form package.module:Name")
    return module, attr


def module_allowed(module: str, allowed: tuple[str, ...]) -> bool:
    """True when `module` is one of `allowed` or inside one, on dotted-name boundaries."""
    return not allowed or any(module == root or module.startswith(root + ".") for root in allowed)


def resolve_path(settings: Settings, path: str) -> str:
    """A path from the config, made absolute against the config file's folder."""
    return str(Path(settings.base_dir, path).resolve()) if not os.path.isabs(path) else path
