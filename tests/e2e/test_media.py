"""Media input end to end: the spec's samples through the openai SDK, served from 127.0.0.1."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from helpers import LiveServer, fast_settings, live_server, read_sse


class FileServer:
    """Serves fixture files over real HTTP on 127.0.0.1."""

    def __init__(self, files: dict[str, tuple[bytes, str]]) -> None:
        self.files = files
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", self.path.removeprefix("/redirect"))
                    self.end_headers()
                    return
                found = outer.files.get(self.path)
                if found is None:
                    self.send_error(404)
                    return
                body, kind = found
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def image_bytes(width: int, height: int, fmt: str, color: tuple[int, int, int]) -> bytes:
    img = Image.new("RGB", (width, height), color)
    for x in range(0, width, 40):  # some structure, so encoders do real work
        img.paste((255 - color[0], color[1], 255 - color[2]), (x, 0, x + 10, height))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, str]]:
    tmp = tmp_path_factory.mktemp("media")
    speech = tmp / "speech.wav"
    run(
        [
            "espeak-ng",
            "-v",
            "en-us",
            "-w",
            str(speech),
            "Welcome to omniserve. This is a short test of audio input.",
        ]
    )
    mp3 = tmp / "welcome.mp3"
    run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(speech), "-ar", "16000", str(mp3)])
    mp4 = tmp / "clip.mp4"
    run(
        [
            "ffmpeg",
            "-y",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=1280x720:rate=10:duration=10",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=10",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "20",
            "-c:a",
            "aac",
            "-shortest",
            str(mp4),
        ]
    )
    files = {
        "/dog_and_girl.jpeg": (image_bytes(1280, 720, "JPEG", (200, 120, 40)), "image/jpeg"),
        "/eagle.png": (image_bytes(640, 480, "PNG", (30, 90, 200)), "image/png"),
        "/welcome.mp3": (mp3.read_bytes(), "audio/mpeg"),
        "/clip.mp4": (mp4.read_bytes(), "video/mp4"),
        "/page.html": (b"<!doctype html><title>not media</title>", "text/html"),
    }
    for i in range(1, 5):
        files[f"/football{i}.jpg"] = (
            image_bytes(640, 480, "JPEG", (40 * i, 200 - 30 * i, 100)),
            "image/jpeg",
        )
    return files


@pytest.fixture(scope="module")
def media(fixtures: dict[str, tuple[bytes, str]]) -> Iterator[FileServer]:
    with FileServer(fixtures) as files:
        yield files


@pytest.fixture(scope="module")
def omni(media: FileServer) -> Iterator[LiveServer]:
    settings = fast_settings(media={"allow_hosts": ["127.0.0.1"]})
    with live_server(settings) as server:
        yield server


def collect(server: LiveServer, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """Text and usage of one streamed completion made with the openai SDK."""
    client = OpenAI(api_key="sk-test", base_url=server.api)
    stream = client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs
    )
    text, usage = "", {}
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        elif chunk.usage is not None:
            usage = chunk.usage.model_dump(exclude_none=True)
    return text, usage


def user(part: dict[str, Any], question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [part, {"type": "text", "text": question}]}]


def test_image_url_sample(omni: LiveServer, media: FileServer) -> None:
    part = {"type": "image_url", "image_url": {"url": f"{media.base}/dog_and_girl.jpeg"}}
    for model, tokens in (("qwen3-omni-flash", 882), ("qwen-omni-turbo", 1198)):
        text, usage = collect(
            omni,
            model=model,
            messages=user(part, "图中描绘的是什么景象?"),
            modalities=["text", "audio"],
            audio={"voice": "Cherry", "format": "wav"},
        )
        assert usage["prompt_tokens_details"]["image_tokens"] == tokens
        assert "1280×720" in text and f"{tokens} 个 token" in text
        assert usage["prompt_tokens"] == sum(usage["prompt_tokens_details"].values())


def test_image_data_url_sample(omni: LiveServer, fixtures: dict[str, tuple[bytes, str]]) -> None:
    b64 = base64.b64encode(fixtures["/eagle.png"][0]).decode()
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}
    _, usage = collect(omni, model="qwen3-omni-flash", messages=user(part, "What is it?"))
    assert usage["prompt_tokens_details"]["image_tokens"] == 302


def test_several_images_in_one_message(omni: LiveServer, media: FileServer) -> None:
    parts = [
        {"type": "image_url", "image_url": {"url": f"{media.base}/eagle.png"}},
        {"type": "image_url", "image_url": {"url": f"{media.base}/dog_and_girl.jpeg"}},
        {"type": "text", "text": "Compare them."},
    ]
    text, usage = collect(
        omni, model="qwen3-omni-flash", messages=[{"role": "user", "content": parts}]
    )
    assert usage["prompt_tokens_details"]["image_tokens"] == 302 + 882
    assert "Image 1: 640x480" in text and "Image 2: 1280x720" in text


def test_audio_url_and_data_url_samples(
    omni: LiveServer, media: FileServer, fixtures: dict[str, tuple[bytes, str]]
) -> None:
    b64 = base64.b64encode(fixtures["/welcome.mp3"][0]).decode()
    sources = [f"{media.base}/welcome.mp3", f"data:;base64,{b64}", b64]
    for source in sources:
        part = {"type": "input_audio", "input_audio": {"data": source, "format": "mp3"}}
        text, usage = collect(
            omni, model="qwen3-omni-flash", messages=user(part, "这段音频在说什么")
        )
        audio_tokens = usage["prompt_tokens_details"]["audio_tokens"]
        seconds = float(re.search(r"音频 1：([0-9.]+) 秒", text).group(1))  # type: ignore[union-attr]
        assert 3 < seconds < 8
        assert audio_tokens == pytest.approx(seconds * 12.5, abs=2)


def test_video_file_sample_bills_video_and_audio(omni: LiveServer, media: FileServer) -> None:
    part = {"type": "video_url", "video_url": {"url": f"{media.base}/clip.mp4"}}
    for model, audio_tokens in (("qwen3-omni-flash", 125), ("qwen-omni-turbo", 250)):
        text, usage = collect(omni, model=model, messages=user(part, "视频的内容是什么?"))
        details = usage["prompt_tokens_details"]
        assert details["video_tokens"] == 7202  # 20 frames of 720p, the vendor's worked example
        assert details["audio_tokens"] == audio_tokens
        assert "20 帧" in text


def test_frame_list_sample(omni: LiveServer, media: FileServer) -> None:
    frames = [f"{media.base}/football{i}.jpg" for i in range(1, 5)]
    for model in ("qwen3-omni-flash", "qwen-omni-turbo"):
        text, usage = collect(
            omni,
            model=model,
            messages=user({"type": "video", "video": frames}, "描述这个视频的具体过程"),
        )
        assert usage["prompt_tokens_details"]["video_tokens"] > 0
        assert "由 4 张图片组成" in text


def test_multi_turn_with_audio_then_text(omni: LiveServer, media: FileServer) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {
                    "type": "input_audio",
                    "input_audio": {"data": f"{media.base}/welcome.mp3", "format": "mp3"},
                },
                {"type": "text", "text": "这段音频在说什么"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "这段音频在说:欢迎使用阿里云"}]},
        {"role": "user", "content": [{"type": "text", "text": "介绍一下这家公司?"}]},
    ]
    _, usage = collect(omni, model="qwen3-omni-flash", messages=messages)
    assert usage["prompt_tokens_details"]["audio_tokens"] > 0


def test_redirect_within_the_allowlist(omni: LiveServer, media: FileServer) -> None:
    part = {"type": "image_url", "image_url": {"url": f"{media.base}/redirect/eagle.png"}}
    _, usage = collect(omni, model="qwen3-omni-flash", messages=user(part, "?"))
    assert usage["prompt_tokens_details"]["image_tokens"] == 302


def post(server: LiveServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.api}/chat/completions", json=body, timeout=60)


def refusal(server: LiveServer, part: dict[str, Any], model: str = "qwen3-omni-flash") -> str:
    r = post(server, {"model": model, "stream": True, "messages": user(part, "?")})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["type"]) == ("invalid_parameter_error", "invalid_request_error")
    return str(err["message"])


def test_loopback_is_refused_without_the_allowlist(media: FileServer) -> None:
    with live_server(fast_settings()) as strict:
        part = {"type": "image_url", "image_url": {"url": f"{media.base}/eagle.png"}}
        assert refusal(strict, part) == (
            "Failed to download multimodal content. The host 127.0.0.1 resolves to 127.0.0.1, "
            "which is not a public address."
        )


def test_html_instead_of_an_image(omni: LiveServer, media: FileServer) -> None:
    part = {"type": "image_url", "image_url": {"url": f"{media.base}/page.html"}}
    assert refusal(omni, part) == "Failed to decode the image during the data inspection."


def test_missing_file(omni: LiveServer, media: FileServer) -> None:
    part = {"type": "image_url", "image_url": {"url": f"{media.base}/nope.png"}}
    assert refusal(omni, part) == (
        "Failed to download multimodal content. The server answered HTTP 404."
    )


def test_media_input_can_be_switched_off(media: FileServer) -> None:
    with live_server(fast_settings(media={"enabled": False})) as off:
        part = {"type": "image_url", "image_url": {"url": f"{media.base}/eagle.png"}}
        assert refusal(off, part) == (
            "Media input (image, audio and video) is disabled on this server; "
            "send text-only messages."
        )


def test_stream_is_intact_after_media(omni: LiveServer, media: FileServer) -> None:
    part = {"type": "image_url", "image_url": {"url": f"{media.base}/eagle.png"}}
    body = {
        "model": "qwen3-omni-flash",
        "stream": True,
        "messages": user(part, "?"),
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{omni.api}/chat/completions", json=body) as r:
        events = read_sse(r.iter_lines())
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"]["prompt_tokens_details"]["image_tokens"] == 302


def test_fixture_sizes(fixtures: dict[str, tuple[bytes, str]]) -> None:
    """The fixtures are what the token assertions assume."""
    assert Image.open(io.BytesIO(fixtures["/dog_and_girl.jpeg"][0])).size == (1280, 720)
    assert Image.open(io.BytesIO(fixtures["/eagle.png"][0])).size == (640, 480)


def test_decoding_runs_off_the_event_loop(omni: LiveServer) -> None:
    """A 64 MP PNG decodes in a worker while text requests are served to the end."""
    import numpy as np

    side = 8000
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (side, 1)), np.tile(ramp, (side, 1)).T,
                       np.full((side, side), 128, np.uint8)], axis=-1)  # fmt: skip
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    heavy = {
        "model": "qwen3-omni-flash",
        "stream": True,
        "messages": user({"type": "image_url", "image_url": {"url": url}}, "?"),
    }
    finished: list[str] = []

    def decode() -> None:
        r = post(omni, heavy)
        assert r.status_code == 200
        finished.append("image")

    thread = threading.Thread(target=decode)
    thread.start()
    time.sleep(0.3)  # the decode (over a second) is under way
    for _ in range(3):
        body = {
            "model": "qwen3-omni-flash",
            "stream": True,
            "messages": [{"role": "user", "content": "hello"}],
        }
        with httpx.stream("POST", f"{omni.api}/chat/completions", json=body) as r:
            assert r.read().endswith(b"data: [DONE]\n\n")
        finished.append("text")
    thread.join(60)
    assert finished == ["text", "text", "text", "image"]
