"""Test helpers for the browser tests: the system's Chromium under Playwright."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page

# Without the networking flags Chromium keeps trying to reach Google's services at start.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
HTTP_4XX = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d")


def chromium_path() -> str:
    found = os.environ.get("OMNISERVE_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail(
            "the browser tests need Chromium: `apt-get install chromium` "
            "(scripts/bootstrap --dev installs it) or set OMNISERVE_CHROMIUM",
            pytrace=False,
        )
    return found


class PageErrors:
    """Uncaught exceptions and console errors of a page: a test fails on any it did not
    expect."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def console(self, message: ConsoleMessage) -> None:
        # The browser logs every 4xx answer; the tests that provoke one check what the page
        # shows for it.
        if message.type == "error" and not HTTP_4XX.match(message.text):
            self.items.append(f"console: {message.text}")

    def page(self, error: Any) -> None:
        self.items.append(f"page: {error}")


def open_page(browser: Browser, url: str, **context: Any) -> tuple[Page, PageErrors]:
    ctx = browser.new_context(permissions=["microphone"], **context)
    page = ctx.new_page()
    page.set_default_timeout(20_000)
    errors = PageErrors()
    page.on("console", errors.console)
    page.on("pageerror", errors.page)
    page.goto(url)
    return page, errors


def screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    """A PNG of the page, kept in the test's folder or in OMNISERVE_SCREENSHOT_DIR."""
    folder = Path(os.environ.get("OMNISERVE_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 5_000  # a real picture, not an empty page
    return path
