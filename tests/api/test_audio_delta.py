"""The OpenAI-style audio delta, for clients that add the deltas up: one id, one expiry, the
whole transcript; the vendor's shape stays the default."""

from __future__ import annotations

import json
from typing import Any

import httpx
from openai import OpenAI

from helpers import LiveServer, fast_settings, live_server

BODY: dict[str, Any] = {
    "model": "qwen3-omni-flash",
    "messages": [{"role": "user", "content": "Who are you?"}],
    "modalities": ["text", "audio"],
    "audio": {"voice": "Cherry", "format": "wav"},
}
OPENAI = {"X-Omniserve-Audio-Delta": "openai"}


def events(server: LiveServer, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{server.api}/chat/completions",
        json={**BODY, "stream": True},
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    lines = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: {")]
    return [json.loads(line) for line in lines]


def audio_of(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e["choices"][0]["delta"]["audio"]
        for e in items
        if e["choices"] and "audio" in e["choices"][0]["delta"]
    ]


def test_openai_shape_on_the_wire(server: LiveServer) -> None:
    items = events(server, OPENAI)
    audio = audio_of(items)
    created = items[0]["created"]
    assert len(audio) > 2
    assert audio[0]["id"] == "audio_" + items[0]["id"].removeprefix("chatcmpl-")
    assert audio[0]["expires_at"] == created + 3600
    assert all("id" not in a and "expires_at" not in a for a in audio[1:])
    assert all("transcript" in a and a["data"] for a in audio)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in items if e["choices"])
    assert "".join(a["transcript"] for a in audio) == text


def test_the_vendor_shape_is_the_default(server: LiveServer) -> None:
    audio = audio_of(events(server))
    assert all(set(a) == {"data", "expires_at", "id"} for a in audio)
    assert len({a["id"] for a in audio}) == 1


def test_the_sdk_stream_helper_gets_one_id_and_the_transcript(server: LiveServer) -> None:
    def final(headers: dict[str, str] | None) -> Any:
        with (
            OpenAI(api_key="sk-test", base_url=server.api, max_retries=0) as client,
            client.chat.completions.stream(  # type: ignore[call-overload]
                **BODY, extra_headers=headers
            ) as stream,
        ):
            for _ in stream:
                pass
            return stream.get_final_completion()

    completion = final(OPENAI)
    message = completion.choices[0].message
    audio = message.audio
    assert audio is not None
    assert audio.id == f"audio_{completion.id.removeprefix('chatcmpl-')}"
    assert audio.expires_at == completion.created + 3600
    assert audio.transcript == message.content
    # The vendor's shape, which every chunk repeats, is what the helper cannot add up.
    vendor = final(None).choices[0].message.audio
    assert vendor is not None and len(vendor.id) > 100


def test_the_server_can_default_to_the_openai_shape() -> None:
    with live_server(fast_settings(speech={"audio_delta": "openai"})) as server:
        audio = audio_of(events(server))
        assert "id" in audio[0] and "id" not in audio[1]
        vendor = audio_of(events(server, {"X-Omniserve-Audio-Delta": "DashScope"}))
        assert all("id" in a for a in vendor)


def test_a_bad_shape_is_a_400(server: LiveServer) -> None:
    response = httpx.post(
        f"{server.api}/chat/completions",
        json={**BODY, "stream": True},
        headers={"X-Omniserve-Audio-Delta": "mp3"},
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "X-Omniserve-Audio-Delta" and "'mp3'" in error["message"]
