"""omniserve in front of omniserve: the upstream engine relaying to a DashScope-format server.

The back server runs the emulator (real espeak-ng speech); the front one relays to it with the
upstream engine. What a client gets through the front must be what it gets from the back."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from helpers import LiveServer, fast_settings, live_server, stream_reply


@pytest.fixture(scope="module")
def chain() -> Iterator[tuple[LiveServer, LiveServer]]:
    with live_server(fast_settings()) as back:
        upstream = {
            "name": "back",
            "kind": "dashscope",
            "base_urls": [back.api],
            "models": {
                "qwen3-omni-flash": "qwen3-omni-flash",
                "qwen-omni-turbo": "qwen-omni-turbo",
            },
            "health_path": "/healthz",
        }
        settings = fast_settings(engine="upstream", upstream={"upstreams": [upstream]})
        with live_server(settings) as front:
            yield front, back


def test_only_the_routed_names_are_served(chain: tuple[LiveServer, LiveServer]) -> None:
    front, _ = chain
    names = [m["id"] for m in httpx.get(f"{front.api}/models").json()["data"]]
    assert names == ["qwen3-omni-flash", "qwen-omni-turbo"]


def test_text_and_speech_come_through_unchanged(chain: tuple[LiveServer, LiveServer]) -> None:
    front, back = chain
    request = dict(
        model="qwen3-omni-flash",
        messages=[{"role": "user", "content": "Hello there, who are you?"}],
        modalities=["text", "audio"],
        audio={"voice": "Cherry", "format": "wav"},
        seed=7,
    )
    relayed, direct = stream_reply(front, **request), stream_reply(back, **request)
    assert relayed["text"] == direct["text"] and relayed["text"]
    assert relayed["audio"] == direct["audio"] and len(relayed["audio"]) > 24_000
    assert relayed["usage"] == direct["usage"]
    assert relayed["finish"] == "stop"


def test_thinking_and_media_come_through(chain: tuple[LiveServer, LiveServer]) -> None:
    front, back = chain
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 30, 30)).save(buf, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    request = dict(
        model="qwen3-omni-flash",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
        extra_body={"enable_thinking": True},
        seed=3,
    )
    relayed, direct = stream_reply(front, **request), stream_reply(back, **request)
    assert relayed["reasoning"] and relayed["reasoning"] == direct["reasoning"]
    assert relayed["text"] == direct["text"]
    assert "320" in relayed["text"]  # the back server saw the image itself
    assert relayed["usage"] == direct["usage"]
    assert relayed["usage"]["prompt_tokens_details"]["image_tokens"] > 0


def test_the_back_servers_refusals_come_through() -> None:
    """A back server that takes no media refuses what the front accepted: the client gets the
    back's 400 verbatim. A route to a model the back lacks is the operator's mistake: a 503."""
    with live_server(fast_settings(media={"enabled": False})) as back:
        upstream = {
            "name": "back",
            "kind": "dashscope",
            "base_urls": [back.api],
            "models": {"qwen3-omni-flash": "qwen3-omni-flash", "qwen-omni-turbo": "no-such-model"},
        }
        settings = fast_settings(engine="upstream", upstream={"upstreams": [upstream]})
        with live_server(settings) as front:
            audio = {"type": "input_audio", "input_audio": {"data": _wav(), "format": "wav"}}
            body = {"model": "qwen3-omni-flash", "stream": True, "messages": [
                {"role": "user", "content": [audio]}]}  # fmt: skip
            direct = httpx.post(f"{back.api}/chat/completions", json=body)
            relayed = httpx.post(f"{front.api}/chat/completions", json=body)
            assert direct.status_code == relayed.status_code == 400
            assert relayed.json()["error"] == direct.json()["error"]
            body = {"model": "qwen-omni-turbo", "stream": True, "messages": [
                {"role": "user", "content": "hi"}]}  # fmt: skip
            misrouted = httpx.post(f"{front.api}/chat/completions", json=body)
            assert misrouted.status_code == 503
            assert "upstream configuration" in misrouted.json()["error"]["message"]


def _wav() -> str:
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x10" * 16000)
    return base64.b64encode(buf.getvalue()).decode()
