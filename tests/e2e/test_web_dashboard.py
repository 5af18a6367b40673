"""The dashboard over plain HTTP against the real `dfjob serve`: signing in with a token sets a
HttpOnly, SameSite=Strict session; every page renders; user text is escaped; a form post without
the session's CSRF token (or with a wrong one) is refused and changes nothing; a public dashboard
still needs a sign-in to change anything."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.e2e.conftest import Dfjob
from tests.support.web import TOKEN, Served, start_serve

SCRIPT = "<script>alert(1)</script>"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


@contextlib.contextmanager
def signed_in(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base, timeout=30) as client:
        token = csrf_of(client.get("/login"))
        response = client.post("/login", data={"csrf": token, "token": TOKEN, "next": "/jobs"})
        assert response.status_code == 302, response.text
        assert response.headers["location"] == "/jobs"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        yield client


@pytest.fixture
def web(make_dfjob: Callable[..., Dfjob], database_url: str) -> Dfjob:
    web = make_dfjob(database_url, serve={"tokens": [TOKEN]})
    web.add_flow("broken", "sample_flows:Fail", "--max-attempts", "1", config={"message": SCRIPT})
    web.trigger("broken")
    web.ok("worker", "--burst")
    return web


def test_anonymous_readers_are_sent_to_sign_in_and_a_wrong_token_is_refused(web: Dfjob) -> None:
    served = start_serve(web)
    with httpx.Client(base_url=served.base, timeout=30) as client:
        for path in ("/", "/flows", "/flows/1", "/runs/1", "/jobs", "/jobs/1"):
            response = client.get(path)
            assert response.status_code == 302, path
            assert response.headers["location"].startswith("/login?next=")
        token = csrf_of(client.get("/login"))
        wrong = client.post("/login", data={"csrf": token, "token": "not-it"})
        assert wrong.status_code == 401
        assert "not valid" in wrong.text
        no_csrf = client.post("/login", data={"token": TOKEN})
        assert no_csrf.status_code == 403


def test_every_page_renders_and_escapes_user_text(web: Dfjob) -> None:
    served = start_serve(web)
    with signed_in(served) as client:
        for path in ("/", "/flows", "/flows/1", "/flows/broken", "/runs/1", "/jobs", "/jobs/1", "/jobs?status=failed"):
            page = client.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            assert SCRIPT not in page.text, path
        for path in ("/", "/runs/1", "/jobs", "/jobs/1"):
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get(path).text, path
        assert client.get("/static/style.css").status_code == 200
        assert client.get("/static/follow.js").status_code == 200
        assert client.get("/runs/999").status_code == 404
        logout = client.post("/logout", data={"csrf": csrf_of(client.get("/jobs"))})
        assert logout.status_code == 302
        assert client.get("/jobs").status_code == 302


def test_a_form_post_without_the_csrf_token_is_refused(web: Dfjob) -> None:
    served = start_serve(web)
    with signed_in(served) as client:
        assert client.post("/jobs/1/retry").status_code == 403
        assert client.post("/jobs/1/retry", data={"csrf": "forged"}).status_code == 403
        assert client.post("/flows/1/trigger", data={"params": "{}"}).status_code == 403
        assert [job["status"] for job in web.json("jobs")] == ["failed"]
        done = client.post("/jobs/1/retry", data={"csrf": csrf_of(client.get("/jobs"))})
        assert done.status_code == 302
        assert [job["status"] for job in web.json("jobs")] == ["queued"]
        trigger = client.post("/flows/1/trigger", data={"csrf": csrf_of(client.get("/flows/1")), "params": "[1]"})
        assert trigger.status_code == 400
        assert len(web.json("jobs")) == 1


def test_a_public_dashboard_renders_for_anyone_but_forms_need_a_sign_in(
    make_dfjob: Callable[..., Dfjob], database_url: str
) -> None:
    web = make_dfjob(database_url, serve={"tokens": [TOKEN], "public_read": True})
    web.add_flow("hello", "sample_flows:Succeed")
    web.trigger("hello")
    web.ok("worker", "--burst")
    served = start_serve(web)
    with httpx.Client(base_url=served.base, timeout=30) as client:
        for path in ("/", "/flows", "/flows/1", "/runs/1", "/jobs", "/jobs/1"):
            assert client.get(path).status_code == 200, path
        token = csrf_of(client.get("/login"))
        refused = client.post("/flows/1/trigger", data={"csrf": token, "params": '{"a": "b"}'})
        assert refused.status_code == 403
    assert len(web.json("jobs")) == 1
