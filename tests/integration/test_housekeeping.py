"""Heartbeats prune the history at most once a day between them, and a prune that failed is tried
again at the next pass rather than a day later (SQLite and Postgres, the project's clock moved)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from dfjob import clock, housekeeping
from dfjob.config import RetrySettings, Settings
from dfjob.heartbeat import heartbeat
from dfjob.models import Job
from dfjob.registry import FlowSpec, add_flow
from dfjob.store import Store
from dfjob.store.rows import Outcome, RunStatus
from dfjob.trigger import trigger_run
from tests.support import store_ops


def _finished_job(settings: Settings, days_ago: float) -> int:
    flow = add_flow(settings, FlowSpec(name=f"f{days_ago:g}", class_path="sample_flows:Succeed"))
    then = clock.now() - timedelta(days=days_ago)
    enqueued = trigger_run(settings, flow)
    [claimed] = store_ops.claim("w", ["default"], 1, clock.now(), 60)
    store_ops.finish([Outcome(claimed, RunStatus.SUCCESS, then, then)], RetrySettings())
    return enqueued.job_id


def test_heartbeats_prune_once_a_day(database: Settings) -> None:
    old = _finished_job(database, days_ago=40)
    heartbeat(database)
    assert not Job.select().where(Job.id == old).exists()

    older = _finished_job(database, days_ago=45)
    heartbeat(database)
    assert Job.select().where(Job.id == older).exists()  # pruned less than a day ago: not again yet
    clock.travel(86400 + 60)
    heartbeat(database)
    assert not Job.select().where(Job.id == older).exists()


def test_a_failed_prune_is_tried_again_at_the_next_pass(database: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _finished_job(database, days_ago=40)
    real_prune = Store.prune
    calls: list[str] = []

    def failing_once(self: Store, *args: Any, **kwargs: Any) -> tuple[int, int]:
        calls.append("prune")
        if len(calls) == 1:
            raise RuntimeError("lock timeout")
        return real_prune(self, *args, **kwargs)

    monkeypatch.setattr(Store, "prune", failing_once)
    heartbeat(database)
    assert Job.select().where(Job.id == old).exists()
    heartbeat(database)  # the very next pass, not a day later
    assert not Job.select().where(Job.id == old).exists()
    assert calls == ["prune", "prune"]
    heartbeat(database)
    assert calls == ["prune", "prune"]  # and then not again that day


def test_prune_if_due_reports_what_it_did(database: Settings) -> None:
    _finished_job(database, days_ago=40)
    assert housekeeping.prune_if_due(database, clock.now()) == (1, 1)
    assert housekeeping.prune_if_due(database, clock.now()) is None
