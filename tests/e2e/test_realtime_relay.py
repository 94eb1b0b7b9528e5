"""Realtime sessions relayed to an upstream's own realtime endpoint, on real servers: a fake Model
Studio realtime endpoint and a fake vLLM-Omni one (Starlette WebSocket routes under uvicorn on
127.0.0.1), omniserve with the upstream engine in front of them, raw WebSocket clients.

Each fake answers a turn with scripted text, a 440 Hz tone and usage, and records what it got:
the headers of each connection, the model asked for, every event, the audio.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import uvicorn
import websocket
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from engines.upstream.fakes import sine_pcm, wait_until
from helpers import LiveServer, fast_settings, live_server
from omniserve.accounts.schema import ledger
from omniserve.catalog import REALTIME_MODELS
from omniserve.engines.upstream.engine import UpstreamConfigError
from omniserve.service import ChatService
from omniserve.speech.pcm import parse_wav, resample_pcm16

MODEL = "qwen3-omni-flash-realtime"
CHAT = REALTIME_MODELS[MODEL].chat
KEY_ENV = "OMNISERVE_TEST_RELAY_KEY"
UPSTREAM_KEY = "sk-upstream-0123456789"
ANSWER = "Paris is the capital of France."
USAGE = {
    "total_tokens": 84,
    "input_tokens": 50,
    "output_tokens": 34,
    "input_tokens_details": {"text_tokens": 20, "audio_tokens": 30},
    "output_tokens_details": {"text_tokens": 9, "audio_tokens": 25},
}


def speech(text: str, rate: int = 16_000) -> bytes:
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    pcm, source, _ = parse_wav(wav)
    return resample_pcm16(pcm, source, rate)


QUESTION = speech("What is the capital of France?")


def silence(ms: int) -> bytes:
    return bytes(ms * 32)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(autouse=True, scope="module")
def upstream_key() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, UPSTREAM_KEY)
        yield


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """``app`` under uvicorn on a free port in a thread: its ws:// origin."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, ws="wsproto", log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


# -- the fakes -------------------------------------------------------------------------------


class FakeUpstream(abc.ABC):
    """What both fakes record; each fake's ``endpoint`` speaks its upstream's protocol."""

    path = ""

    def __init__(self, *, delay_s: float = 0.0, pieces: int = 4, drop: bool = False) -> None:
        self.delay_s, self.pieces, self.drop = delay_s, pieces, drop
        self.headers: list[dict[str, str]] = []
        self.queries: list[dict[str, str]] = []
        self.events: list[dict[str, Any]] = []
        self.audio = bytearray()
        self.app = Starlette(routes=[WebSocketRoute(self.path, self.endpoint)])
        self.url = ""

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeUpstream]:
        with serve(self.app) as origin:
            self.url = origin + self.path
            yield self

    @abc.abstractmethod
    async def endpoint(self, ws: WebSocket) -> None: ...

    async def accept(self, ws: WebSocket) -> None:
        self.headers.append({k.lower(): v for k, v in ws.headers.items()})
        self.queries.append(dict(ws.query_params))
        await ws.accept()

    @staticmethod
    async def send(ws: WebSocket, type_: str, **fields: Any) -> None:
        await ws.send_text(
            json.dumps({"event_id": f"event_{time.monotonic_ns()}", "type": type_, **fields})
        )


class FakeModelStudio(FakeUpstream):
    """Model Studio's realtime endpoint in manual mode: a commit is answered with the user item,
    ``response.create`` with a whole response (text and a tone in ``pieces``, ``USAGE``),
    ``response.cancel`` stops it (``cancelled``), ``session.finish`` is answered and closes.
    ``drop`` closes the socket (1011) after the response's first deltas; ``deny`` refuses the
    upgrade with that HTTP status."""

    path = "/api-ws/v1/realtime"

    def __init__(self, *, deny: int | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.deny = deny

    async def endpoint(self, ws: WebSocket) -> None:
        if self.deny is not None:
            self.headers.append({k.lower(): v for k, v in ws.headers.items()})
            await ws.send_denial_response(Response(status_code=self.deny))
            return
        await self.accept(ws)
        model = ws.query_params.get("model")
        session = {"object": "realtime.session", "id": "sess_upstream", "model": model}
        session |= {"modalities": ["text", "audio"], "voice": "Cherry"}
        await self.send(ws, "session.created", session=session)
        answering: asyncio.Task[None] | None = None
        try:
            while True:
                event = json.loads(await ws.receive_text())
                self.events.append(event)
                kind = event["type"]
                if kind == "session.update":
                    session |= event["session"]
                    await self.send(ws, "session.updated", session=session)
                elif kind == "input_audio_buffer.append":
                    self.audio += base64.b64decode(event["audio"])
                elif kind == "input_audio_buffer.commit":
                    item = {"id": "item_user", "role": "user", "type": "message"}
                    await self.send(ws, "input_audio_buffer.committed", item_id="item_user")
                    await self.send(ws, "conversation.item.created", item=item)
                elif kind == "input_audio_buffer.clear":
                    await self.send(ws, "input_audio_buffer.cleared")
                elif kind == "response.create":
                    answering = asyncio.create_task(self.respond(ws, session))
                elif kind == "response.cancel" and answering is not None:
                    answering.cancel()
                elif kind == "session.finish":
                    await self.send(ws, "session.finished")
                    await ws.close()
                    return
        except WebSocketDisconnect:
            if answering is not None:
                answering.cancel()

    async def respond(self, ws: WebSocket, session: dict[str, Any]) -> None:
        rid = f"resp_{time.monotonic_ns()}"
        ids = {"response_id": rid, "item_id": "item_answer", "output_index": 0}
        response = {"id": rid, "object": "realtime.response", "conversation_id": "conv_up"}
        response |= {"modalities": session["modalities"], "voice": session["voice"]}
        response |= {"output_audio_format": "pcm24", "output": []}
        item = {"id": "item_answer", "type": "message", "role": "assistant", "content": []}
        await self.send(ws, "response.created", response={**response, "status": "in_progress"})
        status = "cancelled"
        try:
            await self.send(ws, "response.output_item.added", response_id=rid, item=item)
            await self.send(ws, "conversation.item.created", item=item)
            await self.send(ws, "response.content_part.added", **ids, part={"type": "audio"})
            words = ANSWER.split(" ")
            tone = np.array_split(sine_pcm(0.5, 24_000), self.pieces)
            for i in range(self.pieces):
                text = " ".join(
                    words[i * len(words) // self.pieces : (i + 1) * len(words) // self.pieces]
                )
                await self.send(ws, "response.audio_transcript.delta", **ids, delta=text + " ")
                await self.send(ws, "response.audio.delta", **ids, delta=b64(tone[i].tobytes()))
                if self.drop:
                    await ws.close(code=1011)
                    return
                await asyncio.sleep(self.delay_s)
            await self.send(ws, "response.audio_transcript.done", **ids, transcript=ANSWER)
            await self.send(ws, "response.audio.done", **ids)
            await self.send(ws, "response.content_part.done", **ids, part={"type": "audio"})
            await self.send(ws, "response.output_item.done", response_id=rid, item=item)
            status = "completed"
        finally:
            usage = USAGE if status == "completed" else None
            with contextlib.suppress(Exception):
                await self.send(
                    ws, "response.done", response={**response, "status": status, "usage": usage}
                )


class FakeVllmOmni(FakeUpstream):
    """vLLM-Omni's turn-based ``/v1/realtime``: ``session.update`` names the model, a
    generation runs from ``commit`` ``final: false`` over the appended audio to ``final:
    true``; the answer comes as ``transcription.delta``, ``response.audio.delta`` (``audio``
    at ``rate``), ``transcription.done`` with usage and ``response.audio.done``. ``drop``
    closes the socket (1011) at the final commit; the first ``failures`` turns are answered
    with vLLM's ``error`` event (then ``response.audio.done``); ``stopped`` counts generations
    cut short by the client closing."""

    path = "/v1/realtime"

    def __init__(self, *, rate: int = 16_000, failures: int = 0, **kw: Any) -> None:
        super().__init__(**kw)
        self.rate, self.failures = rate, failures
        self.models: list[str] = []
        self.turns: list[bytes] = []
        self.stopped = 0

    async def endpoint(self, ws: WebSocket) -> None:
        await self.accept(ws)
        await self.send(ws, "session.created", id="sess-vllm", created=0)
        turn: bytearray | None = None
        answering: asyncio.Task[None] | None = None
        try:
            while True:
                event = json.loads(await ws.receive_text())
                self.events.append(event)
                kind = event["type"]
                if kind == "session.update":
                    self.models.append(event["model"])
                elif kind == "input_audio_buffer.commit" and not event.get("final"):
                    turn = bytearray()
                elif kind == "input_audio_buffer.append" and turn is not None:
                    turn += base64.b64decode(event["audio"])
                elif kind == "input_audio_buffer.commit" and turn is not None:
                    self.turns.append(bytes(turn))
                    turn = None
                    if self.drop:
                        await ws.close(code=1011)
                        return
                    answering = asyncio.create_task(self.generate(ws))
        except WebSocketDisconnect:
            if answering is not None and not answering.done():
                answering.cancel()
                self.stopped += 1

    async def generate(self, ws: WebSocket) -> None:
        if len(self.turns) <= self.failures:
            await self.send(ws, "error", error="Generation failed: boom", code="processing_error")
            await self.send(ws, "response.audio.done", has_audio=False)
            return
        words = ANSWER.split(" ")
        tone = np.array_split(sine_pcm(0.6, self.rate), self.pieces)
        for i in range(self.pieces):
            text = " ".join(
                words[i * len(words) // self.pieces : (i + 1) * len(words) // self.pieces]
            )
            await self.send(ws, "transcription.delta", delta=text + " ")
            audio = b64(tone[i].tobytes())
            await self.send(
                ws, "response.audio.delta", audio=audio, format="pcm16", sample_rate_hz=self.rate
            )
            await asyncio.sleep(self.delay_s)
        usage = {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}
        await self.send(ws, "transcription.done", text=ANSWER, usage=usage)
        await self.send(ws, "response.audio.done", has_audio=True)


# -- omniserve in front ----------------------------------------------------------------------


@contextlib.contextmanager
def omniserve(fake: FakeUpstream, kind: str, **spec: Any) -> Iterator[LiveServer]:
    upstream = {
        "name": "studio" if kind == "dashscope" else "gpu1",
        "kind": kind,
        "base_urls": ["http://127.0.0.1:9/v1"],  # the chat path, unused here
        "api_key_env": KEY_ENV,
        "models": {CHAT: "qwen3-omni-flash"},
        "health_path": "",
        "realtime_url": fake.url,
        **spec,
    }
    settings = fast_settings(engine="upstream", upstream={"upstreams": [upstream]})
    with live_server(settings) as server:
        yield server


def keyed(server: LiveServer, **limits: Any) -> str:
    assert server.accounts.store is not None
    return server.accounts.store.create("app", **limits)[1]


class Client:
    """A raw WebSocket client (as the vendor's SDK is) reading the server's events in order."""

    def __init__(self, server: LiveServer, secret: str, path: str = "/api-ws/v1/realtime") -> None:
        url = server.base_url.replace("http://", "ws://") + f"{path}?model={MODEL}"
        self.ws = websocket.create_connection(
            url, header=[f"Authorization: Bearer {secret}"], timeout=20
        )

    def send(self, type_: str, **fields: Any) -> None:
        self.ws.send(json.dumps({"type": type_, **fields}))

    def next(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.ws.recv())
        return event

    def until(self, type_: str) -> list[dict[str, Any]]:
        events = [self.next()]
        while events[-1]["type"] != type_:
            events.append(self.next())
        return events

    def say(self, pcm: bytes, chunk: int = 3200) -> None:
        for i in range(0, len(pcm), chunk):
            self.send("input_audio_buffer.append", audio=b64(pcm[i : i + chunk]))

    def closed(self) -> bool:
        """Whether the server closes the socket next."""
        try:
            return self.ws.recv() == ""
        except websocket.WebSocketConnectionClosedException:
            return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close(timeout=1)
        self.ws.shutdown()


def rows(server: LiveServer) -> list[Any]:
    assert server.accounts.writer is not None and server.accounts.writer.flush()
    assert server.accounts.store is not None
    with server.accounts.store.engine.connect() as conn:
        return list(conn.execute(sa.select(ledger).order_by(ledger.c.started_ms)).all())


def pcm_of(events: list[dict[str, Any]], kind: str = "response.audio.delta") -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == kind)


TURN = [
    "response.created",
    "response.output_item.added",
    "conversation.item.created",
    "response.content_part.added",
    "response.audio_transcript.done",
    "response.audio.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.done",
]


# -- Model Studio ----------------------------------------------------------------------------


def test_model_studio_relays_a_turn_with_its_own_key_and_books_it() -> None:
    upstream_model = "qwen3-omni-flash-realtime-2025-12-01"
    with (
        FakeModelStudio().running() as fake,
        omniserve(fake, "dashscope", realtime_models={MODEL: upstream_model}) as server,
    ):
        secret = keyed(server)
        client = Client(server, secret)
        created = client.next()
        assert created["type"] == "session.created"
        assert created["session"]["model"] == MODEL  # the served name, not the upstream's
        client.send("session.update", session={"turn_detection": None, "voice": "Ethan"})
        updated = client.next()
        assert updated["type"] == "session.updated" and updated["session"]["voice"] == "Ethan"
        client.send("session.update", session={"voice": "Nobody"})  # refused here
        assert client.next()["error"]["param"] == "session.voice"
        client.say(QUESTION)
        client.send("input_audio_buffer.commit")
        client.send("response.create")
        events = client.until("response.done")
        client.send("session.finish")
        assert client.next()["type"] == "session.finished"
        assert client.closed()
        client.close()
        time.sleep(0.2)
        booked = rows(server)
    types = [e["type"] for e in events if not e["type"].endswith(".delta")]
    assert types == ["input_audio_buffer.committed", "conversation.item.created", *TURN]
    transcript = "".join(
        e["delta"] for e in events if e["type"] == "response.audio_transcript.delta"
    )
    assert transcript.strip() == ANSWER
    assert len(pcm_of(events)) == 2 * 12_000  # the tone, as sent
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["usage"]["input_tokens_details"]["audio_tokens"] == 30
    assert done["usage"]["output_tokens_details"]["audio_tokens"] == 25
    # Upstream: the mapped model, its own key, the audio as appended; nothing refused here.
    assert fake.queries[0]["model"] == upstream_model
    assert fake.headers[0]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert secret not in json.dumps(fake.headers)
    assert bytes(fake.audio) == QUESTION
    assert all(e.get("session", {}).get("voice") != "Nobody" for e in fake.events)
    assert fake.types()[-1] == "session.finish"
    # One ledger row for the response, with the upstream's usage.
    (row,) = booked
    assert row.model == CHAT and row.status == "ok"
    assert (row.prompt_text, row.prompt_audio) == (20, 30)
    assert (row.completion_text, row.completion_audio) == (9, 25)
    assert row.audio_seconds == pytest.approx(0.5, abs=0.01)
    assert row.input_audio_seconds == pytest.approx(len(QUESTION) / 32_000, abs=0.01)


def test_model_studio_refused_admission_is_cancelled_upstream() -> None:
    with FakeModelStudio().running() as fake, omniserve(fake, "dashscope") as server:
        client = Client(server, keyed(server, rpm=1))
        client.next()
        client.send("session.update", session={"turn_detection": None})
        client.next()
        answers = []
        for _ in range(2):
            client.say(QUESTION[:16_000])
            client.send("input_audio_buffer.commit")
            client.until("conversation.item.created")
            client.send("response.create")
            answers.append(client.until("response.done" if not answers else "error"))
        error = answers[1][-1]["error"]
        assert error["code"] == "limit_requests"
        assert [e["type"] for e in answers[1]] == ["error"]  # nothing of the refused response
        wait_until(lambda: "response.cancel" in fake.types())
        # The session goes on: the upstream's end of the refused response is not shown.
        client.send("input_audio_buffer.clear")
        assert client.next()["type"] == "input_audio_buffer.cleared"
        client.close()
        time.sleep(0.2)
        assert [r.status for r in rows(server)] == ["ok"]


def test_model_studio_dropping_the_connection_ends_the_session() -> None:
    with FakeModelStudio(drop=True).running() as fake, omniserve(fake, "dashscope") as server:
        client = Client(server, keyed(server))
        client.next()
        client.send("session.update", session={"turn_detection": None})
        client.next()
        client.say(QUESTION)
        client.send("input_audio_buffer.commit")
        client.send("response.create")
        events = client.until("error")
        assert client.closed()
        client.close()
        time.sleep(0.2)
        booked = rows(server)
    failed = next(e for e in events if e["type"] == "response.done")
    assert failed["response"]["status"] == "failed"
    error = events[-1]["error"]
    assert error["code"] == "upstream_error" and "'studio'" in error["message"]
    assert UPSTREAM_KEY not in error["message"] and "127.0.0.1" not in error["message"]
    (row,) = booked
    assert row.status == "error" and row.error_code == "upstream_error"


def test_an_unreachable_upstream_is_an_error_event_and_a_close() -> None:
    with FakeModelStudio().running() as fake:
        url = fake.url
    fake.url = url  # the port is free again: nothing answers there
    with omniserve(fake, "dashscope", connect_timeout_s=2) as server:
        client = Client(server, keyed(server))
        began = time.monotonic()
        error = client.next()
        assert error["type"] == "error" and error["error"]["code"] == "upstream_error"
        assert "cannot connect" in error["error"]["message"]
        assert client.closed()
        assert time.monotonic() - began < 5
        client.close()


def test_an_upstream_refusing_its_key_is_an_error_event_and_a_close() -> None:
    with FakeModelStudio(deny=401).running() as fake, omniserve(fake, "dashscope") as server:
        client = Client(server, keyed(server))
        error = client.next()["error"]
        assert error["code"] == "upstream_error"
        assert error["message"] == (
            "The realtime upstream 'studio' is unavailable: it refused the connection (401)."
        )
        assert client.closed()
        client.close()
    assert fake.headers[0]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_openai_dialect_through_model_studio() -> None:
    with FakeModelStudio().running() as fake, omniserve(fake, "dashscope") as server:
        client = Client(server, keyed(server), path="/v1/realtime")
        created = client.next()
        assert created["session"]["type"] == "realtime" and created["session"]["model"] == MODEL
        session = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        client.send("session.update", session=session)
        assert client.next()["session"]["audio"]["input"]["turn_detection"] is None
        client.say(speech("What is the capital of France?", 24_000), chunk=4800)
        client.send("input_audio_buffer.commit")
        client.send("response.create")
        events = client.until("response.done")
        client.close()
    types = [e["type"] for e in events]
    assert "response.output_audio.delta" in types
    assert "response.output_audio_transcript.done" in types
    assert events[-1]["response"]["usage"]["input_token_details"]["audio_tokens"] == 30
    assert abs(len(fake.audio) - len(QUESTION)) <= 64  # 24 kHz in, 16 kHz upstream


# -- vLLM-Omni -------------------------------------------------------------------------------


def test_vllm_omni_hears_the_turn_here_and_answers_it_there() -> None:
    with FakeVllmOmni().running() as fake, omniserve(fake, "vllm-omni") as server:
        secret = keyed(server)
        client = Client(server, secret)
        assert client.next()["type"] == "session.created"
        client.say(silence(500) + QUESTION + silence(1200))
        events = client.until("response.done")
        client.close()
        time.sleep(0.2)
        booked = rows(server)
    types = [e["type"] for e in events if not e["type"].endswith(".delta")]
    assert types == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        *TURN,
    ]
    transcript = "".join(
        e["delta"] for e in events if e["type"] == "response.audio_transcript.delta"
    )
    assert transcript.strip() == ANSWER
    pcm = pcm_of(events)  # the 16 kHz tone at 24 kHz
    assert abs(len(pcm) // 2 - 0.6 * 24_000) <= 64
    spectrum = np.abs(np.fft.rfft(np.frombuffer(pcm, "<i2").astype(float)))
    assert abs(np.argmax(spectrum) * 24_000 / (len(pcm) // 2) - 440) < 5
    # Upstream: the chat model's id there, its own key, the turn's audio.
    assert fake.models == ["qwen3-omni-flash"]
    assert fake.headers[0]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert secret not in json.dumps(fake.headers)
    (turn,) = fake.turns
    assert len(QUESTION) * 0.8 < len(turn) < len(QUESTION) + 32_000
    assert fake.types()[1:3] == ["input_audio_buffer.commit", "input_audio_buffer.append"]
    assert fake.types()[-1] == "input_audio_buffer.commit" and fake.events[-1]["final"] is True
    usage = events[-1]["response"]["usage"]
    audio_in = usage["input_tokens_details"]["audio_tokens"]
    assert 0 < audio_in < 50 and usage["input_tokens"] == 50
    assert usage["output_tokens_details"] == {"text_tokens": 7, "audio_tokens": 8}
    (row,) = booked
    assert row.status == "ok" and row.model == CHAT
    assert (row.prompt_audio, row.prompt_text) == (audio_in, 50 - audio_in)
    assert (row.completion_text, row.completion_audio) == (7, 8)


def test_vllm_omni_barge_in_stops_the_answer_here_and_there() -> None:
    slow = FakeVllmOmni(delay_s=0.3, pieces=20)
    with slow.running() as fake, omniserve(fake, "vllm-omni") as server:
        client = Client(server, keyed(server))
        client.next()
        client.say(silence(300) + QUESTION + silence(1000))
        events = client.until("response.audio.delta")
        client.say(QUESTION[: 16_000 * 2])  # the user talks over the answer
        events += client.until("response.done")
        assert events[-1]["response"]["status"] == "cancelled"
        assert "input_audio_buffer.speech_started" in [e["type"] for e in events[5:]]
        sent = "".join(e["delta"] for e in events if e["type"] == "response.audio_transcript.delta")
        assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == sent
        wait_until(lambda: fake.stopped == 1)  # the upstream's generation stopped too
        client.say(silence(1000))  # the user stops: the new turn is answered on a new socket
        later = client.until("response.audio.delta")
        assert "input_audio_buffer.speech_stopped" in [e["type"] for e in later]
        client.close()
        wait_until(lambda: len(fake.headers) == 2)
        time.sleep(0.2)
        assert [r.status for r in rows(server)][:1] == ["disconnected"]


def test_vllm_omni_refused_admission_drops_the_turn() -> None:
    with FakeVllmOmni().running() as fake, omniserve(fake, "vllm-omni") as server:
        client = Client(server, keyed(server, rpm=1))
        client.next()
        client.send("session.update", session={"turn_detection": None})
        client.next()
        dones = []
        for _ in range(2):
            client.say(QUESTION[:16_000])
            client.send("input_audio_buffer.commit")
            client.until("conversation.item.created")
            client.send("response.create")
            dones.append(client.until("response.done"))
        refused = dones[1]
        assert [e["type"] for e in refused] == ["response.created", "error", "response.done"]
        assert refused[1]["error"]["code"] == "limit_requests"
        assert refused[-1]["response"]["status"] == "failed"
        client.send("response.create")  # the refused turn is dropped, not kept for later
        assert client.next()["error"]["code"] == "conversation_empty"
        client.close()
        assert len(fake.turns) == 1
        time.sleep(0.2)
        assert [r.status for r in rows(server)] == ["ok"]


def test_vllm_omni_text_only_and_its_error_events() -> None:
    """A text-only session gets the answer's text and no speech; the upstream's error event
    fails that response only, and the next turn is answered."""
    with FakeVllmOmni(failures=1).running() as fake, omniserve(fake, "vllm-omni") as server:
        client = Client(server, keyed(server))
        client.next()
        client.send("session.update", session={"turn_detection": None, "modalities": ["text"]})
        client.next()
        dones = []
        for _ in range(2):
            client.say(QUESTION[:16_000])
            client.send("input_audio_buffer.commit")
            client.until("conversation.item.created")
            client.send("response.create")
            dones.append(client.until("response.done"))
        client.close()
        time.sleep(0.2)
        booked = rows(server)
    failed, answered = dones
    error = next(e for e in failed if e["type"] == "error")["error"]
    assert error["code"] == "upstream_error" and "'gpu1'" in error["message"]
    assert "boom" in error["message"] and failed[-1]["response"]["status"] == "failed"
    types = [e["type"] for e in answered]
    assert "response.text.delta" in types and "response.audio.delta" not in types
    text = "".join(e["delta"] for e in answered if e["type"] == "response.text.delta")
    assert text.strip() == ANSWER
    assert answered[-1]["response"]["usage"]["output_tokens_details"]["audio_tokens"] == 0
    assert len(fake.headers) == 2  # the failed turn's socket was not reused
    assert [(r.status, r.error_code) for r in booked] == [("error", "upstream_error"), ("ok", None)]


def test_vllm_omni_dropping_the_connection_ends_the_session() -> None:
    with FakeVllmOmni(drop=True).running() as fake, omniserve(fake, "vllm-omni") as server:
        client = Client(server, keyed(server))
        client.next()
        client.send("session.update", session={"turn_detection": None})
        client.next()
        client.say(QUESTION)
        client.send("input_audio_buffer.commit")
        client.send("response.create")
        events = client.until("error")
        assert client.closed()
        client.close()
        time.sleep(0.2)
        booked = rows(server)
    assert [e["type"] for e in events][-2:] == ["response.done", "error"]
    assert events[-2]["response"]["status"] == "failed"
    assert events[-1]["error"]["code"] == "upstream_error"
    assert "'gpu1'" in events[-1]["error"]["message"]
    (row,) = booked
    assert row.status == "error" and row.error_code == "upstream_error"


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "openai"}, "OpenAI-compatible"),
        ({"realtime_url": "http://gpu1:8091/v1/realtime"}, "ws://"),
        ({"realtime_models": {"qwen-omni-turbo-realtime": "x"}}, "qwen-omni-turbo-realtime"),
        ({"realtime_url": None, "realtime_models": {MODEL: "x"}}, "needs realtime_url"),
    ],
)
def test_realtime_settings_that_cannot_work_are_refused_at_start(
    spec: dict[str, Any], message: str
) -> None:
    upstream = {
        "name": "u",
        "kind": "vllm-omni",
        "base_urls": ["http://127.0.0.1:9/v1"],
        "models": {CHAT: "m"},
        "realtime_url": "ws://127.0.0.1:9/v1/realtime",
        **spec,
    }
    settings = fast_settings(engine="upstream", upstream={"upstreams": [upstream]})
    with pytest.raises(UpstreamConfigError, match=message):
        ChatService(settings)
