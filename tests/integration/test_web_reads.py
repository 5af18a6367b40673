"""The dashboard's own reads on both databases: runs per hour over the last day, and each flow's
recent durations, against runs placed at known times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dfjob import clock
from dfjob.config import RetrySettings, Settings
from dfjob.history import recent_durations, runs_per_hour
from dfjob.models import to_db_time
from dfjob.registry import FlowSpec, add_flow
from dfjob.sql import execute
from dfjob.store.rows import Outcome, RunStatus
from dfjob.trigger import trigger_run
from tests.support import store_ops


def _runs(settings: Settings, flow_name: str, outcomes: list[tuple[RunStatus, int]]) -> list[int]:
    """One finished run per (status, duration_ms), oldest first; their ids."""
    flow = add_flow(settings, FlowSpec(name=flow_name, class_path="sample_flows:Succeed"))
    ids = []
    for index, (status, duration_ms) in enumerate(outcomes):
        trigger_run(settings, flow, params={"n": index})
        [claimed] = store_ops.claim("w", ["default"], 1, clock.now(), 60)
        began = clock.now()
        store_ops.finish(
            [Outcome(claimed, status, began, began + timedelta(milliseconds=duration_ms))],
            RetrySettings(max_attempts=1),
        )
        ids.append(claimed.run_id)
    return ids


def test_runs_per_hour_counts_each_status_in_its_hour(database: Settings) -> None:
    now = datetime(2026, 12, 7, 15, 20, tzinfo=UTC)
    placed = {
        now - timedelta(minutes=5): RunStatus.SUCCESS,  # this hour
        now - timedelta(minutes=15): RunStatus.FAILED,  # this hour
        now - timedelta(hours=1): RunStatus.SUCCESS,  # 14:20
        now - timedelta(hours=23, minutes=10): RunStatus.SUCCESS,  # 16:10 yesterday: the first hour shown
        now - timedelta(hours=23, minutes=30): RunStatus.FAILED,  # 15:50 yesterday: before it
    }
    ids = _runs(database, "hourly", [(status, 10) for status in placed.values()])
    for run_id, at in zip(ids, placed, strict=True):
        execute("UPDATE dfjob.data_flow_runs SET created_at = ? WHERE id = ?", (to_db_time(at), run_id))

    hours = runs_per_hour(now)

    assert len(hours) == 24
    assert hours[0][0] == datetime(2026, 12, 6, 16, tzinfo=UTC)
    assert hours[-1][0] == datetime(2026, 12, 7, 15, tzinfo=UTC)
    counted = {start.hour: counts for start, counts in hours if counts}
    assert counted == {16: {"success": 1}, 14: {"success": 1}, 15: {"success": 1, "failed": 1}}


def test_recent_durations_are_each_flows_last_finished_runs_oldest_first(database: Settings) -> None:
    first = _runs(database, "first", [(RunStatus.SUCCESS, 100), (RunStatus.FAILED, 200), (RunStatus.SUCCESS, 300)])
    _runs(database, "second", [(RunStatus.SUCCESS, 50)])
    flow_ids = [row[0] for row in execute("SELECT id FROM dfjob.data_flows ORDER BY id").fetchall()]
    empty = add_flow(database, FlowSpec(name="never-ran", class_path="sample_flows:Succeed"))

    found = recent_durations([*flow_ids, int(empty.id)], per_flow=2)

    assert len(first) == 3
    assert found == {
        flow_ids[0]: [(200, "failed"), (300, "success")],
        flow_ids[1]: [(50, "success")],
        int(empty.id): [],
    }
