"""Configuration: where the file is found, what overrides it, how paths resolve, what is refused."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from dfjob import db
from dfjob.config import (
    Settings,
    check_flow_name,
    check_queue_name,
    load_settings,
    module_allowed,
    resolve_path,
)
from dfjob.errors import DfjobError
from tests.unit.conftest import run_main

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "config.example.toml"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No config from the environment, a working directory of our own, sys.path restored."""
    monkeypatch.delenv("DFJOB_CONFIG", raising=False)
    monkeypatch.delenv("DFJOB_DATABASE_URL", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    structlog.reset_defaults()
    database = db.database_proxy.obj
    if database is not None and not database.is_closed():
        database.close()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _config_with_url(folder: Path, url: str) -> Path:
    return _write(folder / "dfjob.toml", f'[database]\nurl = "{url}"\n')


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run_main(capsys, *args)


# -- lookup order ---------------------------------------------------------------------------------


def test_config_option_wins_over_env_and_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = _config_with_url(tmp_path / "explicit", "sqlite:///explicit.db")
    from_env = _config_with_url(tmp_path / "env", "sqlite:///env.db")
    _config_with_url(Path.cwd(), "sqlite:///local.db")
    monkeypatch.setenv("DFJOB_CONFIG", str(from_env))
    settings = load_settings(config_path=str(explicit))
    assert settings.database.url == "sqlite:///explicit.db"
    assert Path(settings.base_dir) == explicit.parent.resolve()


def test_env_config_wins_over_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = _config_with_url(tmp_path / "env", "sqlite:///env.db")
    _config_with_url(Path.cwd(), "sqlite:///local.db")
    monkeypatch.setenv("DFJOB_CONFIG", str(from_env))
    settings = load_settings()
    assert settings.database.url == "sqlite:///env.db"
    assert Path(settings.base_dir) == from_env.parent.resolve()


def test_local_dfjob_toml_is_used_when_nothing_else_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local_dir = tmp_path / "project"
    _config_with_url(local_dir, "sqlite:///local.db")
    monkeypatch.chdir(local_dir)
    settings = load_settings()
    assert settings.database.url == "sqlite:///local.db"
    assert Path(settings.base_dir) == local_dir.resolve()


def test_the_nearest_dfjob_toml_above_the_working_directory_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config_with_url(tmp_path / "repo", "sqlite:///outer.db")
    _config_with_url(tmp_path / "repo" / "pipelines", "sqlite:///inner.db")
    deep = tmp_path / "repo" / "pipelines" / "etl" / "orders"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    settings = load_settings()
    assert settings.database.url == "sqlite:///inner.db"
    assert Path(settings.base_dir) == (tmp_path / "repo" / "pipelines").resolve()
    monkeypatch.chdir(tmp_path / "repo")
    assert load_settings().database.url == "sqlite:///outer.db"


@pytest.mark.parametrize("schema", ["", "Dfjob", "1abc", "a-b", "x" * 64, 'a"b'])
def test_a_postgres_schema_name_must_be_a_plain_identifier(tmp_path: Path, schema: str) -> None:
    path = _write(tmp_path / "c.toml", f"[database]\nschema = {json.dumps(schema)}\n")
    with pytest.raises(DfjobError, match=r"database\.schema must be"):
        load_settings(str(path))


def test_no_file_means_defaults_relative_to_the_working_directory() -> None:
    settings = load_settings()
    assert dataclasses.replace(settings, base_dir=".") == Settings()
    assert Path(settings.base_dir).resolve() == Path.cwd().resolve()


def test_missing_config_option_file_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(DfjobError, match=r"nope\.toml"):
        load_settings(config_path=str(missing))


def test_missing_env_config_file_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFJOB_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(DfjobError, match=r"gone\.toml"):
        load_settings()


def test_env_database_url_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_with_url(tmp_path / "conf", "sqlite:///file.db")
    monkeypatch.setenv("DFJOB_DATABASE_URL", "sqlite:///env.db")
    # Not written in the file, so relative to the working directory, not to the file's folder.
    assert load_settings(config_path=str(config)).database.url == f"sqlite:///{Path.cwd() / 'env.db'}"


def test_database_url_option_overrides_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_with_url(tmp_path / "conf", "sqlite:///file.db")
    monkeypatch.setenv("DFJOB_DATABASE_URL", "sqlite:///env.db")
    settings = load_settings(config_path=str(config), database_url="sqlite:///flag.db")
    assert settings.database.url == f"sqlite:///{Path.cwd() / 'flag.db'}"


def test_cli_config_option_and_database_url_reach_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config_with_url(tmp_path / "conf", "sqlite:///from_file.db")
    code, out, _ = _run(capsys, "--config", str(config), "db", "init", "--json")
    assert code == 0
    assert (tmp_path / "conf" / "from_file.db").is_file()
    flag_db = tmp_path / "flag.db"
    code, out, _ = _run(capsys, "--config", str(config), "--database-url", f"sqlite:///{flag_db}", "db", "init")
    assert code == 0
    assert flag_db.is_file()
    monkeypatch.setenv("DFJOB_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    code, out, _ = _run(capsys, "--config", str(config), "db", "init", "--json")
    assert code == 0
    assert json.loads(out)["database"].endswith("env.db")
    assert (tmp_path / "env.db").is_file()


# -- relative paths -------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder_not_cwd(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "conf" / "dfjob.toml",
        '[database]\nurl = "sqlite:///data/dfjob.db"\n[flows]\npaths = ["myflows", "/abs/flows"]\n',
    )
    settings = load_settings(config_path=str(config))
    conf = (tmp_path / "conf").resolve()
    assert Path(db.sqlite_path(settings.database.url, settings.base_dir)) == conf / "data" / "dfjob.db"
    assert Path(resolve_path(settings, settings.flows.paths[0])) == conf / "myflows"
    assert resolve_path(settings, settings.flows.paths[1]) == "/abs/flows"
    assert Path.cwd().resolve() != conf


def test_cli_reaches_the_same_database_and_flows_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "conf"
    module = f"cfgflows_{uuid.uuid4().hex[:8]}"
    _write(
        conf / "myflows" / f"{module}.py",
        "import dfjob\n\nclass F(dfjob.Flow):\n    def run(self):\n        return {}\n",
    )
    config = _write(conf / "dfjob.toml", '[database]\nurl = "sqlite:///dfjob.db"\n[flows]\npaths = ["myflows"]\n')
    code, out, err = _run(capsys, "--config", str(config), "flows", "add", "one", "--class", f"{module}:F", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["class_path"] == f"{module}:F"
    assert (conf / "dfjob.db").is_file()
    assert not (Path.cwd() / "dfjob.db").exists()
    # Elsewhere, through $DFJOB_CONFIG: the same database, holding the flow added above.
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    monkeypatch.setenv("DFJOB_CONFIG", str(config))
    code, out, _ = _run(capsys, "flows", "list", "--json")
    assert code == 0
    assert [flow["name"] for flow in json.loads(out)] == ["one"]
    assert not (other / "dfjob.db").exists()


def test_without_a_file_relative_sqlite_is_relative_to_cwd(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = _run(capsys, "--database-url", "sqlite:///here.db", "db", "init")
    assert code == 0
    assert (Path.cwd() / "here.db").is_file()


# -- refusals -------------------------------------------------------------------------------------

BAD_FILES = [
    pytest.param("[database\nurl = 1\n", "invalid TOML", id="malformed"),
    pytest.param("[nosuch]\nx = 1\n", "nosuch", id="unknown-section"),
    pytest.param("[worker]\nbogus = 1\n", "worker.bogus", id="unknown-key"),
    pytest.param('[worker]\nconcurrency = "4"\n', "worker.concurrency", id="string-for-int"),
    pytest.param("[worker]\nconcurrency = 1.5\n", "worker.concurrency", id="float-for-int"),
    pytest.param('[worker]\nqueues = "default"\n', "worker.queues", id="string-for-list"),
    pytest.param("[worker]\nnotify = 1\n", "worker.notify", id="int-for-bool"),
    pytest.param("[worker]\npoll_interval = true\n", "worker.poll_interval", id="bool-for-float"),
    pytest.param("[database]\nurl = 5\n", "database.url", id="int-for-string"),
    pytest.param('[database]\nurl = "mysql://u@h/db"\n', "database.url", id="unknown-scheme"),
    pytest.param('[retention]\nfinished_jobs = "30 days"\n', "retention.finished_jobs", id="bad-duration"),
    pytest.param('[log]\nformat = "xml"\n', "log.format", id="bad-log-format"),
    pytest.param('[queues]\nallowed = ["Bad Queue"]\n', "queues.allowed", id="bad-allowed-queue"),
    pytest.param('[worker]\nqueues = ["UPPER"]\n', "worker.queues", id="bad-worker-queue"),
    pytest.param("[worker]\nconcurrency = 0\n", "worker.concurrency", id="zero-concurrency"),
    pytest.param("database = 5\n", "database", id="section-not-a-table"),
    pytest.param('[monitoring]\ncallbacks = ["no colon"]\n', "monitoring.callbacks", id="bad-callback"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_FILES)
def test_bad_config_file_is_refused_naming_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    config = _write(tmp_path / "conf" / "bad.toml", text)
    with pytest.raises(DfjobError) as refused:
        load_settings(config_path=str(config))
    assert str(config) in str(refused.value)
    assert fragment in str(refused.value)


def test_bad_config_file_through_cli_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path / "conf" / "bad.toml", "[worker]\nbogus = 1\n")
    code, out, err = _run(capsys, "--config", str(config), "flows", "list", "--json")
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("Error: ")
    assert str(config) in err
    assert "worker.bogus" in err


# -- defaults and config.example.toml ------------------------------------------------------------

CONTRACT_DEFAULTS = [
    ("database", "url", "sqlite:///dfjob.db"),
    ("worker", "queues", ("default",)),
    ("worker", "concurrency", 1),
    ("worker", "poll_interval", 1.0),
    ("worker", "notify", True),
    ("worker", "lease_seconds", 60),
    ("worker", "shutdown_grace", 30),
    ("retry", "max_attempts", 3),
    ("retry", "backoff_initial", 10),
    ("retry", "backoff_max", 3600),
    ("retention", "finished_jobs", "30d"),
    ("queues", "allowed", ()),
    ("flows", "paths", ()),
    ("flows", "allowed_modules", ()),
    ("monitoring", "callbacks", ()),
    ("log", "format", "auto"),
    ("log", "level", "info"),
    ("serve", "host", "127.0.0.1"),
    ("serve", "port", 8080),
    ("serve", "tokens", ()),
    ("serve", "public_read", False),
    ("serve", "allow_cidrs", ("127.0.0.0/8", "::1/128")),
]


@pytest.mark.parametrize(("section", "key", "value"), CONTRACT_DEFAULTS)
def test_defaults_are_the_contracts(section: str, key: str, value: Any) -> None:
    assert getattr(getattr(Settings(), section), key) == value


def _setting_sections() -> dict[str, set[str]]:
    defaults = Settings()
    return {
        field.name: {inner.name for inner in dataclasses.fields(getattr(defaults, field.name))}
        for field in dataclasses.fields(Settings)
        if field.name not in ("base_dir", "config_file", "alerts")  # alerts: [[alerts]] tables, none by default
    }


def test_example_file_documents_every_key() -> None:
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert {section: set(values) for section, values in example.items()} == _setting_sections()


def test_example_file_values_equal_the_defaults() -> None:
    loaded = load_settings(config_path=str(EXAMPLE))
    assert dataclasses.replace(loaded, base_dir=".", config_file=None) == Settings()


@pytest.mark.parametrize(("section", "key", "value"), CONTRACT_DEFAULTS)
def test_example_file_holds_the_contract_default(section: str, key: str, value: Any) -> None:
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    written = example[section][key]
    assert (tuple(written) if isinstance(written, list) else written) == value


# -- names ----------------------------------------------------------------------------------------

GOOD_QUEUES = ["a", "0", "default", "9lives", "a.b-c_d", "q" * 64, "0" + "-" * 63]
BAD_QUEUES = ["", "q" * 65, "_a", "-a", ".a", "A", "Default", "a b", "a/b", "é", "a\n", "\u0661", "a:b", "a*"]


@pytest.mark.parametrize("name", GOOD_QUEUES)
def test_queue_name_accepted(name: str) -> None:
    assert check_queue_name(name, ()) == name


@pytest.mark.parametrize("name", BAD_QUEUES)
def test_queue_name_refused(name: str) -> None:
    with pytest.raises(DfjobError, match="queue"):
        check_queue_name(name, ())


def test_queue_not_in_allowed_list_is_refused() -> None:
    assert check_queue_name("default", ("default", "etl")) == "default"
    with pytest.raises(DfjobError, match=r"queues\.allowed"):
        check_queue_name("other", ("default", "etl"))


GOOD_FLOWS = ["A", "a", "Sync.Orders-v2_x", "x1", "n" * 128, "Z" + "9" * 127]
BAD_FLOWS = ["", "n" * 129, "1abc", "123", "_a", "-a", ".a", "a b", "a/b", "é", "a\n", "ab:c", "a\x00"]


@pytest.mark.parametrize("name", GOOD_FLOWS)
def test_flow_name_accepted(name: str) -> None:
    assert check_flow_name(name) == name


@pytest.mark.parametrize("name", BAD_FLOWS)
def test_flow_name_refused(name: str) -> None:
    with pytest.raises(DfjobError, match="data flow name"):
        check_flow_name(name)


@pytest.mark.parametrize(
    ("module", "allowed", "expected"),
    [
        ("etl", ("etl",), True),
        ("etl.jobs", ("etl",), True),
        ("etl.jobs.deep", ("etl",), True),
        ("etl_evil", ("etl",), False),
        ("etlx.jobs", ("etl",), False),
        ("et", ("etl",), False),
        ("etl", ("etl.jobs",), False),
        ("etl.jobs.x", ("etl.jobs",), True),
        ("other", ("etl", "other"), True),
        ("anything", (), True),
    ],
)
def test_module_allowed_on_dotted_boundaries(module: str, allowed: tuple[str, ...], expected: bool) -> None:
    assert module_allowed(module, allowed) is expected


def test_allowed_modules_entry_must_be_a_module_name(tmp_path: Path) -> None:
    config = _write(tmp_path / "c.toml", '[flows]\nallowed_modules = ["etl-x"]\n')
    with pytest.raises(DfjobError, match=r"flows\.allowed_modules"):
        load_settings(config_path=str(config))


def test_file_values_are_read(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "c.toml",
        '[worker]\nqueues = ["a", "b"]\nconcurrency = 4\npoll_interval = 2\nnotify = false\n'
        '[retry]\nmax_attempts = 7\n[retention]\nfinished_jobs = "2d"\n[log]\nformat = "json"\nlevel = "debug"\n',
    )
    settings = load_settings(config_path=str(config))
    assert settings.worker.queues == ("a", "b")
    assert settings.worker.concurrency == 4
    assert settings.worker.poll_interval == 2.0
    assert settings.worker.notify is False
    assert settings.retry.max_attempts == 7
    assert settings.retention.finished_jobs == "2d"
    assert (settings.log.format, settings.log.level) == ("json", "debug")
    assert os.path.isabs(settings.base_dir)


# -- alerts ---------------------------------------------------------------------------------------


def test_alert_destinations_are_read_with_their_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "dfjob.toml",
        '[[alerts]]\nurl = "https://hooks.slack.com/services/T/B/X"\nformat = "slack"\non = ["job.failed"]\n\n'
        '[[alerts]]\nurl = "http://127.0.0.1:9000/alerts"\nsecret = "k"\n',
    )

    slack, plain = load_settings(config_path=str(path)).alerts

    assert (slack.format, slack.on, slack.secret) == ("slack", ("job.failed",), "")
    assert (plain.format, plain.on, plain.secret) == ("json", ("job.failed", "flow.late", "queue.stalled"), "k")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('url = "ftp://example.com/x"', "alerts.url must be an http:// or https:// URL"),
        ('url = "https://x.example"\non = []', "alerts.on must name at least one"),
        ('url = "https://x.example"\non = ["job.finished"]', "alerts.on must be one of"),
        ('url = "https://x.example"\nformat = "xml"', "alerts.format must be one of"),
        ('url = "https://x.example"\nchannel = "#ops"', "unknown key alerts.channel"),
    ],
)
def test_bad_alert_destinations_are_refused_without_echoing_the_url(tmp_path: Path, table: str, message: str) -> None:
    path = _write(tmp_path / "dfjob.toml", f"[[alerts]]\n{table}\n")
    with pytest.raises(DfjobError, match=message) as refused:
        load_settings(config_path=str(path))
    assert "example" not in str(refused.value)
