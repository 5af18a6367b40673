"""The operator's view through the real CLI, on SQLite and Postgres: status, workers, queues and
pausing, per-run logs (whole, followed live, bounded), run and job details, cancelling a running
job, the unserved-queue warning, doctor, and text made for people."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DFJOB, Dfjob, _child_env, log_lines, pid_alive
from tests.support.waiting import wait_for

UNSERVED = "Warning: no live worker serves queue"


def _flow_lines(log: dict[str, Any]) -> list[tuple[str, str]]:
    return [(line["stream"], line["text"]) for line in log["lines"]]


# -- status, workers, queues ----------------------------------------------------------------------


def test_status_warns_of_an_unserved_queue_a_failing_flow_and_a_paused_queue(dfjob: Dfjob) -> None:
    dfjob.add_flow("broken", "sample_flows:Fail", "--max-attempts", "1")
    for attempt in range(3):
        dfjob.trigger("broken", "--param", f"try={attempt}")
    dfjob.ok("worker", "--burst")
    dfjob.add_flow("waiting", "sample_flows:Succeed", "--queue", "nightly")
    dfjob.trigger("waiting")
    dfjob.add_flow("held", "sample_flows:Succeed", "--queue", "held")
    dfjob.trigger("held")
    dfjob.ok("queues", "pause", "held")

    status = dfjob.json("status")

    queues = {queue["queue"]: queue for queue in status["queues"]}
    assert queues["default"]["failed_24h"] == 3
    assert (queues["nightly"]["ready"], queues["nightly"]["workers"], queues["nightly"]["paused"]) == (1, 0, False)
    assert queues["nightly"]["oldest_ready_seconds"] >= 0
    assert queues["held"]["paused"] is True
    warnings = "\n".join(status["warnings"])
    assert "queue nightly has 1 ready jobs and no live worker serves it" in warnings
    assert "queue held is paused with 1 ready jobs" in warnings
    assert "data flow broken: its last 3 runs failed" in warnings
    assert [failure["data_flow_name"] for failure in status["recent_failures"]] == ["broken"] * 3
    assert {"next_due", "workers"} <= set(status)


def test_status_text_is_for_people(dfjob: Dfjob) -> None:
    dfjob.add_flow("hello", "sample_flows:Succeed", "--every", "1h")
    dfjob.ok("heartbeat")  # runs it now and makes it due again in an hour
    dfjob.ok("worker", "--burst")

    code, out, _ = dfjob.run("status")

    assert code == 0
    for heading in ("Queues", "Workers", "Next due", "Recent failures", "Warnings"):
        assert re.search(rf"^{heading}$", out, re.MULTILINE), out
    assert "in 59m" in out or "in 1h" in out  # hello's next run, as people say it
    assert not re.search(r"\d{4}-\d\d-\d\dT", out), "no raw ISO timestamps in text output"


def test_a_stale_worker_is_seen_and_warned_of(make_dfjob: Any, database_url: str) -> None:
    dfjob = make_dfjob(database_url, worker={"lease_seconds": 2, "poll_interval": 0.1})
    dfjob.ok("db", "init")
    worker = dfjob.start("worker", "--queue", "default", name="worker")
    wait_for(lambda: [w for w in dfjob.json("workers") if w["state"] == "alive"], what="the worker's record")
    worker.signal_group(signal.SIGKILL)
    worker.wait()

    [record] = wait_for(
        lambda: [w for w in dfjob.json("workers") if w["state"] == "stale"], timeout=30, what="a stale worker"
    )

    assert record["pid"] == worker.pid
    status = dfjob.json("status")
    assert any(warning.startswith(f"worker {record['name']} has not been seen") for warning in status["warnings"])
    assert [w["state"] for w in status["workers"]] == ["stale"]


def test_a_paused_queue_is_not_claimed_until_resumed(dfjob: Dfjob) -> None:
    dfjob.add_flow("hello", "sample_flows:Succeed")
    paused = dfjob.json("queues", "pause", "default")
    assert paused["paused"] is True
    job_id = dfjob.trigger("hello")  # triggers still enqueue

    dfjob.ok("worker", "--burst")  # nothing it may claim: it ends at once

    assert dfjob.job(job_id)["status"] == "queued"
    [queue] = dfjob.json("queues")
    assert (queue["queue"], queue["ready"], queue["paused"]) == ("default", 1, True)
    assert dfjob.json("queues", "resume", "default")["paused"] is False
    dfjob.ok("worker", "--burst")
    assert dfjob.job(job_id)["status"] == "succeeded"


def test_a_running_worker_honours_a_pause_at_its_next_claim(dfjob: Dfjob) -> None:
    dfjob.add_flow("held", "sample_flows:Succeed", "--queue", "held")
    dfjob.add_flow("open", "sample_flows:Succeed", "--queue", "open")
    dfjob.start("worker", "--queue", "held", "--queue", "open", name="worker")
    wait_for(lambda: [w for w in dfjob.json("workers") if w["state"] == "alive"], what="the worker's record")
    dfjob.ok("queues", "pause", "held")

    held = dfjob.trigger("held")
    other = dfjob.trigger("open")
    # The worker claims the job of the open queue after the pause; the paused one stays queued.
    wait_for(lambda: dfjob.job(other)["status"] == "succeeded", what="the open queue's job")
    assert dfjob.job(held)["status"] == "queued"

    dfjob.ok("queues", "resume", "held")
    wait_for(lambda: dfjob.job(held)["status"] == "succeeded", what="the resumed queue's job")


def test_bad_queue_names_are_refused_by_pause(dfjob: Dfjob) -> None:
    code, out, err = dfjob.run("queues", "pause", "Bad Name!")
    assert (code, out) == (1, "")
    assert err.startswith("Error: ")
    assert len(err.strip().splitlines()) == 1


# -- the unserved-queue warning -------------------------------------------------------------------


def test_trigger_onto_a_queue_no_worker_serves_warns_and_still_enqueues(dfjob: Dfjob) -> None:
    dfjob.add_flow("hello", "sample_flows:Succeed")

    code, out, err = dfjob.run("trigger", "hello", "--queue", "typo")

    assert code == 0
    assert f"{UNSERVED} typo" in err.splitlines()
    job_id = json.loads(dfjob.run("jobs", "--json")[1])[0]["id"]
    assert dfjob.job(job_id)["queue"] == "typo"
    assert "Enqueued job" in out


def test_trigger_onto_a_served_queue_does_not_warn(dfjob: Dfjob) -> None:
    dfjob.add_flow("hello", "sample_flows:WaitForRelease", config={"marker": "/dev/null", "release": "/nonexistent"})
    dfjob.start("worker", name="worker")
    wait_for(lambda: [w for w in dfjob.json("workers") if w["state"] == "alive"], what="the worker's record")

    code, _, err = dfjob.run("trigger", "hello")

    assert code == 0
    assert UNSERVED not in err


def test_a_console_trigger_prints_one_line(dfjob: Dfjob) -> None:
    dfjob.add_flow("hello", "sample_flows:Succeed")

    code, out, err = dfjob.run("--log-format", "console", "trigger", "hello")

    assert code == 0
    assert len(out.splitlines()) == 1
    assert "job.enqueued" not in err  # lifecycle events only at log.level = "debug" on a terminal
    code, _, err = dfjob.run("--log-format", "json", "trigger", "hello", "--param", "x=1")
    assert "job.enqueued" in [line.get("event") for line in log_lines(err.replace(f"{UNSERVED} default", ""))]


# -- per-run logs ---------------------------------------------------------------------------------


def test_a_runs_output_and_log_are_kept_with_it_in_order(dfjob: Dfjob) -> None:
    dfjob.add_flow("chatty", "sample_flows:Chatty")
    dfjob.trigger("chatty")

    code, _, worker_err = dfjob.run("worker", "--burst")

    assert code == 0
    [run] = dfjob.json("runs")
    log = dfjob.json("runs", "logs", str(run["id"]))
    assert set(log) >= {"run_id", "lines", "truncated"}
    assert (log["run_id"], log["truncated"]) == (run["id"], False)
    assert _flow_lines(log) == [
        ("stdout", "one to stdout"),
        ("stderr", "two to stderr"),
        ("log", 'info rows.loaded rows=3 table="orders"'),
        ("stdout", "four from a child"),
        ("stdout", "five \x1b[31mred\x1b[0m"),
    ]
    stamps = [line["at"] for line in log["lines"]]
    assert stamps == sorted(stamps)
    assert all(stamp.endswith("+00:00") for stamp in stamps)
    # The worker's own log keeps the lifecycle events; the flow's output is not mixed into it.
    for text in ("one to stdout", "two to stderr", "rows.loaded", "four from a child"):
        assert text not in worker_err
    assert run["log_bytes"] > 0
    assert run["cpu_seconds"] is not None
    assert run["cpu_seconds"] >= 0
    assert run["max_rss_kb"] > 1000

    code, text, _ = dfjob.run("runs", "logs", str(run["id"]))
    assert code == 0
    assert "five \\x1b[31mred\\x1b[0m" in text, "control characters are shown escaped"
    assert "\x1b" not in text


@contextlib.contextmanager
def _follow(dfjob: Dfjob, run_id: int) -> Iterator[subprocess.Popen[str]]:
    """`dfjob runs logs RUN --follow` with its stdout to read; killed if the test ends first."""
    argv = [str(DFJOB), "--config", str(dfjob.config), "runs", "logs", str(run_id), "--follow"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=_child_env()) as follower:
        try:
            yield follower
        finally:
            if follower.poll() is None:
                follower.kill()


def test_follow_shows_a_running_flows_lines_as_they_come_and_ends_with_it(dfjob: Dfjob, tmp_path: Path) -> None:
    marker = tmp_path / "ticker.pid"
    dfjob.add_flow("ticker", "sample_flows:Ticker", config={"marker": str(marker)})
    job_id = dfjob.trigger("ticker", "--param", "count=6", "--param", "interval=1")
    dfjob.start("worker", name="worker")
    dfjob.wait_for_pid(marker)
    run_id = wait_for(lambda: dfjob.runs_of(job_id), what="the run")[0]["id"]

    with _follow(dfjob, run_id) as follower:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        # The first line reached the follower while the flow was still ticking.
        assert dfjob.runs_of(job_id)[0]["status"] == "in_progress"
        assert first.rstrip().endswith("stdout tick 1")
        rest = follower.stdout.read()
        assert follower.wait(timeout=30) == 0
    ticks = [line.split()[-1] for line in [first, *rest.splitlines()]]
    assert ticks == ["1", "2", "3", "4", "5", "6"]
    assert dfjob.runs_of(job_id)[0]["status"] == "success"


def _written_at(line: str) -> datetime:
    """When the flow wrote a `runs logs` line: its HH:MM:SS.mmm stamp (UTC), on the nearest day."""
    clock_time = datetime.strptime(line.split()[0], "%H:%M:%S.%f").time()
    now = datetime.now(UTC)
    stamp = datetime.combine(now.date(), clock_time, tzinfo=UTC)
    return stamp - timedelta(days=1) if stamp - now > timedelta(hours=12) else stamp


def test_follow_sees_each_line_within_about_a_second(dfjob: Dfjob, tmp_path: Path) -> None:
    marker = tmp_path / "ticker.pid"
    dfjob.add_flow("ticker", "sample_flows:Ticker", config={"marker": str(marker)})
    job_id = dfjob.trigger("ticker", "--param", "count=4", "--param", "interval=2")
    dfjob.start("worker", name="worker")
    dfjob.wait_for_pid(marker)
    run_id = wait_for(lambda: dfjob.runs_of(job_id), what="the run")[0]["id"]
    with _follow(dfjob, run_id) as follower:
        assert follower.stdout is not None
        lags = []
        for _ in range(4):
            line = follower.stdout.readline()
            lags.append((datetime.now(UTC) - _written_at(line)).total_seconds())
        assert follower.wait(timeout=30) == 0
    # Lines 2-4 were written while the follower was already waiting for them.
    assert max(lags[1:]) < 2.0, lags


def test_a_flow_printing_50_mb_keeps_its_head_and_tail_within_the_limit(make_dfjob: Any, database_url: str) -> None:
    limit = 64 * 1024
    dfjob = make_dfjob(database_url, runs={"log_max_bytes": limit})
    dfjob.add_flow("flood", "sample_flows:Flood")
    job_id = dfjob.trigger("flood", "--param", "megabytes=50")

    dfjob.ok("worker", "--burst", timeout=300)

    [run] = dfjob.runs_of(job_id)
    assert run["status"] == "success", run["error_message"]
    log = dfjob.json("runs", "logs", str(run["id"]))
    kept = sum(len(line["text"].encode()) + 1 for line in log["lines"])
    assert log["truncated"] is True
    assert kept <= limit
    assert kept > limit * 0.9, "the limit is used, not left empty"
    numbers = [int(line["text"].split()[1]) for line in log["lines"]]
    assert numbers[0] == 0, "the head starts at the first line"
    assert numbers[-1] == 499_999, "the tail ends at the last line"
    assert numbers == sorted(numbers)
    assert run["log_dropped_bytes"] == 50_000_000 - kept
    stored = dfjob.db.scalar("SELECT COUNT(*) FROM run_logs WHERE run_id = ?", (run["id"],))
    assert stored == len(log["lines"])
    code, text, _ = dfjob.run("runs", "logs", str(run["id"]))
    assert code == 0
    assert re.search(r"\[\.\.\. [\d,]+ bytes of output cut here", text)


def test_logs_of_an_unknown_run_are_refused(dfjob: Dfjob) -> None:
    dfjob.ok("db", "init")
    for args in (["runs", "logs", "999"], ["runs", "show", "999"], ["jobs", "show", "999"], ["runs", "logs", "x1"]):
        code, out, err = dfjob.run(*args)
        assert (code, out) == (1, ""), args
        assert err.startswith("Error: "), err
        assert len(err.strip().splitlines()) == 1, err


# -- runs show, jobs show ----------------------------------------------------------------------------


def test_runs_show_and_jobs_show_tell_everything(dfjob: Dfjob) -> None:
    dfjob.add_flow(
        "flaky",
        "sample_flows:FailTimes",
        "--max-attempts",
        "3",
        config={"failures": 1, "counter": str(dfjob.directory / "n")},
    )
    job_id = dfjob.trigger("flaky")
    dfjob.ok("worker", "--burst")

    job = dfjob.json("jobs", "show", str(job_id))

    assert job["status"] == "succeeded"
    assert [(run["attempt"], run["status"]) for run in job["runs"]] == [(1, "failed"), (2, "success")]
    failed = dfjob.json("runs", "show", str(job["runs"][0]["id"]))
    assert failed["error_backtrace"].startswith("Traceback")
    assert {"log_bytes", "cpu_seconds", "max_rss_kb", "result", "worker"} <= set(failed)
    code, text, _ = dfjob.run("runs", "show", str(job["runs"][0]["id"]))
    assert code == 0
    assert "backtrace:" in text
    assert "Traceback" in text
    code, text, _ = dfjob.run("jobs", "show", str(job_id))
    assert code == 0
    assert "Runs" in text
    assert re.search(r"^\S+\s+flaky\s+\d+\s+2\s+success", text, re.MULTILINE), text


# -- cancelling a running job -------------------------------------------------------------------------


def _cancel_running(dfjob: Dfjob, tmp_path: Path, within: float) -> None:
    marker = tmp_path / "sleep.pid"
    dfjob.add_flow("sleepy", "sample_flows:Sleep", "--max-attempts", "3", config={"marker": str(marker)})
    job_id = dfjob.trigger("sleepy", "--param", "seconds=120")
    worker = dfjob.start("worker", name="worker")
    flow_pid = dfjob.wait_for_pid(marker)

    asked = time.monotonic()
    answer = dfjob.json("jobs", "cancel", str(job_id))
    assert answer["cancel_requested"] is True

    wait_for(lambda: dfjob.job(job_id)["status"] == "cancelled", timeout=within, what="the job cancelled")
    took = time.monotonic() - asked
    [run] = dfjob.runs_of(job_id)
    assert (run["status"], run["error_message"]) == ("failed", "cancelled")
    job = dfjob.job(job_id)
    assert job["attempts"] == 1, "no retry"
    wait_for(lambda: not pid_alive(flow_pid), what="the attempt's process gone")
    [event] = wait_for(lambda: worker.events("job.cancelled"), what="job.cancelled")
    assert (event["job_id"], event["run_id"], event["data_flow_name"]) == (job_id, run["id"], "sleepy")
    [finished] = worker.events("job.finished")
    assert (finished["status"], finished["will_retry"]) == ("failed", False)
    assert took < within


def test_cancel_stops_a_running_attempt_on_the_same_host_at_once(dfjob: Dfjob, tmp_path: Path) -> None:
    # Renewals come every 20 s with a 60 s lease: stopping within 5 s is the wake-up, not a renewal.
    _cancel_running(dfjob, tmp_path, within=5)


@pytest.mark.postgres
def test_cancel_reaches_a_worker_that_only_learns_at_lease_renewal(
    make_dfjob: Any, postgres_url: str, tmp_path: Path
) -> None:
    # No LISTEN/NOTIFY (as behind PgBouncer) and a 3 s lease: the renewal (every second) carries it.
    dfjob = make_dfjob(postgres_url, worker={"notify": False, "lease_seconds": 3, "poll_interval": 30})
    _cancel_running(dfjob, tmp_path, within=5)


def test_cancel_of_a_queued_job_says_job_cancelled(dfjob: Dfjob) -> None:
    dfjob.add_flow("hello", "sample_flows:Succeed")
    job_id = dfjob.trigger("hello")

    code, _, err = dfjob.run("jobs", "cancel", str(job_id))

    assert code == 0
    [event] = [line for line in log_lines(err.replace(f"{UNSERVED} default", "")) if line["event"] == "job.cancelled"]
    assert (event["job_id"], event["data_flow_name"], event["queue"]) == (job_id, "hello", "default")
    assert "run_id" not in event
    assert dfjob.job(job_id)["status"] == "cancelled"
    code, _, err = dfjob.run("jobs", "cancel", str(job_id))
    assert code == 1
    assert "only a queued or running job can be cancelled" in err


# -- doctor -------------------------------------------------------------------------------------------


def test_doctor_on_a_healthy_setup_says_so(dfjob: Dfjob) -> None:
    dfjob.ok("db", "init")

    code, out, _ = dfjob.run("doctor", "--json")

    report = json.loads(out)
    assert code == 0, report
    assert report["ok"] is True
    assert report["config_file"] == str(dfjob.config)
    assert report["schema"]["version"] == report["schema"]["latest"]
    levels = {finding["check"]: finding["level"] for finding in report["findings"]}
    assert levels["allowed_modules"] == "warning"  # none set: database write access runs code
    if dfjob.url.startswith("sqlite"):
        assert report["sqlite"]["journal_mode"] == "wal"
        assert report["sqlite"]["busy_timeout_ms"] >= 1000
    else:
        assert abs(report["clock_offset_seconds"]) < 2


def test_doctor_fails_on_an_unserved_queue(dfjob: Dfjob) -> None:
    dfjob.add_flow("hello", "sample_flows:Succeed", "--queue", "nightly")
    dfjob.trigger("hello")

    code, out, _ = dfjob.run("doctor")

    assert code == 1
    assert "[FAIL] queue nightly has 1 ready jobs and no live worker serves it" in out


def test_doctor_diagnoses_an_old_schema_instead_of_refusing(make_dfjob: Any, v1_database_url: str) -> None:
    dfjob = make_dfjob(v1_database_url)

    code, out, err = dfjob.run("doctor", "--json")

    assert code == 1, err
    report = json.loads(out)
    assert report["schema"]["version"] < report["schema"]["latest"]
    assert any("dfjob db upgrade" in finding["message"] for finding in report["findings"])


@pytest.mark.postgres
def test_doctor_names_the_database_without_its_password(make_dfjob: Any, postgres_url: str) -> None:
    # Trust authentication: the password is accepted and ignored, so the database really opens.
    url = postgres_url.replace("postgres@", "postgres:s3cr%2Fet%40pw@")
    dfjob = make_dfjob(url)
    dfjob.ok("db", "init")

    code, out, err = dfjob.run("--debug", "doctor", "--json")

    assert code == 0, out + err
    report = json.loads(out)
    assert report["database"].startswith("postgresql://postgres:***@")
    assert "s3cr" not in out + err
    assert "%2F" not in out + err


# -- text output and filters --------------------------------------------------------------------------


def test_history_tables_are_for_people(dfjob: Dfjob) -> None:
    dfjob.add_flow("hello", "sample_flows:Succeed")
    for day in ("mon", "tue", "wed"):
        dfjob.trigger("hello", "--param", f"day={day}")
    dfjob.ok("worker", "--burst")

    code, out, _ = dfjob.run("runs", "--limit", "2")

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "FLOW", "JOB", "ATTEMPT", "STATUS", "STARTED", "DURATION", "ERROR"]
    assert lines[-1] == "showing 2 of 3"
    assert all(re.search(r"(just now|\d+s ago)\s+\d+\.\d+s", line) for line in lines[1:3]), out
    code, out, _ = dfjob.run("jobs")
    assert code == 0
    assert "showing" not in out
    assert " 1/3 " in out
    assert "True" not in out
    assert "None" not in out


def test_status_filters_repeat_and_accept_both_words_for_success(dfjob: Dfjob) -> None:
    dfjob.add_flow("hello", "sample_flows:Succeed")
    dfjob.add_flow("broken", "sample_flows:Fail", "--max-attempts", "1")
    dfjob.trigger("hello")
    dfjob.trigger("broken")
    dfjob.ok("worker", "--burst")
    dfjob.add_flow("later", "sample_flows:Succeed")
    dfjob.trigger("later", "--run-at", "2099-01-01T00:00:00Z")

    for word in ("success", "succeeded"):
        assert [run["status"] for run in dfjob.json("runs", "--status", word)] == ["success"]
        assert [job["status"] for job in dfjob.json("jobs", "--status", word)] == ["succeeded"]
    both = dfjob.json("jobs", "--status", "succeeded", "--status", "queued", "--since", "1w")
    assert sorted(job["status"] for job in both) == ["queued", "succeeded"]
    assert len(dfjob.json("runs", "--status", "failed", "--status", "success", "--since", "1w")) == 2


def test_final_failures_log_at_error_and_retries_at_warning(dfjob: Dfjob) -> None:
    dfjob.add_flow("broken", "sample_flows:Fail", "--max-attempts", "2")
    dfjob.trigger("broken")

    _, _, err = dfjob.run("worker", "--burst")

    finished = [line for line in log_lines(err) if line["event"] == "job.finished"]
    assert [(line["will_retry"], line["level"]) for line in finished] == [(True, "warning"), (False, "error")]


# -- what the same audit found --------------------------------------------------------------------


def test_changing_every_never_makes_a_flow_due_before_its_last_run_plus_the_interval(dfjob: Dfjob) -> None:
    dfjob.add_flow("hourly", "sample_flows:Succeed", "--every", "1h")
    dfjob.ok("heartbeat")
    dfjob.ok("worker", "--burst")
    last_run = dfjob.json("flows", "show", "hourly")["last_run_at"]

    changed = dfjob.json("flows", "set", "hourly", "--every", "2h")

    expected = datetime.fromisoformat(last_run) + timedelta(hours=2)
    assert abs((datetime.fromisoformat(changed["next_run_at"]) - expected).total_seconds()) < 1
    assert dfjob.json("heartbeat")["enqueued"] == 0
    # An interval shorter than the time since its last run: due now, not in the past's future.
    shorter = dfjob.json("flows", "set", "hourly", "--every", "90s")
    assert datetime.fromisoformat(shorter["next_run_at"]) <= datetime.fromisoformat(last_run) + timedelta(seconds=91)


def test_flows_set_clears_timeout_max_attempts_and_after(dfjob: Dfjob) -> None:
    dfjob.add_flow("up", "sample_flows:Succeed")
    dfjob.add_flow("down", "sample_flows:Succeed", "--timeout", "5m", "--max-attempts", "7", "--after", "up")

    cleared = dfjob.json("flows", "set", "down", "--no-timeout", "--no-max-attempts", "--no-after")

    assert cleared["timeout"] is None
    assert cleared["max_attempts"] == 3  # retry.max_attempts applies again
    assert cleared["after"] == []
