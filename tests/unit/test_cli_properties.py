"""Property tests of the command line: any name, parameter or config value is either refused with one
`Error:` line, exit status 1 and an unchanged database, or accepted and read back unchanged.

The oracles below are the contract's rules (§3 names, §4 DUR and JSON), written out independently.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.conftest import SUPPORT_DIR
from tests.unit.conftest import run_main

TABLES = ("data_flows", "jobs", "data_flow_runs")
FLOW_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,127}")
QUEUE_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
DURATION = re.compile(r"([0-9]+)([smhdw])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

PROPERTY = hypothesis_settings(
    max_examples=60,
    deadline=None,
    database=None,
    # CI replays the same examples every run; a developer's run explores new ones.
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- oracles --------------------------------------------------------------------------------------


UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(value: Any) -> bool:
    """No text in it a database cannot store as it is: a NUL or a lone surrogate."""
    if isinstance(value, str):
        return not UNSTORABLE.search(value)
    if isinstance(value, dict):
        return all(storable(key) and storable(item) for key, item in value.items())
    if isinstance(value, list):
        return all(storable(item) for item in value)
    return True


def json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) and storable(value) else None


def duration_seconds(text: str) -> int | None:
    match = DURATION.fullmatch(text)
    if not match or int(match.group(1)) == 0:
        return None
    seconds = int(match.group(1)) * UNIT_SECONDS[match.group(2)]
    return seconds if seconds <= 366 * 86400 else None


def toml_string(text: str) -> str:
    # A JSON string with ASCII escapes is a TOML basic string, once DEL is escaped too.
    return json.dumps(text).replace("\x7f", "\\u007f")


# -- strategies -----------------------------------------------------------------------------------

# Lone surrogates (what os.fsdecode makes of bytes that are not UTF-8) and NUL: text that no database stores.
awkward_text = st.text(alphabet=st.characters(categories=["Cs"]) | st.sampled_from("\x00a\x1b"), max_size=3)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | awkward_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=6), json_values, max_size=4).map(json.dumps)
json_texts = st.one_of(
    json_objects,
    json_values.map(json.dumps),  # valid JSON, mostly not an object
    st.text(max_size=12),
    st.sampled_from(["{", '{"a":}', "{'a': 1}", "[]", "null", "{}", '{"a": 1} x', ""]),
)
good_flow_names = st.one_of(
    st.from_regex(FLOW_NAME, fullmatch=True),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_.\-]{124,130}", fullmatch=True),  # around the 128 limit
)
flow_names = st.one_of(
    good_flow_names,
    st.text(alphabet="aZ09_-.é :/\n\t", max_size=10),
    st.text(max_size=10),
)
good_queue_names = st.one_of(
    st.from_regex(QUEUE_NAME, fullmatch=True),
    st.from_regex(r"[a-z0-9][a-z0-9_.\-]{60,66}", fullmatch=True),  # around the 64 limit
)
queue_names = st.one_of(
    good_queue_names,
    st.text(alphabet="aZ09_-.é :/\n", max_size=8),
    st.text(max_size=8),
)
good_durations = st.tuples(st.integers(0, 300), st.sampled_from("smhdw")).map(lambda pair: f"{pair[0]}{pair[1]}")
durations = st.one_of(
    good_durations,
    st.text(alphabet="0123456789smhdwx-. ", max_size=3),
    st.sampled_from(["1.5h", "-1m", "5 m", "\u0663s", "1h30m"]),
)
good_pairs = st.tuples(st.text(min_size=1, max_size=6).filter(lambda key: "=" not in key), st.text(max_size=8))
param_pairs = st.one_of(good_pairs.map("=".join), st.text(max_size=8), awkward_text.map(lambda text: f"k={text}"))
# Ids are ASCII digits; other scripts have digits too (Arabic-Indic ١, Devanagari १, fullwidth １).
id_texts = st.one_of(
    st.integers(2, 10**6).map(str),  # ids the database does not hold: job and flow 1 exist
    st.text(alphabet=st.characters(categories=["Nd"]), min_size=1, max_size=3),
    st.sampled_from(["\u0661", "1\u0663", "\uff11", "0x1", "+1", " 1", "1 "]),
)
priorities = st.integers(-1000, 1000)

# Half the cases draw every field from the likely-valid strategies, so acceptances are common too.
add_cases = st.one_of(
    st.tuples(good_flow_names, good_queue_names, json_objects, good_durations, priorities),
    st.tuples(flow_names, queue_names, json_texts, durations, priorities),
)
set_cases = st.one_of(
    st.tuples(good_flow_names, good_queue_names, json_objects),
    st.tuples(flow_names, queue_names, json_texts),
)
pair_lists = st.one_of(
    st.lists(good_pairs.map("=".join), max_size=4, unique_by=lambda pair: pair.partition("=")[0]),
    st.lists(param_pairs, max_size=4, unique_by=lambda pair: pair.partition("=")[0]),
)
config_cases = st.one_of(
    st.tuples(st.lists(good_queue_names, min_size=1, max_size=3), st.just([]), good_durations, good_queue_names),
    st.tuples(st.lists(queue_names, max_size=3), st.lists(queue_names, max_size=3), durations, queue_names),
)


# -- the command line -----------------------------------------------------------------------------


class Cli:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path = tmp_path
        self.capsys = capsys
        self.config = tmp_path / "dfjob.toml"
        self.write_config()

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(
            f'[database]\nurl = "sqlite:///dfjob.db"\n[flows]\npaths = [{toml_string(str(SUPPORT_DIR))}]\n'
            f'[log]\nformat = "json"\n{extra}',
            encoding="utf-8",
        )

    def __call__(self, *args: str) -> tuple[int, str, str]:
        return run_main(self.capsys, "--config", str(self.config), *args)

    def json(self, *args: str) -> Any:
        """`--json` output of a request that must succeed (the flag goes before any `--`)."""
        split = args.index("--") if "--" in args else len(args)
        code, out, err = self(*args[:split], "--json", *args[split:])
        assert code == 0, (args, out, err)
        return json.loads(out)

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        with closing(sqlite3.connect(self.tmp_path / "dfjob.db")) as conn:
            return {table: conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall() for table in TABLES}

    def refused(self, *args: str) -> str:
        """Run a request that must be refused: one Error line, exit 1, database unchanged."""
        event("refused")
        before = self.dump()
        code, out, err = self(*args)
        assert (code, out) == (1, ""), (args, code, out, err)
        lines = err.splitlines()
        assert len(lines) == 1, (args, err)
        assert lines[0].startswith("Error: "), (args, err)
        assert self.dump() == before, args
        return lines[0]


pytestmark = pytest.mark.usefixtures("isolated_cli")


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    run = Cli(tmp_path, capsys)
    run.json("db", "init")
    return run


# -- properties -----------------------------------------------------------------------------------


@PROPERTY
@given(case=add_cases)
def test_flows_add_refuses_or_round_trips(cli: Cli, case: tuple[str, str, str, str, int]) -> None:
    name, queue, config, every, priority = case
    argv = [
        "flows", "add", "--class", "sample_flows:Succeed", f"--queue={queue}", f"--config-json={config}",
        f"--every={every}", f"--priority={priority}",
    ]  # fmt: skip
    configuration, seconds = json_object(config), duration_seconds(every)
    valid = bool(FLOW_NAME.fullmatch(name) and QUEUE_NAME.fullmatch(queue)) and None not in (configuration, seconds)
    if not valid:
        cli.refused(*argv, "--json", "--", name)
        return
    added = cli.json(*argv, "--", name)
    shown = cli.json("flows", "show", "--", name)
    assert shown == added
    assert (shown["name"], shown["queue"], shown["priority"]) == (name, queue, priority)
    assert shown["configuration"] == configuration
    schedule = re.fullmatch(r"every ([0-9]+)([smhdw])", shown["schedule"])
    assert schedule is not None
    assert int(schedule.group(1)) * UNIT_SECONDS[schedule.group(2)] == seconds
    assert cli("flows", "remove", "--", name)[0] == 0


@PROPERTY
@given(case=set_cases)
def test_flows_set_refuses_or_round_trips(cli: Cli, case: tuple[str, str, str]) -> None:
    name, new_queue, config = case
    if not cli.dump()["data_flows"]:
        cli.json("flows", "add", "existing", "--class", "sample_flows:Succeed")
    argv = ["flows", "set", f"--name={name}", f"--queue={new_queue}", f"--config-json={config}"]
    configuration = json_object(config)
    valid = bool(FLOW_NAME.fullmatch(name) and QUEUE_NAME.fullmatch(new_queue)) and configuration is not None
    current = cli.json("flows", "list")[0]["name"]
    if not valid:
        cli.refused(*argv, "--json", "--", current)
        return
    changed = cli.json(*argv, "--", current)
    shown = cli.json("flows", "show", "--", name)
    assert shown == changed
    assert (shown["name"], shown["queue"], shown["configuration"]) == (name, new_queue, configuration)


@PROPERTY
@given(pairs=pair_lists)
def test_trigger_params_refuse_or_round_trip_as_strings(cli: Cli, pairs: list[str]) -> None:
    if not cli.dump()["data_flows"]:
        cli.json("flows", "add", "p", "--class", "sample_flows:Succeed")
    argv = ["trigger", *(f"--param={pair}" for pair in pairs)]
    well_formed = all("=" in pair and not pair.startswith("=") for pair in pairs)
    if not well_formed or not all(storable(pair) for pair in pairs):
        cli.refused(*argv, "--json", "p")
        return
    job_id = cli.json(*argv, "p")["job_id"]
    [job] = cli.json("jobs", "--limit", "1")
    assert job["id"] == job_id
    assert job["params"] == dict(pair.split("=", 1) for pair in pairs)
    cli.json("jobs", "cancel", str(job_id))


@PROPERTY
@given(params=json_texts)
def test_trigger_params_json_refuses_or_round_trips(cli: Cli, params: str) -> None:
    if not cli.dump()["data_flows"]:
        cli.json("flows", "add", "p", "--class", "sample_flows:Succeed")
    expected = json_object(params)
    if expected is None:
        cli.refused("trigger", f"--params-json={params}", "--json", "p")
        return
    job_id = cli.json("trigger", f"--params-json={params}", "p")["job_id"]
    [job] = cli.json("jobs", "--limit", "1")
    assert (job["id"], job["params"]) == (job_id, expected)
    cli.json("jobs", "cancel", str(job_id))


@PROPERTY
@given(case=config_cases)
def test_config_values_refuse_or_apply(cli: Cli, case: tuple[list[str], list[str], str, str]) -> None:
    worker_queues, allowed, retention, flow_queue = case
    cli.write_config(
        f"[worker]\nqueues = [{', '.join(map(toml_string, worker_queues))}]\n"
        f"[queues]\nallowed = [{', '.join(map(toml_string, allowed))}]\n"
        f"[retention]\nfinished_jobs = {toml_string(retention)}\n"
    )
    names_ok = all(QUEUE_NAME.fullmatch(queue) for queue in [*worker_queues, *allowed])
    # worker.queues outside queues.allowed is refused only by `dfjob worker`, which serves them.
    config_ok = names_ok and bool(worker_queues) and duration_seconds(retention) is not None
    argv = ["flows", "add", "--class", "sample_flows:Succeed", f"--queue={flow_queue}"]
    if not config_ok:
        assert str(cli.config) in cli.refused(*argv, "--json", "q")
        return
    if not QUEUE_NAME.fullmatch(flow_queue) or (allowed and flow_queue not in allowed):
        cli.refused(*argv, "--json", "q")
        return
    assert cli.json(*argv, "q")["queue"] == flow_queue
    assert cli.json("flows", "show", "q")["queue"] == flow_queue
    assert cli("flows", "remove", "q")[0] == 0


@PROPERTY
@given(text=id_texts)
def test_ids_are_ascii_digits_only(cli: Cli, text: str) -> None:
    if not cli.dump()["data_flows"]:
        cli.json("flows", "add", "only", "--class", "sample_flows:Succeed")
        cli.json("trigger", "only")
    for command in (["jobs", "cancel"], ["jobs", "retry"], ["flows", "show"]):
        line = cli.refused(*command, "--", text)
        if command[0] == "jobs" and not (text.isascii() and text.isdigit()):
            assert "a job id is a number" in line
    # Job 1 and flow 1 are untouched, whatever digits stood for 1.
    assert [job["status"] for job in cli.json("jobs")] == ["queued"]
