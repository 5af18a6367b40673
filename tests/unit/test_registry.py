"""Data flows: add, change, switch, remove, and import/export them as TOML, all on SQLite."""

from __future__ import annotations

import json
import sqlite3
import sys
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from dfjob import clock, db
from dfjob.config import FlowSettings, QueueSettings, Settings
from dfjob.errors import DfjobError
from dfjob.flow import ClassPathRefused
from dfjob.flowfile import export_flows, import_flows
from dfjob.migrations import create_schema
from dfjob.models import DataFlow, DataFlowRun, Job
from dfjob.registry import (
    FlowSpec,
    add_flow,
    flow_to_dict,
    get_flow,
    remove_flow,
    set_enabled,
    update_flow,
)
from dfjob.store.rows import Outcome
from dfjob.trigger import trigger_run
from tests.conftest import make_settings
from tests.support import store_ops

TABLES = ("data_flows", "jobs", "data_flow_runs")
FLOW_KEYS = {
    "id", "name", "class_path", "queue", "priority", "enabled", "schedule", "configuration",
    "max_attempts", "timeout", "last_run_at", "last_run_status", "next_run_at",
}  # fmt: skip


def connect(settings: Settings) -> None:
    db.connect(settings.database.url, settings.base_dir)
    create_schema()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A connected SQLite database with its tables; sys.path put back afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    settings = make_settings(f"sqlite:///{tmp_path / 'dfjob.db'}", tmp_path)
    connect(settings)
    yield settings
    database = db.database_proxy.obj
    if not database.is_closed():
        database.close()


def dump(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three tables, read through a connection of its own."""
    path = db.sqlite_path(settings.database.url, settings.base_dir)
    with closing(sqlite3.connect(path)) as conn:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall() for table in TABLES}


def spec(name: str = "flow", class_path: str = "sample_flows:Succeed", **fields: Any) -> FlowSpec:
    return FlowSpec(name=name, class_path=class_path, **fields)


def run_to_end(settings: Settings, flow: DataFlow, status: str = "success") -> int:
    """Enqueue a job for the flow and record one finished attempt, without a worker process."""
    enqueued = trigger_run(settings, flow)
    now = clock.now()
    [claimed] = store_ops.claim("test-worker", [enqueued.queue], 1, now, 60)
    store_ops.mark_started([claimed.run_id], now)
    assert claimed.job_id == enqueued.job_id
    # retry="never": a failed attempt fails its job at once, as Discard does.
    outcome = Outcome(job=claimed, status=status, started_at=now, ended_at=now, error_message="no", retry="never")
    [finished] = store_ops.finish([outcome], settings.retry)
    assert finished.job_status == ("succeeded" if status == "success" else "failed")
    return enqueued.job_id


def flows_module(folder: Path, body: str, prefix: str = "regflows") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(body, encoding="utf-8")
    return name


# -- add ------------------------------------------------------------------------------------------


def test_add_flow_stores_it_with_defaults(settings: Settings) -> None:
    flow = add_flow(settings, spec("orders"))
    stored = get_flow("orders")
    assert stored.id == flow.id
    data = flow_to_dict(stored)
    assert data["class_path"] == "sample_flows:Succeed"
    assert (data["queue"], data["priority"], data["enabled"], data["configuration"]) == ("default", 0, True, {})
    assert (data["schedule"], data["next_run_at"], data["last_run_at"], data["last_run_status"]) == (
        None,
        None,
        None,
        None,
    )
    assert data["max_attempts"] is None
    assert data["timeout"] is None


def test_add_flow_keeps_every_option(settings: Settings) -> None:
    flow = add_flow(
        settings,
        spec(
            "full",
            queue="etl",
            priority=-5,
            cron="0 3 * * *",
            configuration={"a": [1, {"b": None}], "s": "é"},
            max_attempts=7,
            timeout="2h",
            enabled=False,
        ),
    )
    data = flow_to_dict(get_flow(str(flow.id)))
    assert data["queue"] == "etl"
    assert data["priority"] == -5
    assert data["schedule"] == "cron 0 3 * * *"
    assert data["configuration"] == {"a": [1, {"b": None}], "s": "é"}
    assert data["max_attempts"] == 7
    assert data["timeout"] == "2h"
    assert data["enabled"] is False


def test_every_flow_is_due_when_added(settings: Settings) -> None:
    before = clock.now()
    flow = add_flow(settings, spec(every="5m"))
    after = clock.now()
    stored = get_flow(flow.name)
    assert stored.next_run_at is not None
    assert before <= stored.next_run_at <= after
    assert flow_to_dict(stored)["schedule"] == "every 5m"


def test_cron_flow_is_first_due_at_its_next_fire_time(settings: Settings) -> None:
    now = clock.now()
    flow = add_flow(settings, spec(cron="0 3 * * *"))
    next_run = get_flow(flow.name).next_run_at
    assert next_run is not None
    assert now < next_run <= now + timedelta(days=1)
    assert (next_run.hour, next_run.minute, next_run.second, next_run.microsecond) == (3, 0, 0, 0)


def test_flow_to_dict_has_the_contract_keys_and_iso_times(settings: Settings) -> None:
    data = flow_to_dict(add_flow(settings, spec(every="1h")))
    assert set(data) >= FLOW_KEYS
    next_run_at = data["next_run_at"]
    assert isinstance(next_run_at, str)
    assert next_run_at.endswith("+00:00")
    assert len(next_run_at.split(".")[1]) == len("000000+00:00")


@pytest.mark.parametrize(
    ("class_path", "error", "message"),
    [
        (f"not_a_module_{uuid.uuid4().hex[:6]}:Thing", DfjobError, "cannot import"),
        ("sample_flows:NotAFlow", ClassPathRefused, "not a subclass of dfjob.Flow"),
        ("sample_flows:Missing", DfjobError, "no attribute Missing"),
        ("sample_flows.Succeed", DfjobError, "package.module:Name"),
    ],
)
def test_add_flow_refuses_a_bad_class_and_writes_nothing(
    settings: Settings, class_path: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as refused:
        add_flow(settings, spec(class_path=class_path))
    assert message in str(refused.value)
    assert dump(settings) == {table: [] for table in TABLES}


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "1bad"},
        {"name": "n" * 129},
        {"queue": "Bad Queue"},
        {"queue": "q" * 65},
        {"priority": 2**31},
        {"max_attempts": 0},
        {"timeout": "0s"},
        {"every": "5x"},
        {"cron": "* * *"},
        {"every": "5m", "cron": "* * * * *"},
    ],
)
def test_add_flow_refuses_bad_values_and_writes_nothing(settings: Settings, fields: dict[str, Any]) -> None:
    with pytest.raises(DfjobError):
        add_flow(settings, replace(spec(), **fields))
    assert dump(settings) == {table: [] for table in TABLES}


def test_add_flow_honours_queues_allowed(settings: Settings) -> None:
    limited = replace(settings, queues=QueueSettings(allowed=("default", "etl")))
    add_flow(limited, spec("ok", queue="etl"))
    with pytest.raises(DfjobError, match=r"queues\.allowed"):
        add_flow(limited, spec("refused", queue="other"))
    assert [flow.name for flow in DataFlow.select()] == ["ok"]


def test_add_flow_refuses_a_duplicate_name(settings: Settings) -> None:
    add_flow(settings, spec("dup"))
    before = dump(settings)
    with pytest.raises(DfjobError, match="already exists"):
        add_flow(settings, spec("dup", class_path="sample_flows:Fail"))
    assert dump(settings) == before


def test_module_outside_allow_list_is_refused_before_import(settings: Settings, tmp_path: Path) -> None:
    flows_dir = tmp_path / "flows"
    marker = tmp_path / "imported.marker"
    package = f"etl{uuid.uuid4().hex[:8]}"
    (flows_dir / package).mkdir(parents=True)
    (flows_dir / package / "__init__.py").write_text("")
    (flows_dir / package / "jobs.py").write_text(
        "import dfjob\n\nclass F(dfjob.Flow):\n    def run(self):\n        pass\n"
    )
    evil = f"{package}_evil"
    (flows_dir / f"{evil}.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    guarded = replace(settings, flows=FlowSettings(paths=(str(flows_dir),), allowed_modules=(package,)))

    with pytest.raises(ClassPathRefused, match="allowed_modules"):
        add_flow(guarded, spec("evil", class_path=f"{evil}:F"))
    assert not marker.exists()
    assert evil not in sys.modules

    add_flow(guarded, spec("inside", class_path=f"{package}.jobs:F"))
    add_flow(guarded, spec("root", class_path=f"{package}.jobs:F"))
    assert [flow.name for flow in DataFlow.select().order_by(DataFlow.id)] == ["inside", "root"]

    # The control: without the allow-list the same module is imported, and writes its marker.
    open_settings = replace(guarded, flows=FlowSettings(paths=(str(flows_dir),)))
    with pytest.raises(DfjobError):
        add_flow(open_settings, spec("evil", class_path=f"{evil}:F"))
    assert marker.read_text() == "ran"


def test_relative_flows_paths_resolve_against_base_dir(settings: Settings, tmp_path: Path) -> None:
    module = flows_module(tmp_path / "rel", "import dfjob\n\nclass F(dfjob.Flow):\n    def run(self):\n        pass\n")
    relative = replace(settings, flows=FlowSettings(paths=("rel",)), base_dir=str(tmp_path))
    assert add_flow(relative, spec("rel", class_path=f"{module}:F")).id


def test_module_printing_at_import_keeps_stdout_clean(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = "import dfjob\nprint('hello from import')\n\nclass F(dfjob.Flow):\n    def run(self):\n        pass\n"
    module = flows_module(tmp_path / "noisy", body)
    noisy = replace(settings, flows=FlowSettings(paths=(str(tmp_path / "noisy"),)))
    add_flow(noisy, spec("noisy", class_path=f"{module}:F"))
    captured = capsys.readouterr()
    assert "hello from import" not in captured.out
    assert "hello from import" in captured.err


# -- get ------------------------------------------------------------------------------------------


def test_get_flow_by_id_or_name(settings: Settings) -> None:
    flow = add_flow(settings, spec("named"))
    assert get_flow(str(flow.id)).name == "named"
    assert get_flow("named").id == flow.id
    with pytest.raises(DfjobError, match="no data flow with id '999'"):
        get_flow("999")
    with pytest.raises(DfjobError, match="no data flow with name 'nope'"):
        get_flow("nope")


# -- update ---------------------------------------------------------------------------------------


def test_update_flow_renames(settings: Settings) -> None:
    flow = add_flow(settings, spec("old"))
    update_flow(settings, get_flow("old"), FlowSpec(name="new"))
    assert get_flow("new").id == flow.id
    with pytest.raises(DfjobError):
        get_flow("old")


def test_update_flow_refuses_a_taken_name(settings: Settings) -> None:
    add_flow(settings, spec("one"))
    add_flow(settings, spec("two"))
    before = dump(settings)
    with pytest.raises(DfjobError, match="already exists"):
        update_flow(settings, get_flow("two"), FlowSpec(name="one"))
    assert dump(settings) == before


def test_update_flow_refuses_bad_values_and_writes_nothing(settings: Settings) -> None:
    add_flow(settings, spec("f", every="5m"))
    before = dump(settings)
    for bad in (
        FlowSpec(queue="BAD"),
        FlowSpec(every="0s"),
        FlowSpec(class_path="sample_flows:NotAFlow", priority=3),
        FlowSpec(no_schedule=True, every="5m"),
        FlowSpec(cron="99 * * * *"),
    ):
        with pytest.raises(DfjobError):
            update_flow(settings, get_flow("f"), bad)
    assert dump(settings) == before


def test_update_flow_changes_only_what_is_given(settings: Settings) -> None:
    add_flow(settings, spec("f", queue="etl", priority=4, configuration={"k": 1}, max_attempts=2))
    update_flow(settings, get_flow("f"), FlowSpec(priority=9))
    data = flow_to_dict(get_flow("f"))
    assert (data["queue"], data["priority"], data["configuration"], data["max_attempts"]) == ("etl", 9, {"k": 1}, 2)


def test_schedule_change_recomputes_next_run_at(settings: Settings) -> None:
    add_flow(settings, spec("s", every="1h"))
    clock.travel(600)
    update_flow(settings, get_flow("s"), FlowSpec(cron="0 3 * * *"))
    cron_next = get_flow("s").next_run_at
    assert cron_next is not None
    assert (cron_next.hour, cron_next.minute) == (3, 0)
    assert clock.now() < cron_next <= clock.now() + timedelta(days=1)

    clock.travel(1200)
    before = clock.now()
    update_flow(settings, get_flow("s"), FlowSpec(every="5m"))
    every_next = get_flow("s").next_run_at
    assert every_next is not None
    assert before <= every_next <= clock.now()  # due at once
    assert flow_to_dict(get_flow("s"))["schedule"] == "every 5m"


def test_unchanged_schedule_keeps_next_run_at(settings: Settings) -> None:
    add_flow(settings, spec("s", every="1h"))
    first = get_flow("s").next_run_at
    clock.travel(600)
    update_flow(settings, get_flow("s"), FlowSpec(priority=1, every="1h"))
    assert get_flow("s").next_run_at == first


def test_no_schedule_clears_the_schedule(settings: Settings) -> None:
    add_flow(settings, spec("s", cron="*/5 * * * *"))
    update_flow(settings, get_flow("s"), FlowSpec(no_schedule=True))
    data = flow_to_dict(get_flow("s"))
    assert (data["schedule"], data["next_run_at"]) == (None, None)


def test_set_enabled_switches_and_persists(settings: Settings) -> None:
    add_flow(settings, spec("s", every="5m"))
    set_enabled(get_flow("s"), False)
    assert get_flow("s").enabled is False
    set_enabled(get_flow("s"), True)
    assert get_flow("s").enabled is True


def test_enabling_a_scheduled_flow_without_next_run_gives_it_one(settings: Settings) -> None:
    add_flow(settings, spec("s", every="5m", enabled=False))
    DataFlow.update(next_run_at=None).execute()
    set_enabled(get_flow("s"), True)
    assert get_flow("s").next_run_at is not None


# -- remove ---------------------------------------------------------------------------------------


def test_remove_flow_is_refused_while_a_job_is_active(settings: Settings) -> None:
    flow = add_flow(settings, spec("busy"))
    trigger_run(settings, flow)
    before = dump(settings)
    with pytest.raises(DfjobError, match="active job"):
        remove_flow(get_flow("busy"))
    assert dump(settings) == before


def test_remove_flow_deletes_its_jobs_and_runs(settings: Settings) -> None:
    gone = add_flow(settings, spec("gone"))
    kept = add_flow(settings, spec("kept"))
    run_to_end(settings, gone)
    run_to_end(settings, gone, status="failed")
    run_to_end(settings, kept)
    assert Job.select().count() == 3
    remove_flow(get_flow("gone"))
    assert [flow.name for flow in DataFlow.select()] == ["kept"]
    assert {job.data_flow_id for job in Job.select()} == {kept.id}
    assert {run.data_flow_id for run in DataFlowRun.select()} == {kept.id}
    assert DataFlowRun.select().count() == 1


# -- import / export ------------------------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


GOOD_TABLES = """
[[flow]]
name = "first"
class = "sample_flows:Succeed"
every = "5m"

[[flow]]
name = "second"
class = "sample_flows:Fail"
queue = "etl"
priority = 3
cron = "0 3 * * *"
config = { message = "hi", nested = { list = [1, 2] } }
max_attempts = 2
timeout = "1h"
enabled = false
"""


def test_import_creates_then_updates_by_name(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "flows.toml", GOOD_TABLES)
    assert import_flows(settings, path) == (2, 0)
    second = flow_to_dict(get_flow("second"))
    assert second["queue"] == "etl"
    assert second["priority"] == 3
    assert second["schedule"] == "cron 0 3 * * *"
    assert second["configuration"] == {"message": "hi", "nested": {"list": [1, 2]}}
    assert (second["max_attempts"], second["timeout"], second["enabled"]) == (2, "1h", False)
    assert import_flows(settings, path) == (0, 2)
    assert DataFlow.select().count() == 2


def test_import_file_is_the_whole_truth_about_a_flow(settings: Settings, tmp_path: Path) -> None:
    add_flow(settings, spec("first", queue="etl", priority=5, max_attempts=9, timeout="5m", every="1h"))
    path = write(tmp_path / "flows.toml", '[[flow]]\nname = "first"\nclass = "sample_flows:Succeed"\n')
    assert import_flows(settings, path) == (0, 1)
    data = flow_to_dict(get_flow("first"))
    assert (data["queue"], data["priority"], data["max_attempts"], data["timeout"]) == ("default", 0, None, None)
    assert (data["schedule"], data["next_run_at"]) == (None, None)


def test_import_is_all_or_nothing_naming_the_bad_entry(settings: Settings, tmp_path: Path) -> None:
    add_flow(settings, spec("first", priority=1))
    before = dump(settings)
    bad_third = GOOD_TABLES + '\n[[flow]]\nname = "third"\nclass = "sample_flows:Succeed"\nqueue = "Bad Queue"\n'
    with pytest.raises(DfjobError) as refused:
        import_flows(settings, write(tmp_path / "flows.toml", bad_third))
    assert "#3" in str(refused.value)
    assert "third" in str(refused.value)
    assert dump(settings) == before


def test_import_refuses_a_bad_class_in_a_later_entry(settings: Settings, tmp_path: Path) -> None:
    text = GOOD_TABLES + '\n[[flow]]\nname = "third"\nclass = "sample_flows:NotAFlow"\n'
    with pytest.raises(DfjobError, match=r"#3.*third"):
        import_flows(settings, write(tmp_path / "flows.toml", text))
    assert dump(settings) == {table: [] for table in TABLES}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[[flow]]\nname = "a"\nclass = "sample_flows:Succeed"\nbogus = 1\n', "bogus"),
        ('[[flow]]\nname = "a"\nclass = "sample_flows:Succeed"\n[[flow]]\nname = "a"\nclass = "x:Y"\n', "'a'"),
        ('[[flow]]\nclass = "sample_flows:Succeed"\n', "name"),
        ('[[flow]]\nname = "a"\n', "class"),
        ('[[flow]]\nname = "a"\nclass = "sample_flows:Succeed"\npriority = "high"\n', "priority"),
        ('[[flow]]\nname = "a"\nclass = "sample_flows:Succeed"\nenabled = 1\n', "enabled"),
        ('[[flow]]\nname = "a"\nclass = "sample_flows:Succeed"\nconfig = "[1, 2]"\n', "config"),
        ('[[flow]]\nname = "a"\nclass = "sample_flows:Succeed"\nconfig = 5\n', "config"),
        ('[[flow]]\nname = "a"\nclass = "sample_flows:Succeed"\nconfig = {x = nan}\n', "config"),
        ('[[flow]]\nname = "a"\nclass = "sample_flows:Succeed"\nevery = "5m"\ncron = "* * * * *"\n', "#1"),
        ('[flows]\nname = "a"\n', "flows"),
        ("flow = 3\n", "flow"),
        ("[[flow]\n", "invalid TOML"),
    ],
)
def test_import_refusals(settings: Settings, tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path / "flows.toml", text)
    with pytest.raises(DfjobError) as refused:
        import_flows(settings, path)
    assert fragment in str(refused.value)
    assert dump(settings) == {table: [] for table in TABLES}


def test_import_of_a_missing_file_is_refused(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(DfjobError, match=r"missing\.toml"):
        import_flows(settings, str(tmp_path / "missing.toml"))


def test_import_of_an_empty_file_does_nothing(settings: Settings, tmp_path: Path) -> None:
    assert import_flows(settings, write(tmp_path / "empty.toml", "")) == (0, 0)


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    return {key: data[key] for key in sorted(FLOW_KEYS - {"id", "next_run_at", "last_run_at", "last_run_status"})}


def test_export_then_import_round_trips(settings: Settings, tmp_path: Path) -> None:
    add_flow(settings, spec("plain"))
    add_flow(settings, spec("every", every="90s", priority=-2, max_attempts=4, timeout="2h"))
    config = {"q": 'say "hi"\n', "u": "ünï", "n": [1, 2.5, True, {"x": "y"}], "empty": {}, "big": 2**40}
    add_flow(settings, spec("cronned", class_path="sample_flows:Fail", cron="15 2 * * 1", configuration=config))
    add_flow(settings, spec("off", queue="etl.v2", every="1d", enabled=False))
    text = export_flows()
    assert len(tomllib.loads(text)["flow"]) == 4
    originals = [_comparable(flow_to_dict(flow)) for flow in DataFlow.select().order_by(DataFlow.id)]

    other = make_settings(f"sqlite:///{tmp_path / 'other.db'}", tmp_path)
    connect(other)
    assert import_flows(other, write(tmp_path / "export.toml", text)) == (4, 0)
    copies = [_comparable(flow_to_dict(flow)) for flow in DataFlow.select().order_by(DataFlow.id)]
    assert copies == originals
    assert export_flows() == text


def test_export_into_the_same_database_updates_nothing_visible(settings: Settings, tmp_path: Path) -> None:
    add_flow(settings, spec("a", every="5m", configuration={"k": [1]}))
    add_flow(settings, spec("b", cron="0 0 * * *", enabled=False))
    before = [_comparable(flow_to_dict(flow)) for flow in DataFlow.select().order_by(DataFlow.id)]
    assert import_flows(settings, write(tmp_path / "export.toml", export_flows())) == (0, 2)
    assert [_comparable(flow_to_dict(flow)) for flow in DataFlow.select().order_by(DataFlow.id)] == before


def test_export_of_nothing_is_empty(settings: Settings) -> None:
    assert export_flows() == ""


def test_a_configuration_with_null_is_exported_as_json_text_and_imports_back(
    settings: Settings, tmp_path: Path
) -> None:
    configuration = {"gap": None, "nested": {"list": [1, None]}, "plain": "x"}
    add_flow(settings, spec("nulls", configuration=configuration))
    add_flow(settings, spec("plain", configuration={"a": {"b": 2}}))
    exported = export_flows()
    nulls, plain = tomllib.loads(exported)["flow"]
    assert plain["config"] == {"a": {"b": 2}}  # a table wherever TOML can hold it
    assert json.loads(nulls["config"]) == configuration
    DataFlow.delete().execute()
    path = tmp_path / "flows.toml"
    path.write_text(exported, encoding="utf-8")

    assert import_flows(settings, str(path)) == (2, 0)

    assert get_flow("nulls").configuration == configuration
