"""A client that stops reading: the engine is paused by backpressure, not buffered without
bound, and after ``timeouts.client_s`` the stream is dropped as if the client had left."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator

import httpx

from helpers import chat_body, fast_settings, live_server
from omniserve.engines.base import Engine
from omniserve.events import EngineEvent, TextDelta
from omniserve.job import GenerationJob

CHUNK = "x" * 65536


class Firehose(Engine):
    """An engine that answers as fast as it is read, forever, 64 KiB an event."""

    name = "firehose"
    speaks = False

    def __init__(self) -> None:
        self.produced = 0
        self.closed = False

    async def generate(self, job: GenerationJob) -> AsyncIterator[EngineEvent]:
        try:
            while True:
                self.produced += 1
                yield TextDelta(CHUNK)
                await asyncio.sleep(0)
        finally:
            self.closed = True


def test_a_client_that_stops_reading_holds_the_engine_back_then_is_dropped() -> None:
    engine = Firehose()
    settings = fast_settings(timeouts={"client_s": 1.0})
    with live_server(settings, engine=engine) as s:
        port = int(s.base_url.rsplit(":", 1)[1])
        body = json.dumps(chat_body()).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        sock.recv(1024)  # the stream started; from now on nothing is read
        time.sleep(0.5)
        stalled_at = engine.produced
        time.sleep(0.3)
        # Backpressure: the engine is not read while the socket is full (a few buffers'
        # worth of 64 KiB events, not an ever-growing queue).
        assert engine.produced == stalled_at, (stalled_at, engine.produced)
        assert engine.produced * len(CHUNK) < 64 * 1024 * 1024
        deadline = time.monotonic() + 5
        while not engine.closed:
            assert time.monotonic() < deadline, "the stalled stream was never dropped"
            time.sleep(0.05)
        sock.close()
        metrics = httpx.get(f"{s.base_url}/metrics").text
        assert "omniserve_active_streams 0.0" in metrics
        assert s.accounts.writer is not None and s.accounts.writer.flush()
        with s.accounts.store.engine.connect() as conn:  # type: ignore[union-attr]
            (status,) = conn.exec_driver_sql("SELECT status FROM ledger").one()
        assert status == "disconnected"
