"""SIGTERM: stop admitting with a clear 503, let running streams finish up to the drain timeout,
then end the rest with an error event; the ledger records each, and the process exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from helpers import chat_body, free_port
from omniserve.accounts.database import database_url
from omniserve.accounts.schema import ledger


@contextmanager
def server(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNISERVE_")}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "omniserve", "serve", "--port", str(port)),
            *("--data-dir", str(tmp_path), "--first-token-ms", "0"),
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        output = proc.stdout.read().decode()
        proc.stdout.close()
        assert "Traceback" not in output, output


class Reader(threading.Thread):
    """Reads one stream to its end, noting the events."""

    def __init__(self, base: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.base, self.body = base, body
        self.started = threading.Event()
        self.events: list[Any] = []
        self.status = 0
        self.cut = False  # the connection ended without [DONE]

    def run(self) -> None:
        url = f"{self.base}/v1/chat/completions"
        try:
            with httpx.stream("POST", url, json=self.body, timeout=30) as resp:
                self.status = resp.status_code
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        data = line[6:]
                        self.events.append(data if data == "[DONE]" else json.loads(data))
                        self.started.set()
        except httpx.HTTPError:
            self.cut = True


def rows(tmp_path: Path) -> list[dict[str, Any]]:
    engine = sa.create_engine(database_url(None, tmp_path))
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(ledger))]
    finally:
        engine.dispose()


def test_a_running_stream_finishes_and_new_requests_get_503(tmp_path: Path) -> None:
    with server(tmp_path, "--tokens-per-second", "8", "--drain-timeout", "20") as (proc, base):
        reader = Reader(base, chat_body(max_tokens=12))
        reader.start()
        assert reader.started.wait(10)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        resp = httpx.post(f"{base}/v1/chat/completions", json=chat_body())
        assert resp.status_code == 503
        assert resp.json()["error"]["message"].startswith("The server is shutting down")
        assert httpx.get(f"{base}/readyz").status_code == 503
        reader.join(20)
        assert reader.events[-1] == "[DONE]"
        reasons = [c["finish_reason"] for e in reader.events[:-1] for c in e["choices"]]
        assert reasons[-1] == "length"
        assert proc.wait(15) in (0, -signal.SIGTERM)  # right after the stream, not at 20 s
    (row,) = rows(tmp_path)
    assert row["status"] == "ok"


def test_streams_past_the_drain_timeout_end_with_an_error_event(tmp_path: Path) -> None:
    with server(tmp_path, "--tokens-per-second", "4", "--drain-timeout", "1") as (proc, base):
        readers = [Reader(base, chat_body(max_tokens=200)) for _ in range(2)]
        for r in readers:
            r.start()
        assert all(r.started.wait(10) for r in readers)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for r in readers:
            r.join(15)
            assert r.status == 200 and r.events[-1] == "[DONE]"
            error = r.events[-2]["error"]
            assert error["code"] == "ServiceUnavailable"
            assert error["message"].startswith("The server is shutting down")
        assert proc.wait(15) in (0, -signal.SIGTERM)
        assert time.monotonic() - signalled < 12
    statuses = sorted((r["status"], r["error_code"]) for r in rows(tmp_path))
    assert statuses == [("error", "ServiceUnavailable")] * 2


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    with server(tmp_path, "--tokens-per-second", "4", "--drain-timeout", "60") as (proc, base):
        reader = Reader(base, chat_body(max_tokens=200))
        reader.start()
        assert reader.started.wait(10)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # draining, the stream still running
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) in (0, -signal.SIGTERM)
        reader.join(10)
        assert reader.cut or reader.events[-1] != "[DONE]" or "error" in reader.events[-2]


def test_realtime_sessions_past_the_drain_timeout_get_an_error_event(tmp_path: Path) -> None:
    import websocket

    with server(tmp_path, "--drain-timeout", "1") as (proc, base):
        ws = websocket.create_connection(
            base.replace("http://", "ws://")
            + "/api-ws/v1/realtime?model=qwen3-omni-flash-realtime",
            timeout=15,
        )
        assert json.loads(ws.recv())["type"] == "session.created"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        event = json.loads(ws.recv())
        assert event["type"] == "error"
        assert event["error"]["code"] == "ServiceUnavailable"
        assert event["error"]["message"].startswith("The server is shutting down")
        try:
            rest = ws.recv()  # the close frame
        except websocket.WebSocketConnectionClosedException:
            rest = ""
        assert rest == ""
        ws.shutdown()
        assert proc.wait(15) in (0, -signal.SIGTERM)
        assert time.monotonic() - signalled < 12
