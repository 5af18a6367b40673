"""`dfjob serve`'s JSON API and heartbeat endpoint, driven over HTTP against the real command, on
SQLite and Postgres: every endpoint answers the CLI's JSON objects, pages by id, and every
refusal (no token, a wrong one, writes with none configured, a client outside the allowed
networks, bad input, an unknown id) answers JSON and changes nothing."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from dfjob import migrations
from tests.e2e.conftest import Dfjob
from tests.support.web import TOKEN, Served, execute_sql, start_serve


@pytest.fixture
def web(make_dfjob: Callable[..., Dfjob], database_url: str) -> Dfjob:
    return make_dfjob(database_url, serve={"tokens": [TOKEN]})


@pytest.fixture
def served(web: Dfjob) -> Served:
    return start_serve(web)


def _history(dfjob: Dfjob) -> None:
    """Two flows; one job succeeded, one failed for good, one still queued."""
    dfjob.add_flow("hello", "sample_flows:Succeed")
    dfjob.add_flow("broken", "sample_flows:Fail", "--max-attempts", "1", config={"message": "bad row"})
    dfjob.trigger("hello")
    dfjob.trigger("broken")
    dfjob.ok("worker", "--burst")
    dfjob.trigger("hello", "--param", "later=1")


def test_every_read_endpoint_answers_what_the_cli_prints(web: Dfjob, served: Served) -> None:
    _history(web)
    assert served.ok("/api/flows") == web.json("flows", "list")
    assert served.ok("/api/flows/hello") == web.json("flows", "show", "hello")
    assert served.ok("/api/flows/2") == web.json("flows", "show", "2")
    assert served.ok("/api/jobs") == web.json("jobs")
    assert served.ok("/api/jobs/1") == web.json("jobs", "show", "1")
    assert served.ok("/api/runs") == web.json("runs")
    assert served.ok("/api/runs/2") == web.json("runs", "show", "2")
    assert served.ok("/api/runs/1/log") == web.json("runs", "logs", "1")
    assert served.ok("/api/workers") == web.json("workers")
    status, printed = served.ok("/api/status"), web.json("status")
    for queue in (*status["queues"], *printed["queues"]):
        queue.pop("oldest_ready_seconds")  # a moment apart
    assert status == printed
    assert {"queues", "workers", "next_due", "recent_failures", "warnings"} <= set(status)
    assert [failure["error_message"] for failure in status["recent_failures"]] == ["ValueError: bad row"]


def test_lists_take_the_cli_filters_and_page_by_id(web: Dfjob, served: Served) -> None:
    _history(web)
    assert [job["id"] for job in served.ok("/api/jobs?status=failed")] == [2]
    assert [job["id"] for job in served.ok("/api/jobs?status=queued,failed")] == [3, 2]
    assert [job["id"] for job in served.ok("/api/jobs?status=success")] == [1]
    assert [job["id"] for job in served.ok("/api/jobs?flow=hello")] == [3, 1]
    assert [job["id"] for job in served.ok("/api/jobs?queue=default&limit=2")] == [3, 2]
    assert [job["id"] for job in served.ok("/api/jobs?limit=2&before_id=2")] == [1]
    assert [run["id"] for run in served.ok("/api/runs?flow=broken&status=failed")] == [2]
    assert [run["id"] for run in served.ok("/api/runs?limit=1")] == [2]
    assert [run["id"] for run in served.ok("/api/runs?before_id=2")] == [1]
    assert [flow["name"] for flow in served.ok("/api/flows?limit=1&after_id=1")] == ["broken"]
    assert [flow["name"] for flow in served.ok("/api/flows?before_id=2")] == ["hello"]
    assert served.ok("/api/runs?since=1h") == web.json("runs", "--since", "1h")
    log = served.ok("/api/runs/1/log?after=1")
    assert log["run_id"] == 1
    assert log["lines"] == []


def test_trigger_creates_then_deduplicates_and_takes_every_option(web: Dfjob, served: Served) -> None:
    web.add_flow("hello", "sample_flows:Succeed")
    body = {"params": {"day": "2026-01-01"}, "queue": "reports", "priority": -5, "run_at": "2030-01-01T00:00:00Z"}
    created = served.post("/api/flows/hello/trigger", json=body)
    assert created.status_code == 201, created.text
    first = created.json()
    assert {key: first[key] for key in ("job_id", "data_flow_id", "queue", "deduplicated")} == {
        "job_id": 1, "data_flow_id": 1, "queue": "reports", "deduplicated": False,
    }  # fmt: skip
    again = served.post("/api/flows/1/trigger", json=body)
    assert again.status_code == 200
    assert again.json()["job_id"] == 1
    assert again.json()["deduplicated"] is True
    job = web.json("jobs", "show", "1")
    assert (job["params"], job["queue"], job["priority"]) == ({"day": "2026-01-01"}, "reports", -5)
    assert job["run_at"] == "2030-01-01T00:00:00.000000+00:00"
    keyed = served.post("/api/flows/hello/trigger", json={"key": "nightly"})
    assert keyed.status_code == 201
    assert web.json("jobs", "show", str(keyed.json()["job_id"]))["key"] == "nightly"
    empty = served.post("/api/flows/hello/trigger", content=b"")
    assert empty.status_code == 201


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"params": [1]}', "params must be a JSON object"),
        (b'{"priority": "high"}', "priority must be a whole number"),
        (b'{"priority": true}', "priority must be a whole number"),
        (b'{"queue": 5}', "queue must be a string"),
        (b'{"queue": "Bad Queue"}', "invalid queue name"),
        (b'{"run_at": "tomorrow"}', "not an ISO 8601 time"),
        (b'{"colour": "red"}', "unknown field"),
        (b'{"params": {"x": NaN}}', "not valid JSON"),
    ],
)
def test_a_bad_trigger_body_is_400_and_enqueues_nothing(web: Dfjob, served: Served, body: bytes, message: str) -> None:
    web.add_flow("hello", "sample_flows:Succeed")
    response = served.post("/api/flows/hello/trigger", content=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert message in response.json()["error"]
    assert web.json("jobs") == []


def test_cancel_and_retry_change_jobs_as_the_cli_does(web: Dfjob, served: Served) -> None:
    web.add_flow("hello", "sample_flows:Succeed")
    job_id = web.trigger("hello")
    cancelled = served.post(f"/api/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert web.json("jobs", "show", str(job_id))["status"] == "cancelled"
    again = served.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert "error" in again.json()
    retried = served.post(f"/api/jobs/{job_id}/retry")
    assert retried.status_code == 200
    assert retried.json()["status"] == "queued"
    assert served.post(f"/api/jobs/{job_id}/retry").status_code == 409
    assert served.post("/api/jobs/999/cancel").status_code == 404
    assert served.post("/api/jobs/999/retry").json() == {"error": "no job with id 999"}


def test_the_heartbeat_endpoint_runs_one_pass(web: Dfjob, served: Served) -> None:
    web.add_flow("hourly", "sample_flows:Succeed", "--every", "1h")
    response = served.post("/heartbeat")
    assert response.status_code == 200, response.text
    assert response.json() == {"due": 1, "enqueued": 1, "skipped": 0}
    assert served.post("/heartbeat").json() == {"due": 0, "enqueued": 0, "skipped": 0}
    assert [job["triggered_by"] for job in web.json("jobs")] == ["schedule"]


def test_unknown_ids_and_bad_parameters_answer_json(web: Dfjob, served: Served) -> None:
    web.add_flow("hello", "sample_flows:Succeed")
    for path in ("/api/flows/nope", "/api/flows/99", "/api/jobs/99", "/api/runs/99", "/api/runs/99/log",
                 "/api/runs/abc", "/api/jobs?flow=nope"):  # fmt: skip
        response = served.get(path)
        assert response.status_code == 404, path
        assert "error" in response.json(), path
    assert served.post("/api/flows/nope/trigger").status_code == 404
    for path in ("/api/jobs?limit=0", "/api/jobs?limit=abc", "/api/runs?limit=100000", "/api/jobs?status=bogus",
                 "/api/runs?before_id=x", "/api/jobs?queue=Bad%20Q", "/api/runs?since=forever"):  # fmt: skip
        response = served.get(path)
        assert response.status_code == 400, path
        assert "error" in response.json(), path
    missing = served.get("/api/nothing-here")
    assert missing.status_code == 404
    assert "error" in missing.json()
    wrong_method = served.request("DELETE", "/api/jobs")
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json()


def test_a_missing_or_wrong_token_gets_the_same_401(web: Dfjob, served: Served) -> None:
    web.add_flow("hello", "sample_flows:Succeed")
    paths = ("/api/status", "/api/flows", "/api/jobs", "/api/runs", "/api/workers", "/metrics", "/api/runs/1/log")
    for path in paths:
        missing, wrong = served.get(path, token=None), served.get(path, token="not-the-token")
        assert missing.status_code == wrong.status_code == 401, path
        assert missing.json() == wrong.json(), path
    for path in ("/api/flows/hello/trigger", "/heartbeat", "/api/jobs/1/cancel"):
        missing, wrong = served.post(path, token=None), served.post(path, token=TOKEN + "x")
        assert missing.status_code == wrong.status_code == 401, path
        assert missing.json() == wrong.json()
    assert web.json("jobs") == []
    assert served.get("/healthz", token=None).status_code == 200


def test_writes_are_refused_with_403_when_no_token_is_configured(make_dfjob: Any, database_url: str) -> None:
    web = make_dfjob(database_url, serve={"public_read": True})
    web.add_flow("hello", "sample_flows:Succeed")
    served = start_serve(web)
    assert served.get("/api/flows", token=None).status_code == 200
    for path in ("/api/flows/hello/trigger", "/heartbeat"):
        response = served.post(path, token="anything-at-all")
        assert response.status_code == 403, path
        assert "no token is configured" in response.json()["error"]
    assert web.json("jobs") == []


def test_public_read_opens_reads_but_not_writes(make_dfjob: Any, database_url: str) -> None:
    web = make_dfjob(database_url, serve={"public_read": True, "tokens": [TOKEN]})
    web.add_flow("hello", "sample_flows:Succeed")
    served = start_serve(web)
    for path in ("/api/status", "/api/flows/hello", "/metrics", "/", "/flows", "/jobs"):
        assert served.get(path, token=None).status_code == 200, path
    assert served.post("/api/flows/hello/trigger", token=None).status_code == 401
    assert served.post("/api/flows/hello/trigger").status_code == 201


def test_a_client_outside_the_allowed_networks_gets_403_before_anything(make_dfjob: Any, database_url: str) -> None:
    web = make_dfjob(database_url, serve={"tokens": [TOKEN], "public_read": True, "allow_cidrs": ["10.0.0.0/8"]})
    web.add_flow("hello", "sample_flows:Succeed")
    served = start_serve(web)
    for method, path in (("GET", "/healthz"), ("GET", "/api/status"), ("POST", "/api/flows/hello/trigger"),
                         ("GET", "/metrics"), ("GET", "/api/nothing")):  # fmt: skip
        response = served.request(method, path)
        assert response.status_code == 403, path
        assert "not allowed" in response.json()["error"]
    # A forwarded-for header naming an allowed address changes nothing: the socket peer counts.
    forged = served.request("GET", "/api/status", headers={"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3"})
    assert forged.status_code == 403
    assert web.json("jobs") == []


def test_healthz_answers_503_for_a_schema_older_or_newer(web: Dfjob, served: Served) -> None:
    assert served.get("/healthz", token=None).json() == {"ok": True, "schema": migrations.LATEST}
    web.add_flow("hello", "sample_flows:Succeed")
    newer = migrations.LATEST + 1
    execute_sql(web.url, "INSERT INTO dfjob_schema (version, name) VALUES (?, 'from the future')", (newer,))
    response = served.get("/healthz", token=None)
    assert response.status_code == 503
    assert response.json()["ok"] is False
    assert "newer than this dfjob" in response.json()["error"]


def test_serve_logs_where_it_listens_and_stops_cleanly_on_sigterm(web: Dfjob, served: Served) -> None:
    [started] = served.daemon.events("serve.started")
    assert started["host"] == "127.0.0.1"
    assert f":{started['port']}" in served.base
    served.daemon.signal(signal.SIGTERM)
    assert served.daemon.wait(timeout=20) == 0
    assert served.daemon.events("serve.stopped")
