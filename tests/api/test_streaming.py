"""EventStreamResponse as an ASGI app: early errors, streaming, and disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from omniserve.api.streaming import EventStreamResponse
from omniserve.errors import InvalidParameter


class Wire:
    """The server side of one HTTP exchange: what the app sent, and a disconnect to deliver."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.disconnect = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def run(body: AsyncGenerator[bytes, None], wire: Wire | None = None) -> Wire:
    async def main() -> Wire:
        w = wire or Wire()
        response = EventStreamResponse(body, request_id="r")
        await response({"type": "http"}, w.receive, w.send)  # type: ignore[arg-type]
        return w

    return asyncio.run(main())


def test_streams_chunks_then_ends() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    wire = run(body())
    start = wire.sent[0]
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream;charset=UTF-8"
    assert headers[b"x-request-id"] == b"r"
    assert [m["body"] for m in wire.sent[1:]] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert wire.sent[-1]["more_body"] is False


def test_error_before_the_first_chunk_is_an_http_error() -> None:
    async def body() -> AsyncIterator[bytes]:
        raise InvalidParameter("nope")
        yield b""  # pragma: no cover

    wire = run(body())
    assert wire.sent[0]["status"] == 400
    assert dict(wire.sent[0]["headers"])[b"x-request-id"] == b"r"
    assert json.loads(wire.sent[1]["body"])["error"]["message"] == "nope"


def test_unexpected_error_before_the_first_chunk_is_a_500_without_details() -> None:
    async def body() -> AsyncIterator[bytes]:
        raise KeyError("secret")
        yield b""  # pragma: no cover

    wire = run(body())
    assert wire.sent[0]["status"] == 500
    assert b"secret" not in wire.sent[1]["body"]


def test_disconnect_cancels_and_closes_the_body() -> None:
    closed = asyncio.Event()

    async def main() -> tuple[Wire, float]:
        wire = Wire()

        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"data: x\n\n"
                    await asyncio.sleep(3600)  # stuck: only a disconnect can end this
            finally:
                closed.set()

        response = EventStreamResponse(body(), request_id="r")
        task = asyncio.create_task(response({"type": "http"}, wire.receive, wire.send))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        wire.disconnect.set()
        await asyncio.wait_for(task, 1)
        assert closed.is_set()
        return wire, loop.time() - t0

    wire, took = asyncio.run(main())
    assert took < 0.1
    assert wire.sent[0]["status"] == 200
