"""The OpenAI-style audio delta, for clients that add the deltas up: one id, one expiry, the
whole transcript; the vendor's shape stays the default."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import av
import httpx
import numpy as np
import pytest
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


def speech_bytes(server: LiveServer, fmt: str, headers: dict[str, str] | None) -> bytes:
    body = {**BODY, "stream": True, "audio": {"voice": "Cherry", "format": fmt}}
    response = httpx.post(f"{server.api}/chat/completions", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    lines = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: {")]
    audio = audio_of([json.loads(line) for line in lines])
    # Joined as strings first, as clients that add deltas up do: whole base64 groups.
    return base64.b64decode("".join(a["data"] for a in audio), validate=True)


@pytest.mark.parametrize(
    ("fmt", "container", "codec"),
    [
        ("mp3", "mp3", "mp3"),
        ("opus", "ogg", "opus"),
        ("aac", "aac", "aac"),
        ("flac", "flac", "flac"),
    ],
)
def test_encoded_formats_decode_to_the_same_speech(
    server: LiveServer, fmt: str, container: str, codec: str
) -> None:
    pcm = speech_bytes(server, "pcm16", OPENAI)
    seconds = len(pcm) / 48_000
    encoded = speech_bytes(server, fmt, OPENAI)
    assert len(encoded) < len(pcm)  # compressed
    with av.open(io.BytesIO(encoded)) as decoded:
        assert container in decoded.format.name
        stream = decoded.streams.audio[0]
        assert stream.codec_context.name.startswith(codec)
        frames = list(decoded.decode(stream))
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
        rate = frames[0].sample_rate
    # Encoders pad the start and the end a little (priming, whole frames).
    assert abs(len(samples) / rate - seconds) < 0.12
    assert float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > 0.01 * (
        32768 if samples.dtype == np.int16 else 1
    )


def test_the_vendor_mode_keeps_the_vendors_formats(server: LiveServer) -> None:
    body = {**BODY, "stream": True, "audio": {"voice": "Cherry", "format": "mp3"}}
    response = httpx.post(f"{server.api}/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "Input should be 'wav' or 'pcm16': parameters.audio.format"
    )
    response = httpx.post(
        f"{server.api}/chat/completions",
        json={**body, "audio": {"voice": "Cherry", "format": "ogg"}},
        headers=OPENAI,
        timeout=30,
    )
    assert response.json()["error"]["message"] == (
        "Input should be 'wav', 'pcm16', 'mp3', 'opus', 'aac' or 'flac': parameters.audio.format"
    )


def test_the_sdk_gets_a_playable_mp3(server: LiveServer) -> None:
    with (
        OpenAI(api_key="sk-test", base_url=server.api, max_retries=0) as client,
        client.chat.completions.stream(  # type: ignore[call-overload]
            **{**BODY, "audio": {"voice": "Cherry", "format": "mp3"}}, extra_headers=OPENAI
        ) as stream,
    ):
        for _ in stream:
            pass
        audio = stream.get_final_completion().choices[0].message.audio
    assert audio is not None
    with av.open(io.BytesIO(base64.b64decode(audio.data))) as decoded:
        assert sum(f.samples for f in decoded.decode(audio=0)) > 24_000
