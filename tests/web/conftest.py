"""A real headless Chromium (the system's, driven by Playwright) and a paced server for it.

The browser gets a fake microphone that plays a real espeak-ng recording, so recording is
tested end to end. Screenshots go to a temporary folder, or to ``OMNISERVE_SCREENSHOT_DIR``
when set (``docs/images`` regenerates the README's pictures).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from browser import CHROMIUM_FLAGS, chromium_path, open_page
from helpers import LiveServer, fast_settings, live_server


@pytest.fixture(scope="session")
def microphone_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the fake microphone hears: two seconds of real speech, looped by Chromium."""
    path = tmp_path_factory.mktemp("mic") / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en", "-w", str(path), "What is in this picture? Tell me briefly."],
        check=True,
        timeout=30,
    )
    return path


# Module scope: while Playwright's synchronous API is open, the main thread counts as running
# an event loop, and the other tests' asyncio.run() would refuse to start.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright, microphone_wav: Path) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=chromium_path(),
        args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={microphone_wav}"],
    )
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def paced() -> Iterator[LiveServer]:
    """Replies paced like a model (40 tokens a second), so a stream lasts a few seconds and
    what happens during it can be seen. Loopback media URLs are allowed for the URL test."""
    settings = fast_settings(
        emulator={"tokens_per_second": 40, "first_token_ms": 100},
        media={"allow_hosts": ["127.0.0.1"]},
    )
    with live_server(settings) as server:
        yield server


@pytest.fixture
def page(browser: Browser, paced: LiveServer) -> Iterator[Page]:
    """The playground, loaded and ready (models listed), at a desktop size."""
    page, errors = open_page(browser, f"{paced.base_url}/", viewport={"width": 1280, "height": 800})
    page.wait_for_selector("#model:not([disabled])")
    yield page
    page.context.close()
    assert errors.items == []
