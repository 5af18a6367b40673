"""Headless Chromium through selenium, for the dashboard's browser tests and its screenshots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CHROMEDRIVER = Path(os.environ.get("DFJOB_CHROMEDRIVER", "/usr/bin/chromedriver"))
DESKTOP = (1280, 900)
PHONE = (390, 844)


def missing_browser() -> str | None:
    """Why no browser test can run here, or None when Chromium and its driver are installed."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not CHROMEDRIVER.exists():
        return f"no chromedriver at {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
    if not (shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")):
        return "no chromium on PATH (apt-get install chromium chromium-driver)"
    return None


def headless_chromium(size: tuple[int, int] = DESKTOP) -> Any:
    """A headless Chromium window of `size` (its driver must be quit by the caller)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--hide-scrollbars", f"--window-size={size[0]},{size[1]}"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(*size)
    return driver


def full_page_screenshot(driver: Any, path: Path, width: int) -> None:
    """The whole page, not only the window: the window is grown to the page's height first."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max(height, 600), 4000))
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
