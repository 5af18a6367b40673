from __future__ import annotations

from dfjob import sql
from dfjob.config import Settings
from dfjob.registry import FlowSpec, add_flow
from dfjob.trigger import trigger_run
from dfjob.worker import Worker


def test_trigger_then_worker_burst_records_a_successful_run(database: Settings) -> None:
    flow = add_flow(database, FlowSpec(name="hello", class_path="sample_flows:Succeed"))
    enqueued = trigger_run(database, flow, params={"who": "me"})
    Worker(database).run(burst=True)
    [job] = sql.execute("SELECT status, attempts FROM dfjob.jobs WHERE id = ?", (enqueued.job_id,)).fetchall()
    assert tuple(job) == ("succeeded", 1)
