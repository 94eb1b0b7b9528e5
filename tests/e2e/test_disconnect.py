"""A client that goes away stops its request's work at once (measured on a real server)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from helpers import chat_body, fast_settings, live_server
from omniserve.engines.base import Engine
from omniserve.engines.emulator import EmulatorEngine
from omniserve.events import EngineEvent, Finished, TextDelta
from omniserve.job import CompletionTokens, GenerationJob, Usage
from omniserve.tokens import get_tokenizer


class RecordingEngine(Engine):
    """Wraps a real engine and records when each generation is closed."""

    name = "recording"
    speaks = False

    def __init__(self, inner: EmulatorEngine | None = None, *, endless: bool = False) -> None:
        self.inner = inner
        self.endless = endless
        self.closed_at: list[float] = []
        self.event = threading.Event()

    async def generate(self, job: GenerationJob) -> AsyncIterator[EngineEvent]:
        try:
            if self.endless:
                while True:
                    yield TextDelta("word. ")
                    await asyncio.sleep(0.01)
            assert self.inner is not None
            async for event in self.inner.generate(job):
                yield event
            yield Finished("stop", Usage(job.prompt_tokens, CompletionTokens()))
        finally:
            self.closed_at.append(time.monotonic())
            self.event.set()


def _espeak_children() -> int:
    me = str(os.getpid())
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split()
        except OSError:
            continue
        if fields[3] == me and "espeak" in fields[1]:
            count += 1
    return count


def test_disconnect_closes_the_engine_within_100ms() -> None:
    engine = RecordingEngine(endless=True)
    with live_server(fast_settings(), engine=engine) as server:
        for _ in range(3):
            engine.event.clear()
            with httpx.stream("POST", f"{server.api}/chat/completions", json=chat_body()) as r:
                lines = r.iter_lines()
                for _ in range(5):
                    next(lines)
            gone = time.monotonic()
            assert engine.event.wait(5), "the engine was never closed"
            delay = engine.closed_at[-1] - gone
            assert delay < 0.1, f"engine closed {delay * 1000:.0f} ms after the disconnect"


def test_disconnect_during_speech_stops_synthesis() -> None:
    settings = fast_settings(emulator={"tokens_per_second": 100})
    engine = RecordingEngine(EmulatorEngine(settings.emulator, get_tokenizer()))
    body = chat_body(
        modalities=["text", "audio"],
        messages=[{"role": "user", "content": "Please talk for a while."}],
    )
    with live_server(settings, engine=engine) as server:
        with httpx.stream("POST", f"{server.api}/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if '"audio"' in line:
                    break
        gone = time.monotonic()
        assert engine.event.wait(5)
        assert engine.closed_at[-1] - gone < 0.1
        deadline = time.monotonic() + 2
        while _espeak_children() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _espeak_children() == 0
        # The server keeps serving after the disconnect.
        with httpx.stream("POST", f"{server.api}/chat/completions", json=chat_body()) as r:
            assert r.read().endswith(b"data: [DONE]\n\n")


def test_engine_failure_after_first_event_is_an_error_event() -> None:
    class Failing(RecordingEngine):
        async def generate(self, job: GenerationJob) -> AsyncIterator[EngineEvent]:
            yield TextDelta("partial")
            raise RuntimeError("boom")

    with live_server(fast_settings(), engine=Failing()) as server:
        with httpx.stream("POST", f"{server.api}/chat/completions", json=chat_body()) as r:
            assert r.status_code == 200
            body = r.read().decode()
        blocks = [b for b in body.split("\n\n") if b]
        assert blocks[-1] == "data: [DONE]"
        assert blocks[-2] == (
            'data: {"error":{"message":"An internal error has occured, try again later or '
            'contact service support.","type":"internal_error","param":null,'
            '"code":"InternalError"}}'
        )
        assert "boom" not in body


def test_engine_failure_before_first_event_is_an_http_error() -> None:
    class FailsAtOnce(RecordingEngine):
        async def generate(self, job: GenerationJob) -> AsyncIterator[EngineEvent]:
            raise RuntimeError("boom")
            yield TextDelta("never")  # pragma: no cover

    with live_server(fast_settings(), engine=FailsAtOnce()) as server:
        r = httpx.post(f"{server.api}/chat/completions", json=chat_body())
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "InternalError"
        assert "boom" not in r.text
