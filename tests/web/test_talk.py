"""Talk, the playground's spoken conversation over the realtime WebSocket, in a real headless
Chromium against a real uvicorn.

Chromium's fake microphone plays an espeak-ng recording once (``%noloop``), with silence after
each question so that the server's turn detection hears the turn end; after the file it hears
silence. The page's state is read from its DOM: the Talk panel's ``data-state``,
``data-socket``, ``data-chunks`` (audio chunks scheduled for playback) and ``data-playing``,
and ``window.omniserveTalk`` (the events received, barge-ins, turn latencies).
"""

from __future__ import annotations

import re
import subprocess
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect

from browser import CHROMIUM_FLAGS, PageErrors, chromium_path, open_page, screenshot
from helpers import LiveServer, fast_settings, live_server, scrape, value

PANEL = "#talk-panel"
ASSISTANT = ".msg.assistant.talk"
USER = ".msg.user.talk"


def spoken(folder: Path, name: str, *parts: str | float) -> Path:
    """A mono WAV of espeak-ng speech (each string) and silence (each number, in seconds)."""
    frames, rate = b"", 0
    for part in parts:
        if isinstance(part, str):
            clip = folder / f"{name}-{len(frames)}.wav"
            subprocess.run(["espeak-ng", "-v", "en", "-w", str(clip), part], check=True, timeout=30)
            with wave.open(str(clip)) as w:
                rate = w.getframerate()
                frames += w.readframes(w.getnframes())
        else:
            frames += bytes(int(part * (rate or 22050)) * 2)
    path = folder / f"{name}.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


@contextmanager
def chromium(playwright: Playwright, microphone: Path) -> Iterator[Browser]:
    """Chromium whose fake microphone plays ``microphone`` once from each capture's start."""
    browser = playwright.chromium.launch(
        executable_path=chromium_path(),
        args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={microphone}%noloop"],
    )
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return spoken(
        tmp_path_factory.mktemp("talk"), "question", 0.3, "What is the capital of France?", 2.5
    )


@pytest.fixture(scope="module")
def browser(playwright: Playwright, question: Path) -> Iterator[Browser]:
    """This module's Chromium: its microphone asks one question."""
    with chromium(playwright, question) as browser:
        yield browser


@pytest.fixture(scope="module")
def fast() -> Iterator[LiveServer]:
    with live_server(fast_settings()) as server:
        yield server


def playground(browser: Browser, server: LiveServer, **context: Any) -> tuple[Page, PageErrors]:
    context.setdefault("viewport", {"width": 1280, "height": 800})
    page, errors = open_page(browser, f"{server.base_url}/", **context)
    page.wait_for_selector("#talk:not([disabled])")
    return page, errors


def panel(page: Page, name: str) -> str:
    return page.get_attribute(PANEL, f"data-{name}") or ""


def talk_stats(page: Page) -> dict[str, Any]:
    stats: dict[str, Any] = page.evaluate("window.omniserveTalk")
    return stats


def end_talk(page: Page, server: LiveServer, admin: str | None = None) -> None:
    """End talk closes the socket, and the server's session with it (``admin``: a key that
    may read the server's metrics)."""
    page.click("#talk")
    expect(page.locator(PANEL)).to_have_attribute("data-socket", "closed")
    expect(page.locator("#talk")).to_have_attribute("aria-pressed", "false")
    assert page.is_hidden(PANEL) and page.is_visible("#prompt")
    deadline = time.monotonic() + 10
    while value(scrape(server, admin), "omniserve_realtime_sessions") != 0:
        assert time.monotonic() < deadline, "the server kept the session open"
        time.sleep(0.05)


def test_a_spoken_turn_is_heard_and_answered_in_speech(browser: Browser, paced: LiveServer) -> None:
    page, errors = playground(browser, paced)
    page.click("#talk")
    expect(page.locator("#talk")).to_have_attribute("aria-pressed", "true")
    assert page.inner_text("#talk") == "End talk" and page.is_hidden("#prompt")
    expect(page.locator(PANEL)).to_have_attribute("data-socket", "open")
    # The microphone is heard: the level meter moves while the question plays.
    page.wait_for_function(
        "() => +document.querySelector('#talk-level').getAttribute('aria-valuenow') > 30"
    )
    # The server hears the turn start, then end: the user's turn shows how long it spoke.
    page.wait_for_selector(f"{USER}[data-state=speaking]")
    page.wait_for_selector(f"{USER}[data-state=heard]")
    heard = re.fullmatch(r"([\d.]+) s", page.inner_text(f"{USER} .spoken"))
    assert heard and 1.2 <= float(heard.group(1)) <= 2.5, heard
    # The transcript streams in while the answer is still coming...
    partial = page.wait_for_function(
        """(sel) => {
            const m = document.querySelector(sel);
            const t = m && m.querySelector('.text').textContent;
            return m && m.dataset.state === 'streaming' && t.length > 0 ? t : null;
        }""",
        arg=ASSISTANT,
    ).json_value()
    # ...and its speech plays as it comes: chunks are scheduled on the audio clock before the
    # answer ends.
    page.wait_for_function(
        "(sel) => document.querySelector(sel).dataset.playing === 'true'", arg=PANEL
    )
    assert int(panel(page, "chunks")) > 0
    assert panel(page, "state") == "answering"
    page.wait_for_selector(f"{ASSISTANT}[data-state=done]", timeout=30_000)
    final = page.inner_text(f"{ASSISTANT} .text")
    assert final.startswith(partial) and len(final) > len(partial)
    assert "omniserve's offline emulator" in final and "Cherry" in final
    audio = re.search(r"Audio 1: ([\d.]+) seconds", final)
    assert audio and 1.5 <= float(audio.group(1)) <= 3.0, final
    usage = page.inner_text(f"{ASSISTANT} .usage")
    assert re.search(
        r"input \d+ \(text \d+, audio \d+\) · output \d+ \(text \d+, audio \d+\)", usage
    )
    assert re.search(r"first audio \d+ ms", usage), usage
    assert page.get_attribute(f"{ASSISTANT} .text", "aria-live") == "polite"

    stats = talk_stats(page)
    events = stats["events"]
    assert events[0] == "session.created" and "error" not in events
    turn = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "response.created",
        "response.done",
    ]
    assert sorted(turn, key=events.index) == turn
    deltas = [i for i, e in enumerate(events) if e.startswith("response.audio")]
    assert (
        events.index("response.created") < min(deltas) < max(deltas) < events.index("response.done")
    )
    assert stats["sent"] >= 25  # the microphone went up in 100 ms chunks, in real time
    assert (
        stats["scheduled"] == int(panel(page, "chunks")) >= events.count("response.audio.delta") - 1
    )
    assert len(stats["latencies"]) == 1 and stats["latencies"][0] < 5000
    assert re.fullmatch(
        r"qwen3-omni-flash-realtime · answered \d+ ms after your turn",
        page.inner_text("#talk-info"),
    )
    assert (
        page.locator(".talk-divider").first.inner_text()
        == "Talk · qwen3-omni-flash-realtime · Cherry"
    )

    end_talk(page, paced)
    assert panel(page, "playing") == "false"
    assert page.locator(".talk-divider").last.inner_text() == "Talk ended."
    page.context.close()
    assert errors.items == []


def test_speaking_over_the_answer_stops_it(
    playwright: Playwright, paced: LiveServer, tmp_path: Path
) -> None:
    """Barge-in: a second question while the first answer plays cuts it at once, on the page
    (the queued speech is dropped) and on the server (which answers the new turn, with the
    cut answer as the assistant's turn)."""
    microphone = spoken(
        tmp_path, "two", 0.3, "What is the capital of France?", 3.0, "And what about Spain?", 2.5
    )
    with chromium(playwright, microphone) as browser:
        page, errors = playground(browser, paced)
        page.click("#talk")
        first = page.locator(ASSISTANT).first
        expect(first).to_have_attribute("data-state", "cut", timeout=20_000)
        assert "Cut off: you spoke over it." in first.inner_text()
        barge = talk_stats(page)["bargeIns"]
        assert len(barge) == 1 and barge[0]["pending"] > 0.3, barge  # it was playing
        assert panel(page, "playing") == "false"
        # The second question is being heard: the picture for the docs.
        screenshot(page, "playground-talk", tmp_path)
        # The server heard the second question and answers it, the cut answer included.
        expect(page.locator(USER)).to_have_count(2)
        second = page.locator(ASSISTANT).nth(1)
        expect(second).to_contain_text(
            "I received 3 message(s): 2 from the user, 1 from the assistant"
        )
        expect(second).to_have_attribute("data-state", "done", timeout=30_000)
        assert "cancelled" not in page.inner_text("#notice")
        end_talk(page, paced)
        page.context.close()
        assert errors.items == []


def test_talk_with_an_api_key_in_text_only(browser: Browser) -> None:
    """A browser cannot set headers on a WebSocket: the key goes as a subprotocol. A wrong key
    is refused with the API's own words."""
    with live_server(fast_settings()) as server:
        assert server.accounts.store is not None
        created, secret = server.accounts.store.create("talk")
        _, admin = server.accounts.store.create("operator", admin=True)
        page, errors = open_page(
            browser, f"{server.base_url}/", viewport={"width": 1280, "height": 800}
        )
        page.fill("#api-key", secret)
        page.press("#api-key", "Enter")
        page.wait_for_selector("#talk:not([disabled])")
        page.check("input[name=output][value=text]")
        # A typed turn first: Talk goes on from the conversation's text.
        page.fill("#prompt", "Hello in writing.")
        page.press("#prompt", "Enter")
        page.wait_for_selector(".msg.assistant[data-state=done]")
        page.click("#talk")
        expect(page.locator(PANEL)).to_have_attribute("data-socket", "open")
        page.wait_for_selector(f"{ASSISTANT}[data-state=done]")
        text = page.inner_text(f"{ASSISTANT} .text")
        assert "omniserve's offline emulator" in text and "Audio 1:" in text
        assert "I received 3 message(s): 2 from the user, 1 from the assistant" in text
        assert "voice" not in page.inner_text(f"{ASSISTANT} .who")
        assert panel(page, "chunks") == "0"
        assert "response.text.delta" in talk_stats(page)["events"]
        assert re.search(r"first text \d+ ms", page.inner_text(f"{ASSISTANT} .usage"))
        end_talk(page, server, admin)

        # A key revoked since the page loaded: the socket is refused, and the page says why
        # in the API's words and asks for another key.
        server.accounts.store.revoke(created.id)
        refused = httpx.get(f"{server.api}/models", headers={"Authorization": f"Bearer {secret}"})
        assert refused.status_code == 401
        page.click("#talk")
        page.wait_for_selector("#key-dialog[open]")
        message = refused.json()["error"]["message"]
        assert page.inner_text("#key-reason") == message
        assert message in page.inner_text("#notice")
        assert panel(page, "socket") == "closed" and page.is_hidden(PANEL)
        expect(page.locator("#talk")).to_have_attribute("aria-pressed", "false")
        page.context.close()
    # Chromium logs the refused handshake itself.
    assert [e for e in errors.items if "WebSocket connection to" not in e] == []


def test_a_refused_microphone_is_said_plainly(browser: Browser, fast: LiveServer) -> None:
    page, errors = open_page(browser, "about:blank", viewport={"width": 1280, "height": 800})
    page.add_init_script(
        """navigator.mediaDevices.getUserMedia = () =>
            Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));"""
    )
    page.goto(f"{fast.base_url}/")
    page.wait_for_selector("#talk:not([disabled])")
    page.click("#talk")
    expect(page.locator("#notice")).to_contain_text("The microphone was refused.")
    expect(page.locator("#talk")).to_have_attribute("aria-pressed", "false")
    assert panel(page, "socket") == "closed" and talk_stats(page)["events"] == []
    assert page.is_visible("#prompt") and page.is_enabled("#model")
    assert page.locator(".talk-divider").count() == 0 and page.is_visible("#empty")
    page.context.close()
    assert errors.items == []


def test_a_server_error_event_is_shown_and_the_session_goes_on(
    browser: Browser, fast: LiveServer, tmp_path: Path
) -> None:
    """A voice the model does not have: the server answers the session's update with an error
    event, and the conversation goes on in the default voice. On a phone, dark."""
    page, errors = playground(
        browser,
        fast,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        color_scheme="dark",
    )
    page.evaluate(
        """() => {
            const select = document.querySelector('#voice');
            select.append(new Option('Nobody', 'Nobody'));
            select.value = 'Nobody';
        }"""
    )
    page.click("#talk")
    notice = page.locator("#notice")
    expect(notice).to_contain_text("The server said:")
    expect(notice).to_contain_text("Nobody")
    expect(notice).to_contain_text("(invalid_value)")
    page.wait_for_selector(f"{ASSISTANT}[data-state=done]")
    assert "with the voice Cherry" in page.inner_text(f"{ASSISTANT} .text")
    # The page names the voice the session kept, not the one it was refused.
    assert page.inner_text(f"{ASSISTANT} .who") == "qwen3-omni-flash-realtime · Cherry"
    assert panel(page, "socket") == "open" and int(panel(page, "chunks")) > 0
    # The settings the session was set up from wait until it ends.
    page.click("#settings-toggle")
    assert page.is_disabled("#model") and page.is_disabled("#voice") and page.is_disabled("#system")
    page.click("#settings-toggle")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert (
        page.is_visible("#talk-level") and page.is_visible("#talk") and page.is_hidden("#talk-info")
    )
    screenshot(page, "playground-talk-phone", tmp_path)
    end_talk(page, fast)
    page.click("#settings-toggle")
    assert page.is_enabled("#model") and page.is_enabled("#voice") and page.is_enabled("#system")
    page.context.close()
    assert errors.items == []


def test_a_session_the_server_closes_ends_talk_with_its_reason(browser: Browser) -> None:
    with live_server(fast_settings(realtime={"max_session_s": 1.5})) as server:
        page, errors = playground(browser, server)
        page.click("#talk")
        expect(page.locator(PANEL)).to_have_attribute("data-socket", "open")
        expect(page.locator("#talk")).to_have_attribute("aria-pressed", "false")
        notice = page.inner_text("#notice")
        assert notice.startswith("The realtime session closed: The session reached its limit")
        assert notice.endswith("(session_expired)")
        assert panel(page, "socket") == "closed" and page.is_visible("#prompt")
        assert page.locator(".talk-divider").last.inner_text() == "Talk ended."
        page.context.close()
        assert errors.items == []
