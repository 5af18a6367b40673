from __future__ import annotations

from dataclasses import replace

from dfjob import db
from dfjob.config import DatabaseSettings, Settings
from dfjob.models import Job
from dfjob.registry import FlowSpec, add_flow
from dfjob.scheduler import Scheduler

UNREACHABLE = "postgresql://dfjob:s3cret@127.0.0.1:1/nowhere"


def test_a_heartbeat_pass_during_an_outage_logs_db_unavailable_and_the_next_pass_carries_on(
    database: Settings, captured_events: list[tuple[str, dict[str, object]]]
) -> None:
    add_flow(database, FlowSpec(name="hourly", class_path="sample_flows:Succeed", every="1h"))
    reachable = db.database_proxy.obj
    db.database_proxy.initialize(db.make_database(UNREACHABLE, "."))
    try:
        Scheduler(replace(database, database=DatabaseSettings(url=UNREACHABLE)), interval=1).beat()
    finally:
        db.database_proxy.initialize(reachable)

    [payload] = [payload for name, payload in captured_events if name == "db.unavailable"]
    assert "s3cret" not in str(payload["error"])
    assert payload["retry_in"] == 1
    Scheduler(database, interval=1).beat()
    assert Job.select().count() == 1
    assert [event for event, _ in captured_events].count("heartbeat.finished") == 1
