"""The dashboard in a real browser (headless Chromium): sign in, open every page, trigger a flow
from its form and watch its run reach `success` with its log lines appearing live (a real worker),
retry a failed job with its button, and see a flow error holding `<script>` shown as text, never
run. A screenshot of each page (desktop, and the overview at phone width) goes to the test's
folder. Skipped without Chromium unless DFJOB_REQUIRE_BROWSER=1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Dfjob
from tests.support.browser import DESKTOP, PHONE, full_page_screenshot, headless_chromium, missing_browser
from tests.support.waiting import wait_for
from tests.support.web import TOKEN, start_serve

SCRIPT = "<script>alert(1)</script>"
REQUIRE_BROWSER = os.environ.get("DFJOB_REQUIRE_BROWSER") == "1"


@pytest.fixture
def browser() -> Iterator[Any]:
    reason = missing_browser()
    if reason is not None:
        if REQUIRE_BROWSER:
            pytest.fail(f"DFJOB_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    driver = headless_chromium(DESKTOP)
    try:
        yield driver
    finally:
        driver.quit()


def no_alert(driver: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        _ = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_user_signs_in_triggers_follows_a_run_and_retries_in_a_browser(
    browser: Any, make_dfjob: Callable[..., Dfjob], database_url: str, tmp_path: Path
) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    shots = tmp_path / "screenshots"
    web = make_dfjob(database_url, serve={"tokens": [TOKEN]})
    web.add_flow("ticker", "sample_flows:Ticker")
    web.add_flow("broken", "sample_flows:Fail", "--max-attempts", "1", config={"message": SCRIPT})
    broken_job = web.trigger("broken")
    web.ok("worker", "--burst")
    served = start_serve(web)
    web.start("worker", name="worker")

    def text(selector: str) -> str:
        # A following run page reloads itself when the run ends: an element found just before the
        # reload is gone when its text is read, so that read counts as "not there yet".
        try:
            return str(browser.find_element(By.CSS_SELECTOR, selector).text)
        except (NoSuchElementException, StaleElementReferenceException):
            return ""

    # Sign in: the overview asks for it first.
    browser.get(served.base + "/")
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form.stack button").click()
    wait_for(lambda: browser.current_url.rstrip("/") == served.base, timeout=10, what="the overview after sign-in")
    assert "Runs per hour" in browser.page_source
    assert no_alert(browser)
    # At 1280 px every table of the overview fits its box: none scrolls sideways.
    overflowing = browser.execute_script(
        "return Array.from(document.querySelectorAll('.scroll'))"
        ".filter(box => box.scrollWidth > box.clientWidth)"
        ".map(box => box.parentElement.querySelector('h2').textContent)"
    )
    assert overflowing == []
    full_page_screenshot(browser, shots / "overview.png", DESKTOP[0])

    # Every page renders; the failed flow's error is text on each, never a script.
    for name, path in (
        ("flows", "/flows"),
        ("jobs", "/jobs"),
        ("flow-broken", "/flows/2"),
        ("job", f"/jobs/{broken_job}"),
    ):
        browser.get(served.base + path)
        assert no_alert(browser), path
        assert "Error" not in browser.title, path
        full_page_screenshot(browser, shots / f"{name}.png", DESKTOP[0])
    browser.get(served.base + "/runs/1")
    assert no_alert(browser)
    assert SCRIPT in text("#run-error")
    assert browser.execute_script("return window.__xss === undefined")
    full_page_screenshot(browser, shots / "run-failed.png", DESKTOP[0])

    # Trigger from the form and follow the run live until it succeeds.
    browser.get(served.base + "/flows/1")
    browser.find_element(By.ID, "params").send_keys('{"count": 3, "interval": 0.4}')
    browser.find_element(By.CSS_SELECTOR, "#trigger-form button").click()
    wait_for(lambda: "Enqueued job" in browser.page_source, timeout=10, what="the trigger's confirmation")
    job_id = max(job["id"] for job in web.json("jobs"))
    run_id = wait_for(lambda: next(iter(run["id"] for run in web.runs_of(job_id)), None), timeout=30, what="a run")
    browser.get(served.base + f"/runs/{run_id}")
    wait_for(lambda: "success" in text("#run-status"), timeout=60, what="the run page to show success")
    wait_for(lambda: "tick 3" in text("#log"), timeout=10, what="the last log line")
    assert "tick 1" in text("#log")
    full_page_screenshot(browser, shots / "run.png", DESKTOP[0])

    # Retry the failed job with its button.
    browser.get(served.base + "/jobs?status=failed")
    browser.find_element(By.CSS_SELECTOR, f"#job-{broken_job} form[action$='/retry'] button").click()
    wait_for(lambda: "Re-queued job" in browser.page_source, timeout=10, what="the retry's confirmation")
    wait_for(lambda: len(web.runs_of(broken_job)) == 2, timeout=30, what="the retried job's second run")
    assert no_alert(browser)

    # A phone-width overview: the page fits, its tables scroll inside their boxes.
    browser.set_window_size(*PHONE)
    browser.get(served.base + "/")
    page_width, window_width = browser.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert window_width <= 500  # a phone's width (headless Chromium may keep a minimum)
    assert page_width <= window_width
    full_page_screenshot(browser, shots / "overview-phone.png", PHONE[0])
    assert sorted(path.name for path in shots.iterdir()) == sorted(
        ["overview.png", "flows.png", "jobs.png", "flow-broken.png", "job.png", "run-failed.png", "run.png",
         "overview-phone.png"]
    )  # fmt: skip
