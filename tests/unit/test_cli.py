"""The command line in-process: `--json` output, ordering and limits, refusals, exit statuses."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import dfjob
from dfjob import clock, db
from dfjob.cli import cli, main
from dfjob.config import RetrySettings
from dfjob.db import close_database
from dfjob.migrations import create_schema
from dfjob.registry import FlowSpec, add_flow
from dfjob.store.rows import Outcome
from dfjob.trigger import trigger_run
from tests.conftest import SUPPORT_DIR, make_settings
from tests.support import store_ops

TABLES = ("data_flows", "jobs", "data_flow_runs")
FLOW_KEYS = {
    "id", "name", "class_path", "queue", "priority", "enabled", "schedule", "configuration",
    "max_attempts", "timeout", "last_run_at", "last_run_status", "next_run_at",
}  # fmt: skip
RUN_KEYS = {
    "id", "data_flow_id", "data_flow_name", "job_id", "attempt", "status", "queue", "started_at", "ended_at",
    "duration_ms", "error_message", "error_backtrace", "result", "worker",
}  # fmt: skip
JOB_KEYS = {
    "id", "data_flow_id", "data_flow_name", "queue", "priority", "status", "attempts", "max_attempts", "rescues",
    "run_at", "params", "last_error", "locked_by", "created_at", "finished_at",
}  # fmt: skip
TRIGGER_KEYS = {"job_id", "data_flow_id", "queue", "deduplicated"}


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The one `Error: …` line a refused request prints, checked on the way."""
        assert self.code == 1, self
        assert self.out == "", self
        lines = self.err.splitlines()
        assert len(lines) == 1, self
        assert lines[0].startswith("Error: "), self
        return lines[0]


class Cli:
    """Runs `dfjob.cli.main` in-process against a config file and SQLite database in tmp_path."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path = tmp_path
        self.capsys = capsys
        self.db_path = tmp_path / "dfjob.db"
        self.config = tmp_path / "dfjob.toml"
        self.config.write_text(
            '[database]\nurl = "sqlite:///dfjob.db"\n'
            f"[flows]\npaths = [{json.dumps(str(SUPPORT_DIR))}]\n"
            "[retry]\nbackoff_initial = 0\nbackoff_max = 0\n"
            '[log]\nformat = "json"\n',
            encoding="utf-8",
        )

    def __call__(self, *args: str, config: bool = True) -> Result:
        self.capsys.readouterr()
        argv = ["--config", str(self.config), *args] if config else list(args)
        try:
            main(argv)
        except SystemExit as exc:
            code = 0 if exc.code is None else int(exc.code)
        else:  # pragma: no cover (main always exits)
            code = 0
        close_database()
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def json(self, *args: str) -> Any:
        """`--json` output of a command that must succeed: exactly one JSON document on stdout."""
        result = self(*args, "--json")
        assert result.code == 0, result
        return json.loads(result.out)

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        with closing(sqlite3.connect(self.db_path)) as conn:
            return {table: conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall() for table in TABLES}

    def finish_jobs(self, flow_id: int, count: int, status: str = "success") -> list[int]:
        return finish_jobs(self.db_path, flow_id, count, status)


def finish_jobs(db_path: Path, flow_id: int, count: int, status: str = "success") -> list[int]:
    """Enqueue and finish `count` jobs of one flow in-process (no worker): each leaves one run."""
    db.connect(f"sqlite:///{db_path}", str(db_path.parent))
    job_ids = []
    try:
        for _ in range(count):
            now = clock.now()
            enqueued = store_ops.enqueue(
                flow_id, queue="default", priority=0, params={}, run_at=now, max_attempts=1, now=now
            )
            assert not enqueued.deduplicated
            [claimed] = store_ops.claim("test-worker", ["default"], 1, now, 60)
            assert claimed.job_id == enqueued.job_id
            store_ops.mark_started([claimed.run_id], now)
            outcome = Outcome(
                job=claimed,
                status=status,
                started_at=now,
                ended_at=now,
                result={"n": claimed.job_id} if status == "success" else None,
                error_message=None if status == "success" else "it broke",
            )
            store_ops.finish([outcome], RetrySettings(backoff_initial=0, backoff_max=0))
            job_ids.append(enqueued.job_id)
    finally:
        close_database()
    return job_ids


pytestmark = pytest.mark.usefixtures("isolated_cli")


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path, capsys)


def add(run: Cli, name: str, *options: str, class_path: str = "sample_flows:Succeed") -> dict[str, Any]:
    data: dict[str, Any] = run.json("flows", "add", name, "--class", class_path, *options)
    return data


def is_iso_utc(text: str) -> bool:
    parsed = datetime.fromisoformat(text)
    return parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0 and len(text) == 32


# -- one JSON document per command ---------------------------------------------------------------


def test_db_init_json_and_idempotent(run: Cli) -> None:
    first = run.json("db", "init")
    assert isinstance(first, dict)
    assert run.json("db", "init") == first
    assert run.dump() == {table: [] for table in TABLES}


@pytest.mark.parametrize(
    "command",
    [["flows", "list"], ["flows", "show", "x"], ["flows", "export"], ["jobs"], ["runs"], ["db", "status"]],
)
def test_a_reading_command_refuses_a_missing_database_and_creates_nothing(run: Cli, command: list[str]) -> None:
    result = run(*command)
    assert result.code == 1
    assert result.err == f"Error: no dfjob database at {run.db_path} (run `dfjob db init`)\n"
    assert not run.db_path.exists()
    assert not list(run.tmp_path.glob("dfjob.db*"))


def test_a_writing_command_creates_missing_tables(run: Cli) -> None:
    assert not run.db_path.exists()
    add(run, "first")
    assert run.json("jobs") == []
    assert run.json("runs") == []
    assert [row[1] for row in run.dump()["data_flows"]] == ["first"]


def test_flows_add_prints_the_flow_object(run: Cli) -> None:
    data = add(
        run, "orders", "--queue", "etl", "--priority", "-3", "--every", "5m", "--config-json", '{"a": [1, "é"]}',
        "--max-attempts", "4", "--timeout", "2h",
    )  # fmt: skip
    assert set(data) >= FLOW_KEYS
    assert data["name"] == "orders"
    assert data["class_path"] == "sample_flows:Succeed"
    assert (data["queue"], data["priority"], data["enabled"]) == ("etl", -3, True)
    assert data["schedule"] == "every 5m"
    assert data["configuration"] == {"a": [1, "é"]}
    assert (data["max_attempts"], data["timeout"]) == (4, "2h")
    assert (data["last_run_at"], data["last_run_status"]) == (None, None)
    assert is_iso_utc(data["next_run_at"])


def test_flows_add_disabled_and_cron(run: Cli) -> None:
    data = add(run, "nightly", "--cron", "0 3 * * *", "--disabled")
    assert data["enabled"] is False
    assert data["schedule"] == "cron 0 3 * * *"
    assert datetime.fromisoformat(data["next_run_at"]).hour == 3


def test_flows_set_show_enable_disable_print_the_flow_object(run: Cli) -> None:
    flow = add(run, "f", "--every", "5m")
    changed = run.json("flows", "set", "f", "--name", "g", "--priority", "7", "--cron", "*/10 * * * *")
    assert set(changed) >= FLOW_KEYS
    assert (changed["id"], changed["name"], changed["priority"]) == (flow["id"], "g", 7)
    assert changed["schedule"] == "cron */10 * * * *"
    assert run.json("flows", "show", "g") == changed
    assert run.json("flows", "show", str(flow["id"])) == changed
    disabled = run.json("flows", "disable", "g")
    assert set(disabled) >= FLOW_KEYS
    assert disabled["enabled"] is False
    assert run.json("flows", "show", "g")["enabled"] is False
    enabled = run.json("flows", "enable", str(flow["id"]))
    assert enabled["enabled"] is True
    cleared = run.json("flows", "set", "g", "--no-schedule")
    assert (cleared["schedule"], cleared["next_run_at"]) == (None, None)


def test_flows_list_is_an_array_of_flow_objects(run: Cli) -> None:
    add(run, "a")
    add(run, "b", "--every", "1h")
    rows = run.json("flows", "list")
    assert [row["name"] for row in rows] == ["a", "b"]
    assert all(set(row) >= FLOW_KEYS for row in rows)


def test_flows_remove(run: Cli) -> None:
    flow = add(run, "gone")
    run.finish_jobs(flow["id"], 2)
    data = run.json("flows", "remove", "gone")
    assert isinstance(data, dict)
    assert run.dump() == {table: [] for table in TABLES}


def test_trigger_prints_its_object_and_dedupes(run: Cli) -> None:
    flow = add(run, "t", "--queue", "etl")
    first = run.json("trigger", "t")
    assert set(first) >= TRIGGER_KEYS
    assert (first["data_flow_id"], first["queue"], first["deduplicated"]) == (flow["id"], "etl", False)
    again = run.json("trigger", str(flow["id"]))
    assert again == {**first, "deduplicated": True}
    assert len(run.dump()["jobs"]) == 1


def test_trigger_json_stdout_holds_only_the_document_while_events_go_to_stderr(run: Cli) -> None:
    add(run, "t")
    result = run("trigger", "t", "--json")
    assert result.code == 0
    assert len(result.out.splitlines()) == 1
    assert json.loads(result.out)["deduplicated"] is False
    lines = result.err.splitlines()
    # No worker serves the queue: a plain warning line beside the JSON events.
    assert "Warning: no live worker serves queue default" in lines
    logged = [json.loads(line) for line in lines if not line.startswith("Warning: ")]
    assert [line["event"] for line in logged] == ["job.enqueued"]


def test_trigger_sets_last_run_status_in_progress(run: Cli) -> None:
    add(run, "t")
    before = run.json("flows", "show", "t")
    assert (before["last_run_status"], before["last_run_at"]) == (None, None)
    run.json("trigger", "t")
    after = run.json("flows", "show", "t")
    assert after["last_run_status"] == "in_progress"
    assert is_iso_utc(after["last_run_at"])


def test_trigger_params_are_strings_and_params_json_keeps_types(run: Cli) -> None:
    add(run, "t")
    run.json("trigger", "t", "--param", "n=5", "--param", "expr=a=b", "--param", "empty=")
    [job] = run.json("jobs")
    assert job["params"] == {"n": "5", "expr": "a=b", "empty": ""}
    run.json("jobs", "cancel", str(job["id"]))
    run.json("trigger", "t", "--params-json", '{"n": 5, "l": [1, null], "o": {"k": true}}')
    newest = run.json("jobs")[0]
    assert newest["params"] == {"n": 5, "l": [1, None], "o": {"k": True}}


def test_trigger_without_params_has_empty_params(run: Cli) -> None:
    add(run, "t")
    run.json("trigger", "t")
    assert run.json("jobs")[0]["params"] == {}


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2030-01-02T03:04:05", "2030-01-02T03:04:05.000000+00:00"),
        ("2030-01-02T03:04:05.25", "2030-01-02T03:04:05.250000+00:00"),
        ("2030-01-02T03:04:05Z", "2030-01-02T03:04:05.000000+00:00"),
        ("2030-01-02T03:04:05+02:00", "2030-01-02T01:04:05.000000+00:00"),
        ("2030-01-02T03:04:05-05:30", "2030-01-02T08:34:05.000000+00:00"),
    ],
)
def test_trigger_run_at_without_zone_is_utc(run: Cli, given: str, stored: str) -> None:
    add(run, "t")
    run.json("trigger", "t", "--run-at", given)
    assert run.json("jobs")[0]["run_at"] == stored


def test_trigger_queue_and_priority_override_the_flows(run: Cli) -> None:
    add(run, "t", "--queue", "etl", "--priority", "5")
    result = run.json("trigger", "t", "--queue", "urgent", "--priority", "-1")
    assert result["queue"] == "urgent"
    job = run.json("jobs")[0]
    assert (job["queue"], job["priority"]) == ("urgent", -1)
    run.json("jobs", "cancel", str(job["id"]))
    run.json("trigger", "t")
    job = run.json("jobs")[0]
    assert (job["queue"], job["priority"]) == ("etl", 5)


def test_jobs_and_runs_print_contract_objects(run: Cli) -> None:
    flow = add(run, "t")
    [job_id] = run.finish_jobs(flow["id"], 1)
    [job] = run.json("jobs")
    assert set(job) >= JOB_KEYS
    assert (job["id"], job["data_flow_id"], job["data_flow_name"], job["status"]) == (
        job_id,
        flow["id"],
        "t",
        "succeeded",
    )
    assert (job["attempts"], job["max_attempts"], job["rescues"]) == (1, 1, 0)
    assert all(is_iso_utc(job[key]) for key in ("run_at", "created_at", "finished_at"))
    [one] = run.json("runs")
    assert set(one) >= RUN_KEYS
    assert (one["job_id"], one["data_flow_name"], one["attempt"], one["status"]) == (job_id, "t", 1, "success")
    assert one["result"] == {"n": job_id}
    assert one["worker"] == "test-worker"
    assert all(is_iso_utc(one[key]) for key in ("started_at", "ended_at"))


def test_runs_and_jobs_filters(run: Cli) -> None:
    a = add(run, "a")
    b = add(run, "b")
    run.finish_jobs(a["id"], 2)
    run.finish_jobs(b["id"], 1, status="failed")
    assert {row["data_flow_name"] for row in run.json("runs", "--flow", "a")} == {"a"}
    assert len(run.json("runs", "--flow", str(b["id"]))) == 1
    assert [row["status"] for row in run.json("runs", "--status", "failed")] == ["failed"]
    assert [row["status"] for row in run.json("jobs", "--status", "failed")] == ["failed"]
    assert len(run.json("jobs", "--flow", "a")) == 2
    assert run.json("jobs", "--queue", "other") == []


def test_jobs_cancel_and_retry_print_the_job_object(run: Cli) -> None:
    add(run, "t")
    job_id = run.json("trigger", "t")["job_id"]
    cancelled = run.json("jobs", "cancel", str(job_id))
    assert set(cancelled) >= JOB_KEYS
    assert (cancelled["id"], cancelled["status"]) == (job_id, "cancelled")
    assert is_iso_utc(cancelled["finished_at"])
    retried = run.json("jobs", "retry", str(job_id))
    assert set(retried) >= JOB_KEYS
    assert (retried["id"], retried["status"], retried["attempts"], retried["finished_at"]) == (
        job_id,
        "queued",
        0,
        None,
    )


def test_jobs_json_flag_before_the_subcommand(run: Cli) -> None:
    add(run, "t")
    job_id = run.json("trigger", "t")["job_id"]
    result = run("jobs", "--json", "cancel", str(job_id))
    assert result.code == 0
    assert json.loads(result.out)["status"] == "cancelled"


def test_heartbeat_prints_counts(run: Cli) -> None:
    add(run, "due", "--every", "5m")
    add(run, "later", "--cron", "0 0 1 1 *")
    add(run, "off", "--every", "5m", "--disabled")
    assert run.json("heartbeat") == {"due": 1, "enqueued": 1, "skipped": 0}
    assert run.json("heartbeat") == {"due": 0, "enqueued": 0, "skipped": 0}
    clock.travel(301)
    assert run.json("heartbeat") == {"due": 1, "enqueued": 0, "skipped": 1}


def test_prune_prints_counts(run: Cli) -> None:
    flow = add(run, "t")
    run.finish_jobs(flow["id"], 3)
    assert run.json("prune") == {"jobs": 0, "runs": 0}
    clock.travel(2 * 86400)
    assert run.json("prune", "--older-than", "1d") == {"jobs": 3, "runs": 3}
    assert run.dump()["jobs"] == []


def test_prune_default_is_retention(run: Cli) -> None:
    flow = add(run, "t")
    run.finish_jobs(flow["id"], 1)
    clock.travel(29 * 86400)
    assert run.json("prune") == {"jobs": 0, "runs": 0}
    clock.travel(31 * 86400)
    assert run.json("prune") == {"jobs": 1, "runs": 1}


def test_flows_import_and_export(run: Cli, tmp_path: Path) -> None:
    path = tmp_path / "flows.toml"
    path.write_text(
        '[[flow]]\nname = "a"\nclass = "sample_flows:Succeed"\nevery = "5m"\n\n'
        '[[flow]]\nname = "b"\nclass = "sample_flows:Fail"\nconfig = { message = "x" }\n',
        encoding="utf-8",
    )
    assert run.json("flows", "import", str(path)) == {"created": 2, "updated": 0}
    assert run.json("flows", "import", str(path)) == {"created": 0, "updated": 2}
    exported = run.json("flows", "export")
    assert [flow["name"] for flow in exported["flow"]] == ["a", "b"]
    text = run("flows", "export")
    assert text.code == 0
    assert tomllib.loads(text.out) == exported
    path.write_text(text.out, encoding="utf-8")
    assert run.json("flows", "import", str(path)) == {"created": 0, "updated": 2}


# -- newest first, --limit ------------------------------------------------------------------------


def test_runs_and_jobs_are_newest_first_and_honour_limit(run: Cli) -> None:
    flow = add(run, "many")
    job_ids = run.finish_jobs(flow["id"], 56)
    newest_first = sorted(job_ids, reverse=True)
    jobs = run.json("jobs")
    assert [job["id"] for job in jobs] == newest_first[:50]  # default limit
    assert [job["id"] for job in run.json("jobs", "--limit", "53")] == newest_first[:53]
    assert [job["id"] for job in run.json("jobs", "--limit", "1000")] == newest_first
    assert [job["id"] for job in run.json("jobs", "--limit", "3")] == newest_first[:3]
    runs = run.json("runs")
    assert len(runs) == 50
    run_ids = [one["id"] for one in runs]
    assert run_ids == sorted(run_ids, reverse=True)
    assert [one["job_id"] for one in runs] == newest_first[:50]
    assert len(run.json("runs", "--limit", "55")) == 55
    assert len(run.json("runs", "--limit", "500")) == 56
    assert [one["job_id"] for one in run.json("runs", "--limit", "2")] == newest_first[:2]


# -- refused requests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def populated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once, copied per test: alpha has a finished (succeeded) job 1; beta a queued job 2."""
    path = tmp_path_factory.mktemp("populated") / "dfjob.db"
    settings = make_settings(f"sqlite:///{path}", path.parent)
    db.connect(settings.database.url, settings.base_dir)
    try:
        create_schema()
        alpha = add_flow(settings, FlowSpec(name="alpha", class_path="sample_flows:Succeed", every="5m"))
        beta = add_flow(settings, FlowSpec(name="beta", class_path="sample_flows:Succeed"))
    finally:
        close_database()
    assert finish_jobs(path, alpha.id, 1) == [1]
    db.connect(settings.database.url, settings.base_dir)
    try:
        assert trigger_run(settings, beta).job_id == 2
    finally:
        close_database()
    assert not Path(f"{path}-wal").exists()  # closed cleanly: the one file holds everything
    return path


@pytest.fixture
def populated(run: Cli, populated_template: Path) -> Cli:
    shutil.copyfile(populated_template, run.db_path)
    assert [row[1] for row in run.dump()["data_flows"]] == ["alpha", "beta"]
    return run


REFUSED = [
    ["flows", "add", "x", "--class", "sample_flows:Succeed", "--queue", "Bad Queue"],
    ["flows", "add", "x", "--class", "sample_flows:Succeed", "--queue", "q" * 65],
    ["flows", "add", "x", "--class", "sample_flows:Succeed", "--every", "5x"],
    ["flows", "add", "x", "--class", "sample_flows:Succeed", "--every", "0s"],
    ["flows", "add", "x", "--class", "sample_flows:Succeed", "--timeout", "1.5h"],
    ["flows", "add", "x", "--class", "sample_flows:Succeed", "--cron", "* * *"],
    ["flows", "add", "x", "--class", "sample_flows:Succeed", "--every", "5m", "--cron", "* * * * *"],
    ["flows", "add", "x", "--class", "sample_flows:Succeed", "--config-json", "{bad"],
    ["flows", "add", "x", "--class", "sample_flows:Succeed", "--config-json", "[1, 2]"],
    ["flows", "add", "x", "--class", "sample_flows:Succeed", "--max-attempts", "0"],
    ["flows", "add", "x", "--class", "sample_flows:Succeed", "--priority", "99999999999"],
    ["flows", "add", "x", "--class", "no_such_module_zz:Thing"],
    ["flows", "add", "x", "--class", "sample_flows:NotAFlow"],
    ["flows", "add", "x", "--class", "sample_flows:Missing"],
    ["flows", "add", "x", "--class", "sample_flows.Succeed"],
    ["flows", "add", "1x", "--class", "sample_flows:Succeed"],
    ["flows", "add", "alpha", "--class", "sample_flows:Succeed"],
    ["flows", "set", "alpha", "--queue", "UPPER"],
    ["flows", "set", "alpha", "--every", "-1m"],
    ["flows", "set", "alpha", "--name", "beta"],
    ["flows", "set", "alpha", "--no-schedule", "--every", "5m"],
    ["flows", "set", "alpha", "--enabled", "--disabled"],
    ["flows", "set", "alpha", "--class", "sample_flows:NotAFlow"],
    ["flows", "set", "999", "--priority", "1"],
    ["flows", "show", "nosuch"],
    ["flows", "show", "999"],
    ["flows", "enable", "nosuch"],
    ["flows", "disable", "999"],
    ["flows", "remove", "beta"],
    ["flows", "remove", "nosuch"],
    ["flows", "import", "missing.toml"],
    ["trigger", "nosuch"],
    ["trigger", "alpha", "--queue", "bad queue"],
    ["trigger", "alpha", "--priority", "99999999999"],
    ["trigger", "alpha", "--params-json", "{"],
    ["trigger", "alpha", "--params-json", "[1, 2]"],
    ["trigger", "alpha", "--param", "novalue"],
    ["trigger", "alpha", "--param", "=v"],
    ["trigger", "alpha", "--run-at", "tomorrow"],
    ["trigger", "alpha", "--run-at", "2030-13-01T00:00:00"],
    ["runs", "--limit", "0"],
    ["runs", "--limit", "-5"],
    ["runs", "--status", "bogus"],
    ["runs", "--flow", "nosuch"],
    ["jobs", "--limit", "0"],
    ["jobs", "--status", "bogus"],
    ["jobs", "--queue", "Bad Queue"],
    ["jobs", "--flow", "999"],
    ["jobs", "cancel", "1"],  # succeeded
    ["jobs", "cancel", "999"],
    ["jobs", "cancel", "abc"],
    ["jobs", "retry", "1"],  # succeeded
    ["jobs", "retry", "2"],  # queued
    ["jobs", "retry", "999"],
    ["prune", "--older-than", "5x"],
    ["worker", "--concurrency", "0"],
    ["worker", "--queue", "Bad Queue", "--burst"],
    ["worker", "--max-jobs", "0"],
    ["scheduler", "--interval", "0"],
]


@pytest.mark.parametrize("argv", REFUSED, ids=[" ".join(argv)[:60] for argv in REFUSED])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_refused_request_is_one_error_line_and_changes_nothing(populated: Cli, argv: list[str], as_json: bool) -> None:
    before = populated.dump()
    result = populated(*argv, *(["--json"] if as_json and argv[0] not in ("worker", "scheduler") else []))
    assert result.error_line
    assert populated.dump() == before


def test_refused_request_with_debug_shows_the_traceback(populated: Cli) -> None:
    result = populated("--debug", "flows", "show", "nosuch")
    assert result.code == 1
    assert result.out == ""
    assert "Traceback" in result.err
    assert result.err.splitlines()[-1].startswith("Error: ")


def test_missing_config_file_is_refused(run: Cli, tmp_path: Path) -> None:
    result = run("--config", str(tmp_path / "nope.toml"), "flows", "list", config=False)
    assert "nope.toml" in result.error_line


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["flows", "add", "x"],  # missing --class
        ["flows", "show"],
        ["flows", "add", "x", "--class", "sample_flows:Succeed", "--bogus"],
        ["runs", "--limit", "abc"],
        ["trigger", "alpha", "--priority", "high"],
        ["--log-format", "xml", "flows", "list"],
        ["jobs", "cancel"],
    ],
)
def test_click_parse_errors_exit_2(populated: Cli, argv: list[str]) -> None:
    before = populated.dump()
    result = populated(*argv)
    assert result.code == 2
    assert result.out == ""
    assert "Error" in result.err
    assert populated.dump() == before


@pytest.mark.timeout(10)
def test_postgres_password_never_shown(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://u:s3cret@127.0.0.1:1/x"
    result = run("--database-url", url, "flows", "list", "--json", config=False)
    assert "s3cret" not in result.error_line
    result = run("--debug", "--database-url", url, "db", "init", config=False)
    assert result.code == 1
    assert "s3cret" not in result.err + result.out
    monkeypatch.setenv("DFJOB_DATABASE_URL", url)
    result = run("trigger", "x", "--json", config=False)
    assert "s3cret" not in result.error_line


# -- version, entry points ------------------------------------------------------------------------


def test_version(run: Cli) -> None:
    result = run("--version", config=False)
    assert result.code == 0
    assert dfjob.__version__ in result.out


def test_python_dash_m_dfjob_version(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dfjob", "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert dfjob.__version__ in done.stdout


def test_clirunner_version_and_help() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert dfjob.__version__ in result.stdout
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("db", "flows", "trigger", "worker", "heartbeat", "scheduler", "runs", "jobs", "prune"):
        assert command in result.stdout


def test_clirunner_json_output(run: Cli) -> None:
    runner = CliRunner()
    args = ["--config", str(run.config)]
    added = runner.invoke(cli, [*args, "flows", "add", "c", "--class", "sample_flows:Succeed", "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["name"] == "c"
    listed = runner.invoke(cli, [*args, "flows", "list", "--json"])
    assert [flow["name"] for flow in json.loads(listed.stdout)] == ["c"]


def test_clirunner_parse_error_is_exit_2(run: Cli) -> None:
    result = CliRunner().invoke(cli, ["--config", str(run.config), "flows", "add", "x"])
    assert result.exit_code == 2
    assert "--class" in result.stderr


def test_text_output_is_not_json(run: Cli) -> None:
    add(run, "texty", "--every", "5m")
    shown = run("flows", "show", "texty")
    assert shown.code == 0
    assert re.search(r"^name +texty$", shown.out, re.MULTILINE), shown.out
    listed = run("flows", "list")
    assert "texty" in listed.out
    assert run("jobs").out.strip() == "(none)"


def test_runs_at_now_use_the_utc_clock(run: Cli) -> None:
    add(run, "t")
    before = datetime.now(UTC)
    run.json("trigger", "t")
    job = run.json("jobs")[0]
    created = datetime.fromisoformat(job["created_at"])
    assert created >= before.replace(microsecond=0)
    assert job["run_at"] == job["created_at"]
