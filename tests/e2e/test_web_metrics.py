"""`/metrics` and `/healthz` of the real `dfjob serve`: the Prometheus figures match what the test
made (and run totals do not go down when history is pruned); health follows the database as it
stops and starts again (a Postgres of the test's own), and no password reaches a log or a reply."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Dfjob
from tests.support.hosts import PrivatePostgres
from tests.support.waiting import wait_for
from tests.support.web import TOKEN, Served, execute_sql, start_serve


def samples(served: Served) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = served.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_report_what_was_made_and_run_totals_survive_pruning(
    make_dfjob: Callable[..., Dfjob], database_url: str
) -> None:
    web = make_dfjob(database_url, serve={"tokens": [TOKEN]})
    web.add_flow("hello", "sample_flows:Succeed")
    web.add_flow("broken", "sample_flows:Fail", "--max-attempts", "1")
    web.trigger("hello", "--param", "n=1")
    web.trigger("hello", "--param", "n=2")
    web.trigger("broken")
    web.ok("worker", "--burst")
    web.trigger("hello", "--queue", "later")
    served = start_serve(web)
    assert served.post("/heartbeat").status_code == 200
    heartbeat_at = time.time()
    found = samples(served)
    assert found[("dfjob_jobs", (("queue", "default"), ("status", "succeeded")))] == 2
    assert found[("dfjob_jobs", (("queue", "default"), ("status", "failed")))] == 1
    assert found[("dfjob_jobs", (("queue", "later"), ("status", "queued")))] == 1
    assert found[("dfjob_queue_oldest_ready_seconds", (("queue", "later"),))] >= 0
    assert found[("dfjob_queue_oldest_ready_seconds", (("queue", "default"),))] == 0
    assert found[("dfjob_runs_total", (("data_flow", "hello"), ("status", "success")))] == 2
    assert found[("dfjob_runs_total", (("data_flow", "broken"), ("status", "failed")))] == 1
    assert found[("dfjob_workers", (("state", "stopped"),))] == 1
    assert found[("dfjob_workers", (("state", "alive"),))] == 0
    assert abs(found[("dfjob_last_heartbeat_timestamp_seconds", ())] - heartbeat_at) < 60
    durations = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in found.items()
        if name == "dfjob_run_duration_seconds_bucket" and dict(labels)["queue"] == "default"
    )
    assert durations[-1] == (float("inf"), 3)
    assert [value for _, value in durations] == sorted(value for _, value in durations)  # cumulative
    assert found[("dfjob_run_duration_seconds_count", (("queue", "default"),))] == 3
    kept_ms = sum(run["duration_ms"] for run in web.json("runs"))
    assert found[("dfjob_run_duration_seconds_sum", (("queue", "default"),))] == pytest.approx(kept_ms / 1000)

    # Pruning removes the runs; their totals stay.
    execute_sql(web.url, "UPDATE jobs SET finished_at = '2001-01-01 00:00:00.000000' WHERE finished_at IS NOT NULL")
    assert web.json("prune", "--older-than", "1d") == {"jobs": 3, "runs": 3}
    after = samples(served)
    assert after[("dfjob_runs_total", (("data_flow", "hello"), ("status", "success")))] == 2
    assert after[("dfjob_runs_total", (("data_flow", "broken"), ("status", "failed")))] == 1
    web.trigger("hello", "--param", "n=3")
    web.ok("worker", "--burst", "--queue", "default")
    again = samples(served)
    assert again[("dfjob_runs_total", (("data_flow", "hello"), ("status", "success")))] == 3


def test_healthz_follows_a_postgres_that_stops_and_starts_and_never_shows_its_password(
    private_postgres: PrivatePostgres, make_dfjob: Callable[..., Dfjob]
) -> None:
    private_postgres.create_database("jobs")
    password = "s3cr/@t:pw%"
    url = private_postgres.url(database="jobs").replace(
        "postgresql://postgres@", f"postgresql://postgres:{quote(password, safe='')}@"
    )
    web = make_dfjob(url, serve={"tokens": [TOKEN]}, log={"format": "json", "level": "debug"})
    served = start_serve(web)
    assert served.get("/healthz", token=None).json()["ok"] is True

    private_postgres.stop()

    def unhealthy() -> Any:
        response = served.get("/healthz", token=None)
        return response if response.status_code == 503 else None

    down = wait_for(unhealthy, timeout=30, what="/healthz to answer 503")
    assert down.json()["ok"] is False
    assert "database unavailable" in down.json()["error"]
    status = served.get("/api/status")
    assert status.status_code == 503
    assert "error" in status.json()

    private_postgres.start()
    up = wait_for(lambda: served.get("/healthz", token=None).status_code == 200, timeout=30, what="healthz 200")
    assert up
    assert served.get("/api/status").status_code == 200
    for text in (served.daemon.stderr(), down.text, status.text):
        assert password not in text
        assert quote(password, safe="") not in text
