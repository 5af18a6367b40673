"""Data flows, not just jobs, on SQLite and Postgres: the Python client, the attempt's context,
job keys, backfills, chains (`after`) and catch-up after downtime."""

from __future__ import annotations

import itertools
import random
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import dfjob
from dfjob import clock
from dfjob.backfill import backfill
from dfjob.config import Settings
from dfjob.errors import DfjobError
from dfjob.flowfile import import_flows
from dfjob.heartbeat import heartbeat
from dfjob.models import DataFlow, DataFlowRun, Job
from dfjob.registry import FlowSpec, add_flow, get_flow, update_flow
from dfjob.trigger import trigger_run
from dfjob.worker import Worker

DAY = timedelta(days=1)


def _flow(settings: Settings, name: str, class_name: str = "Context", **spec: Any) -> DataFlow:
    return add_flow(settings, FlowSpec(name=name, class_path=f"sample_flows:{class_name}", **spec))


def _results(flow: DataFlow) -> list[dict[str, Any]]:
    runs = DataFlowRun.select().where(DataFlowRun.data_flow == flow.id, DataFlowRun.status == "success")
    return [run.result for run in runs.order_by(DataFlowRun.id)]


def _config_file(settings: Settings, tmp_path: Path) -> str:
    path = tmp_path / "client.toml"
    paths = ", ".join(f'"{path}"' for path in settings.flows.paths)
    path.write_text(f'[database]\nurl = "{settings.database.url}"\n[flows]\npaths = [{paths}]\n', encoding="utf-8")
    return str(path)


def test_the_client_from_eight_threads_enqueues_each_request_once_and_waits_for_it(
    database: Settings, tmp_path: Path
) -> None:
    flows = [_flow(database, f"f{index}", "Succeed").name for index in range(50)]
    client = dfjob.Client(config=_config_file(database, tmp_path))
    answers: list[tuple[tuple[str, str], int]] = []
    lock = threading.Lock()
    chooser = random.Random(7)
    requests = [(chooser.choice(flows), str(chooser.randrange(10))) for _ in range(1000)]

    def trigger_some(part: list[tuple[str, str]]) -> None:
        try:
            for name, day in part:
                job = client.trigger(name, params={"day": day})
                with lock:
                    answers.append(((name, day), job.job_id))
        finally:
            client.close()  # this thread's connection

    threads = [threading.Thread(target=trigger_some, args=(requests[index::8],)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(answers) == 1000
    by_request: dict[tuple[str, str], set[int]] = {}
    for pair, job_id in answers:
        by_request.setdefault(pair, set()).add(job_id)
    # Every distinct (flow, params) pair was enqueued once while active: one job each, all distinct.
    assert all(len(ids) == 1 for ids in by_request.values())
    assert Job.select().count() == len(by_request)
    assert all(job.triggered_by == "api" for job in Job.select())

    Worker(database, concurrency=2).run(burst=True)
    for job_id in {next(iter(ids)) for ids in by_request.values()}:
        assert client.wait(job_id, timeout=10)["status"] == "succeeded"
    with pytest.raises(DfjobError, match="no data flow with name 'missing'"):
        client.trigger("missing")
    with pytest.raises(DfjobError, match="aware datetime"):
        client.trigger(flows[0], run_at=datetime(2030, 1, 1))


def test_a_flow_knows_its_job_attempt_slot_and_origin(database: Settings) -> None:
    flow = _flow(database, "context", max_attempts=4)
    job_id = trigger_run(database, flow).job_id
    Worker(database).run(burst=True)
    [result] = _results(flow)
    [run] = DataFlowRun.select().where(DataFlowRun.job == job_id)
    assert result == {
        "job_id": job_id, "run_id": run.id, "attempt": 1, "max_attempts": 4, "scheduled_for": None,
        "triggered_by": "trigger",
    }  # fmt: skip


def test_a_backfill_runs_its_slots_in_order_once_and_beside_the_schedule(database: Settings) -> None:
    flow = _flow(database, "daily", cron="0 0 * * *")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    done = backfill(database, flow, start, start + 30 * DAY, parallel=1)
    assert (done.slots, done.enqueued, done.deduplicated) == (30, 30, 0)
    again = backfill(database, flow, start, start + 30 * DAY, parallel=1)
    assert (again.slots, again.enqueued, again.deduplicated) == (30, 0, 30)
    # A heartbeat during the backfill still enqueues the current slot, with a limit of its own.
    clock.travel((get_flow("daily").next_run_at - clock.now()).total_seconds() + 1)
    assert heartbeat(database).enqueued == 1

    Worker(database, concurrency=3).run(burst=True)

    runs = list(
        DataFlowRun.select(DataFlowRun, Job)
        .join(Job)
        .where(Job.triggered_by == "backfill")
        .order_by(DataFlowRun.started_at)
    )
    slots = [run.job.scheduled_for for run in runs]
    assert slots == [start + day * DAY for day in range(30)]  # in slot order, one at a time
    for earlier, later in itertools.pairwise(runs):
        assert earlier.ended_at <= later.started_at
    assert [run.result["scheduled_for"] for run in runs] == [slot.isoformat() for slot in slots]
    scheduled = Job.select().where(Job.triggered_by == "schedule")
    assert [job.status for job in scheduled] == ["succeeded"]
    assert backfill(database, flow, start, start + 30 * DAY).enqueued == 0


def test_after_chains_and_fans_in_by_slot_and_a_failure_enqueues_nothing_downstream(database: Settings) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    middle = (start + DAY).isoformat()
    extract = _flow(database, "extract", cron="0 0 * * *", max_attempts=1, configuration={"fail_slots": [middle]})
    load = _flow(database, "load", after=("extract",))
    report = _flow(database, "report", after=("load",))
    both = _flow(database, "both", after=("extract", "load"))

    backfill(database, extract, start, start + 3 * DAY)
    Worker(database, concurrency=2).run(burst=True)

    def slots(flow: DataFlow) -> list[str | None]:
        return sorted(result["scheduled_for"] for result in _results(flow))

    succeeded = [start.isoformat(), (start + 2 * DAY).isoformat()]
    assert slots(extract) == succeeded
    assert slots(load) == succeeded
    assert slots(report) == succeeded
    assert slots(both) == succeeded  # fan-in: once both of its upstreams succeeded for the slot
    downstream = Job.select().where(Job.data_flow.in_([load.id, report.id, both.id]))
    assert {job.triggered_by for job in downstream} == {"upstream"}
    assert all(job.upstream_job_id is not None for job in downstream)
    assert all(result["triggered_by"] == "upstream" for result in _results(both))


def test_a_cycle_of_after_is_refused_everywhere(database: Settings, tmp_path: Path) -> None:
    _flow(database, "a")
    _flow(database, "b", after=("a",))
    with pytest.raises(DfjobError, match="would wait for itself"):
        update_flow(database, get_flow("a"), FlowSpec(after=("b",)))
    with pytest.raises(DfjobError, match="cannot run after itself"):
        update_flow(database, get_flow("a"), FlowSpec(after=("a",)))
    path = tmp_path / "flows.toml"
    path.write_text(
        '[[flow]]\nname = "x"\nclass = "sample_flows:Succeed"\nafter = ["y"]\n'
        '[[flow]]\nname = "y"\nclass = "sample_flows:Succeed"\nafter = ["x"]\n',
        encoding="utf-8",
    )
    with pytest.raises(DfjobError, match="would wait for itself"):
        import_flows(database, str(path))
    assert [flow.name for flow in DataFlow.select().order_by(DataFlow.id)] == ["a", "b"]


@pytest.mark.parametrize("catch_up", ["skip", "all"])
def test_after_downtime_a_flow_runs_its_latest_slot_or_catches_up_every_one(database: Settings, catch_up: str) -> None:
    flow = _flow(database, "hourly", cron="0 * * * *", catch_up=catch_up)
    first = get_flow("hourly").next_run_at
    # Down for five hours and a half.
    clock.travel((first - clock.now()).total_seconds() + 5.5 * 3600)
    result = heartbeat(database)
    slots = [job.scheduled_for for job in Job.select().where(Job.data_flow == flow.id).order_by(Job.id)]
    expected = [first + timedelta(hours=hours) for hours in range(6)]
    assert slots == (expected if catch_up == "all" else expected[-1:])
    assert result.enqueued == len(slots)
    assert get_flow("hourly").next_run_at == first + timedelta(hours=6)


def test_catch_up_takes_at_most_a_hundred_slots_a_pass_and_resumes_after_a_skip(database: Settings) -> None:
    flow = _flow(database, "minutely", cron="* * * * *", catch_up="all")
    first = get_flow("minutely").next_run_at
    clock.travel((first - clock.now()).total_seconds() + 150 * 60 + 30)
    assert heartbeat(database).enqueued == 100
    # Its scheduled jobs are still queued: skipped, and the slots it passes over are not lost.
    assert heartbeat(database).skipped == 1
    Job.update(status="succeeded").where(Job.data_flow == flow.id).execute()
    assert heartbeat(database).enqueued == 51
    slots = [job.scheduled_for for job in Job.select().where(Job.data_flow == flow.id).order_by(Job.id)]
    assert slots == [first + timedelta(minutes=minutes) for minutes in range(151)]
