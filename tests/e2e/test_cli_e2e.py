"""The `dfjob` command end to end: register, trigger, run with a real worker, read the history."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Dfjob, log_lines
from tests.support.waiting import wait_for


def _assert_json_log(text: str) -> list[dict[str, object]]:
    lines = log_lines(text)
    assert lines, "expected JSON log lines on stderr"
    for line in lines:
        assert {"event", "timestamp", "level"} <= set(line), line
    return lines


def test_flow_added_triggered_and_run_by_a_burst_worker(dfjob: Dfjob) -> None:
    flow = dfjob.json("flows", "add", "hello", "--class", "sample_flows:Succeed", "--config-json", '{"region": "eu"}')
    assert (flow["name"], flow["class_path"], flow["configuration"]) == (
        "hello",
        "sample_flows:Succeed",
        {"region": "eu"},
    )
    triggered = dfjob.json("trigger", "hello", "--param", "day=monday")
    assert triggered["deduplicated"] is False
    assert triggered["data_flow_id"] == flow["id"]
    assert triggered["queue"] == "default"

    code, out, err = dfjob.run("worker", "--burst")

    assert code == 0, err
    assert out == ""
    events = [line["event"] for line in _assert_json_log(err)]
    assert events[0] == "worker.started"
    assert events[-1] == "worker.stopped"
    assert "job.finished" in events
    [run] = dfjob.json("runs")
    assert run["status"] == "success"
    assert run["job_id"] == triggered["job_id"]
    assert run["attempt"] == 1
    assert run["result"] == {"config": {"region": "eu"}, "params": {"day": "monday"}}
    assert run["started_at"] is not None
    assert run["ended_at"] is not None
    [job] = dfjob.json("jobs")
    assert job["id"] == triggered["job_id"]
    assert (job["status"], job["attempts"], job["rescues"]) == ("succeeded", 1, 0)
    assert dfjob.json("flows", "show", "hello")["last_run_status"] == "success"


def test_failing_flow_is_retried_then_fails(dfjob: Dfjob) -> None:
    dfjob.add_flow("broken", "sample_flows:Fail", "--max-attempts", "2", config={"message": "no data"})
    job_id = dfjob.trigger("broken")

    code, _, err = dfjob.run("worker", "--burst")

    assert code == 0, err
    [job] = dfjob.json("jobs")
    assert job["id"] == job_id
    assert (job["status"], job["attempts"], job["max_attempts"]) == ("failed", 2, 2)
    assert "no data" in job["last_error"]
    runs = dfjob.json("runs")
    assert sorted(run["attempt"] for run in runs) == [1, 2]
    for run in runs:
        assert run["job_id"] == job_id
        assert run["status"] == "failed"
        assert run["error_message"] == "ValueError: no data"
        assert "Traceback" in run["error_backtrace"]
    assert dfjob.json("flows", "show", "broken")["last_run_status"] == "failed"
    finished = [line for line in log_lines(err) if line["event"] == "job.finished"]
    assert [line["will_retry"] for line in finished] == [True, False]


@pytest.mark.slow
def test_scheduler_and_worker_run_a_scheduled_flow_repeatedly(
    make_dfjob: Callable[..., Dfjob], database_url: str
) -> None:
    dfjob = make_dfjob(database_url)
    flow_id = dfjob.add_flow("tick", "sample_flows:Succeed", "--every", "1s")
    scheduler = dfjob.start("scheduler", "--interval", "1", name="scheduler")
    worker = dfjob.start("worker", name="worker")

    wait_for(
        lambda: (
            dfjob.db.scalar(
                "SELECT COUNT(*) AS n FROM data_flow_runs WHERE data_flow_id = ? AND status = 'success'", (flow_id,)
            )
            >= 2
        ),
        timeout=15,
        interval=0.2,
        what="two successful runs of the scheduled flow",
    )
    scheduler.signal(signal.SIGTERM)
    worker.signal(signal.SIGTERM)

    assert scheduler.wait(timeout=60) == 0, scheduler.stderr()
    assert worker.wait(timeout=60) == 0, worker.stderr()
    scheduler_events = [line["event"] for line in _assert_json_log(scheduler.stderr())]
    worker_events = [line["event"] for line in _assert_json_log(worker.stderr())]
    assert scheduler_events.count("heartbeat.finished") >= 2
    assert "job.enqueued" in scheduler_events
    assert worker_events.count("job.finished") >= 2
    assert worker_events[-1] == "worker.stopped"
    jobs = dfjob.json("jobs", "--flow", "tick")
    assert len(jobs) >= 2
    assert all(job["status"] in ("queued", "succeeded") for job in jobs)
    assert sum(job["status"] == "queued" for job in jobs) <= 1
