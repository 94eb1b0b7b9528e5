"""OpenAI's Realtime dialect at /v1/realtime: the openai SDK's realtime clients (GA and beta)
on a real server, and raw WebSocket clients for what the SDK does not show.

Speech comes from espeak-ng recordings the tests make, at OpenAI's 24 kHz.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import websocket
from openai import AsyncOpenAI

from helpers import LiveServer, fast_settings, live_server
from omniserve.speech.pcm import parse_wav, resample_pcm16

MODEL = "qwen3-omni-flash-realtime"


def speech(text: str, rate: int) -> bytes:
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    pcm, source, _ = parse_wav(wav)
    return resample_pcm16(pcm, source, rate)


QUESTION_24K = speech("What is the capital of France?", 24_000)


def silence(ms: int, rate: int = 24_000) -> bytes:
    return bytes(ms * rate // 500)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(fast_settings()) as s:
        yield s


def client(server: LiveServer) -> AsyncOpenAI:
    # The SDK's beta client always dials wss:// unless told the WebSocket address.
    return AsyncOpenAI(
        base_url=server.base_url + "/v1",
        websocket_base_url=server.base_url.replace("http://", "ws://") + "/v1",
        api_key="unused",
        max_retries=0,
    )


async def until(connection: Any, kind: str) -> list[Any]:
    events = []
    async for event in connection:
        events.append(event)
        if event.type == kind:
            return events
    raise AssertionError(f"the connection closed before {kind}")


def test_the_openai_sdk_ga_client_talks_and_hears(server: LiveServer) -> None:
    async def run() -> tuple[list[Any], list[Any]]:
        async with client(server).realtime.connect(model=MODEL) as connection:
            created = await connection.recv()
            await connection.session.update(
                session={
                    "type": "realtime",
                    "output_modalities": ["audio"],
                    "instructions": "Answer briefly.",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24_000},
                            "turn_detection": {"type": "server_vad", "threshold": 0.6},
                        },
                        "output": {"voice": "Ethan"},
                    },
                }
            )
            updated = await connection.recv()
            audio = silence(300) + QUESTION_24K + silence(1200)
            for i in range(0, len(audio), 4800):
                chunk = base64.b64encode(audio[i : i + 4800]).decode()
                await connection.input_audio_buffer.append(audio=chunk)
            turn = await until(connection, "response.done")
            return [created, updated], turn

    (created, updated), turn = asyncio.run(run())
    assert created.type == "session.created" and created.session.type == "realtime"
    session = updated.session
    assert session.output_modalities == ["audio"]
    assert session.audio.output.voice == "Ethan"
    assert session.audio.input.format.rate == 24_000
    assert session.audio.input.turn_detection.threshold == pytest.approx(0.6)
    types = [e.type for e in turn if not e.type.endswith(".delta")]
    assert types[:10] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio_transcript.done",
    ]
    assert types[-5:] == [
        "response.output_audio.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    deltas = [e for e in turn if e.type == "response.output_audio.delta"]
    assert deltas and sum(len(base64.b64decode(d.delta)) for d in deltas) > 24_000
    words = "".join(e.delta for e in turn if e.type == "response.output_audio_transcript.delta")
    done = turn[-1].response
    assert done.status == "completed" and done.output_modalities == ["audio"]
    assert done.output[0].content[0].type == "output_audio"
    assert done.output[0].content[0].transcript == words
    assert done.usage.input_token_details.audio_tokens > 0
    assert done.usage.output_token_details.audio_tokens > 0
    # The user spoke about 1.9 s at 24 kHz: the server heard it at its own 16 kHz, in time.
    started, stopped = turn[0], turn[1]
    heard_ms = stopped.audio_end_ms - started.audio_start_ms
    assert abs(heard_ms - len(QUESTION_24K) / 48) < 400


def test_the_openai_sdk_beta_client_with_a_text_turn(server: LiveServer) -> None:
    async def run() -> list[Any]:
        async with client(server).beta.realtime.connect(model=MODEL) as connection:
            await connection.recv()
            await connection.session.update(
                session={"modalities": ["text"], "turn_detection": None}
            )
            await connection.recv()
            await connection.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Hi!"}],
                }
            )
            await connection.response.create()
            return await until(connection, "response.done")

    events = asyncio.run(run())
    types = [e.type for e in events]
    assert types[0] == "conversation.item.created"
    assert "response.text.delta" in types and "response.output_text.delta" not in types
    text = "".join(e.delta for e in events if e.type == "response.text.delta")
    done = events[-1].response
    assert done.status == "completed"
    assert done.output[0].content[0].type == "text" and done.output[0].content[0].text == text


class Raw:
    def __init__(self, server: LiveServer, **kw: Any) -> None:
        base = server.base_url.replace("http://", "ws://")
        self.ws = websocket.create_connection(f"{base}/v1/realtime?model={MODEL}", timeout=30, **kw)
        self.created = self.next()

    def send(self, type_: str, **fields: Any) -> None:
        self.ws.send(json.dumps({"type": type_, **fields}))

    def next(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.ws.recv())
        return event

    def until(self, kind: str) -> list[dict[str, Any]]:
        events = [self.next()]
        while events[-1]["type"] != kind:
            events.append(self.next())
        return events


def test_ga_session_shape_and_bad_fields(server: LiveServer) -> None:
    raw = Raw(server)
    session = raw.created["session"]
    assert session["type"] == "realtime" and session["id"].startswith("sess_")
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24_000}
    assert session["audio"]["output"]["voice"] == "Cherry"
    assert session["audio"]["input"]["turn_detection"]["threshold"] == 0.75  # vendor 0.5
    for bad, param in (
        ({"type": "transcription"}, "session.type"),
        ({"output_modalities": ["video"]}, "session.output_modalities"),
        ({"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
         "session.audio.input.format.type"),
        ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}},
         "session.audio.input.format.rate"),
        ({"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}},
         "session.audio.input.turn_detection.type"),
        ({"audio": {"input": {"turn_detection": {"threshold": 1.5}}}},
         "session.audio.input.turn_detection.threshold"),
        ({"audio": {"output": {"voice": "alloy"}}}, "session.voice"),
        ({"tools": [{"type": "function", "name": "f"}]}, "session.tools"),
    ):  # fmt: skip
        raw.send("session.update", session=bad)
        error = raw.next()
        assert error["type"] == "error" and error["error"]["param"] == param, (bad, error)
    raw.send("output_audio_buffer.clear")
    assert raw.next()["type"] == "error"
    raw.send(
        "session.update",
        session={"audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}}},
    )
    updated = raw.next()["session"]
    assert updated["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    raw.ws.close()


def test_items_with_audio_and_images_truncate_and_delete(server: LiveServer) -> None:
    raw = Raw(server, header=["OpenAI-Beta: realtime=v1"])
    assert "modalities" in raw.created["session"]  # the beta's flat session
    raw.send("session.update", session={"turn_detection": None})
    raw.next()
    jpeg = _jpeg()
    raw.send(
        "conversation.item.create",
        item={
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_image", "image_url": "data:image/jpeg;base64," + jpeg},
                {"type": "input_audio", "audio": base64.b64encode(QUESTION_24K).decode()},
            ],
        },
    )
    created = raw.next()
    assert created["type"] == "conversation.item.created"
    assert [p["type"] for p in created["item"]["content"]] == ["input_image", "input_audio"]
    raw.send("response.create")
    events = raw.until("response.done")
    done = events[-1]["response"]
    assert done["status"] == "completed"
    details = done["usage"]["input_token_details"]
    assert details["audio_tokens"] > 0 and details["image_tokens"] > 0
    answer = done["output"][0]
    assert answer["content"][0]["type"] == "audio"
    raw.send("conversation.item.truncate", item_id=answer["id"], content_index=0, audio_end_ms=500)
    truncated = raw.next()
    assert truncated["type"] == "conversation.item.truncated"
    assert truncated["audio_end_ms"] == 500
    raw.send(
        "conversation.item.truncate", item_id=answer["id"], content_index=0, audio_end_ms=10**9
    )
    assert raw.next()["error"]["param"] == "audio_end_ms"
    raw.send("conversation.item.delete", item_id=answer["id"])
    deleted = raw.next()
    assert (deleted["type"], deleted["item_id"]) == ("conversation.item.deleted", answer["id"])
    raw.send("conversation.item.delete", item_id=answer["id"])
    assert raw.next()["error"]["code"] == "item_not_found"
    raw.ws.close()


def _jpeg() -> str:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 200, dtype=np.uint8)).save(out, format="JPEG")
    return base64.b64encode(out.getvalue()).decode()


def test_a_barge_in_is_cancelled_with_its_reason() -> None:
    with live_server(fast_settings(emulator={"tokens_per_second": 10})) as slow:
        raw = Raw(slow)
        audio = silence(300) + QUESTION_24K + silence(1000)
        raw.send("input_audio_buffer.append", audio=base64.b64encode(audio).decode())
        raw.until("response.output_audio_transcript.delta")
        again = QUESTION_24K[: 24_000 * 2]
        raw.send("input_audio_buffer.append", audio=base64.b64encode(again).decode())
        done = raw.until("response.done")[-1]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        raw.ws.close()
