"""Edge cases of the command line found by driving it as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SUPPORT_DIR
from tests.unit.conftest import run_main

pytestmark = pytest.mark.usefixtures("isolated_cli")

Capsys = pytest.CaptureFixture[str]


def _config(folder: Path, extra: str = "") -> Path:
    path = folder / "dfjob.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///dfjob.db"\n[flows]\npaths = ["{SUPPORT_DIR}", "{folder}"]\n'
        f"[retry]\nbackoff_initial = 0\n{extra}",
        encoding="utf-8",
    )
    return path


def _ok(capsys: Capsys, *args: str) -> str:
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    return out


def _refused(capsys: Capsys, *args: str) -> str:
    code, out, err = run_main(capsys, *args)
    assert (code, out) == (1, ""), (code, out, err)
    [line] = err.splitlines()
    assert line.startswith("Error: ")
    return line


def test_a_flow_added_without_a_queue_must_pass_queues_allowed(tmp_path: Path, capsys: Capsys) -> None:
    config = str(_config(tmp_path, '[queues]\nallowed = ["etl"]\n'))
    line = _refused(capsys, "--config", config, "flows", "add", "f", "--class", "sample_flows:Succeed")
    assert "'default' is not in queues.allowed" in line
    flow = json.loads(
        _ok(
            capsys,
            "--config",
            config,
            "flows",
            "add",
            "f",
            "--class",
            "sample_flows:Succeed",
            "--queue",
            "etl",
            "--json",
        )
    )
    assert flow["queue"] == "etl"


def test_setting_only_queues_allowed_leaves_commands_that_serve_no_queue_working(
    tmp_path: Path, capsys: Capsys
) -> None:
    config = str(_config(tmp_path, '[queues]\nallowed = ["etl"]\n'))
    _ok(capsys, "--config", config, "db", "init")
    assert json.loads(_ok(capsys, "--config", config, "flows", "list", "--json")) == []
    line = _refused(capsys, "--config", config, "worker", "--burst")
    assert "worker.queues: queue 'default'" in line
    _ok(capsys, "--config", config, "worker", "--burst", "--queue", "etl")


@pytest.mark.parametrize("option", ["--config-json", "--params-json"])
@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_options_refuse_what_strict_json_cannot_hold(
    tmp_path: Path, capsys: Capsys, option: str, constant: str
) -> None:
    config = str(_config(tmp_path))
    _ok(capsys, "--config", config, "flows", "add", "f", "--class", "sample_flows:Succeed")
    command = ["flows", "set", "f"] if option == "--config-json" else ["trigger", "f"]
    line = _refused(capsys, "--config", config, *command, option, f'{{"x": {constant}}}')
    assert option in line


def test_monitoring_callbacks_load_from_flows_paths_and_their_prints_stay_off_stdout(
    tmp_path: Path, capsys: Capsys
) -> None:
    (tmp_path / "chatty_monitor.py").write_text(
        "print('imported')\nseen = []\n"
        "def record(event, payload):\n    print('called', event)\n    seen.append(event)\n",
        encoding="utf-8",
    )
    config = str(_config(tmp_path, '[monitoring]\ncallbacks = ["chatty_monitor:record"]\n'))
    _ok(capsys, "--config", config, "flows", "add", "f", "--class", "sample_flows:Succeed")

    out = _ok(capsys, "--config", config, "trigger", "f", "--json")

    assert json.loads(out)["deduplicated"] is False  # stdout holds the one JSON document only
    import chatty_monitor  # type: ignore[import-not-found]

    assert chatty_monitor.seen == ["job.enqueued"]


def test_heartbeat_leaves_alone_a_flow_on_a_queue_no_longer_allowed(tmp_path: Path, capsys: Capsys) -> None:
    config = str(_config(tmp_path))
    _ok(capsys, "--config", config, "flows", "add", "old", "--class", "sample_flows:Succeed", "--every", "1h")
    _ok(capsys, "--config", config, "flows", "add", "new", "--class", "sample_flows:Succeed", "--every", "1h")
    _ok(capsys, "--config", config, "flows", "set", "new", "--queue", "etl")
    restricted = str(_config(tmp_path, '[queues]\nallowed = ["etl"]\n'))

    result = json.loads(_ok(capsys, "--config", restricted, "heartbeat", "--json"))

    assert result == {"due": 1, "enqueued": 1, "skipped": 0}
    [job] = json.loads(_ok(capsys, "--config", restricted, "jobs", "--json"))
    assert (job["data_flow_name"], job["queue"]) == ("new", "etl")


def test_sqlite_never_reuses_an_id_after_prune_or_remove(tmp_path: Path, capsys: Capsys) -> None:
    config = str(_config(tmp_path))
    _ok(capsys, "--config", config, "flows", "add", "f", "--class", "sample_flows:Succeed")
    first = json.loads(_ok(capsys, "--config", config, "trigger", "f", "--json"))["job_id"]
    _ok(capsys, "--config", config, "jobs", "cancel", str(first))
    _ok(capsys, "--config", config, "flows", "remove", "f")
    flow = json.loads(_ok(capsys, "--config", config, "flows", "add", "g", "--class", "sample_flows:Succeed", "--json"))
    second = json.loads(_ok(capsys, "--config", config, "trigger", "g", "--json"))["job_id"]
    assert flow["id"] == 2
    assert second > first


def test_jobs_retry_says_job_enqueued(tmp_path: Path, capsys: Capsys) -> None:
    config = str(_config(tmp_path))
    _ok(capsys, "--config", config, "flows", "add", "f", "--class", "sample_flows:Succeed")
    job_id = json.loads(_ok(capsys, "--config", config, "trigger", "f", "--json"))["job_id"]
    _ok(capsys, "--config", config, "jobs", "cancel", str(job_id))

    code, _, err = run_main(capsys, "--config", config, "--log-format", "json", "jobs", "retry", str(job_id))

    assert code == 0
    [event] = [json.loads(line) for line in err.splitlines()]
    assert (event["event"], event["job_id"], event["data_flow_name"]) == ("job.enqueued", job_id, "f")
    assert event["timestamp"].endswith("+00:00")


def test_a_relative_database_url_given_on_the_command_line_is_relative_to_the_working_directory(
    tmp_path: Path, capsys: Capsys
) -> None:
    config_folder = tmp_path / "conf"
    config_folder.mkdir()
    config = str(_config(config_folder))
    _ok(capsys, "--config", config, "--database-url", "sqlite:///here.db", "db", "init")
    assert (Path.cwd() / "here.db").is_file()
    assert not (config_folder / "here.db").exists()


def test_flows_add_refuses_a_class_without_run_and_a_cron_that_never_fires(tmp_path: Path, capsys: Capsys) -> None:
    (tmp_path / "half_done.py").write_text("import dfjob\nclass NoRun(dfjob.Flow):\n    pass\n", encoding="utf-8")
    config = str(_config(tmp_path))
    assert "does not implement run()" in _refused(
        capsys, "--config", config, "flows", "add", "f", "--class", "half_done:NoRun"
    )
    assert "never fires" in _refused(
        capsys, "--config", config, "flows", "add", "f", "--class", "sample_flows:Succeed", "--cron", "0 0 31 2 *"
    )


def test_the_flow_object_shows_the_max_attempts_that_applies(tmp_path: Path, capsys: Capsys) -> None:
    config = str(_config(tmp_path, "max_attempts = 4\n"))  # appended to [retry]
    default = json.loads(
        _ok(capsys, "--config", config, "flows", "add", "d", "--class", "sample_flows:Succeed", "--json")
    )
    own = json.loads(
        _ok(capsys, "--config", config, "flows", "add", "o", "--class", "sample_flows:Succeed", "--max-attempts", "2")
        and _ok(capsys, "--config", config, "flows", "show", "o", "--json")
    )
    assert (default["max_attempts"], own["max_attempts"]) == (4, 2)
    exported = _ok(capsys, "--config", config, "flows", "export")
    assert exported.count("max_attempts") == 1  # the default is not written down as the flow's own


@pytest.mark.parametrize(
    "argv",
    [
        ["flows", "add", "1x", "--class", "sample_flows:Succeed"],
        ["flows", "add", "x", "--class", "sample_flows:Succeed", "--every", "5x"],
        ["flows", "add", "x", "--class", "nowhere:Flow"],
        ["trigger", "x", "--run-at", "never"],
        ["jobs", "--status", "bogus"],
        ["runs", "--limit", "0"],
        ["prune", "--status", "queued"],
        ["worker", "--concurrency", "0"],
    ],
)
def test_a_request_refused_on_its_input_alone_does_not_even_create_the_database(
    tmp_path: Path, capsys: Capsys, argv: list[str]
) -> None:
    _refused(capsys, *argv)
    assert not (tmp_path / "dfjob.db").exists()
