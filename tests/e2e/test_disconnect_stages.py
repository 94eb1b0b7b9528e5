"""A client leaving at any stage of a request: the server frees everything it held for it (the
stream gauge, the event loop's tasks, limiter slots), books what was admitted, and serves the
next request normally."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from helpers import LiveServer, chat_body, fast_settings, live_server

PATH = "/v1/chat/completions"


@contextlib.contextmanager
def slow_media_server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers with a PNG after 1.5 s."""
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 90, 200)).save(out, "PNG")
    png = out.getvalue()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(1.5)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(png)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/cat.png"
    finally:
        httpd.shutdown()
        httpd.server_close()


def image_body(url: str) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
    return chat_body(messages=[{"role": "user", "content": content}])


def request_bytes(port: int, body: bytes, secret: str) -> bytes:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def gauge(server: LiveServer, name: str, secret: str) -> float:
    text = httpx.get(
        f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {secret}"}
    ).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def leave(port: int, data: bytes, *, read_until: bytes | None, wait_s: float = 0.0) -> None:
    """Sends ``data``, reads until ``read_until`` appears (None: reads nothing), lingers,
    then resets the connection (no orderly close)."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(data)
        got = b""
        while read_until is not None and read_until not in got:
            chunk = sock.recv(65536)
            assert chunk, got[-300:]
            got += chunk
        time.sleep(wait_s)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()


STAGES = {
    # stage: (body, bytes of it sent, read until, settings)
    "uploading the body": ("text", 0.5, None, {}),
    "fetching media": ("image", 1.0, None, {}),
    "waiting for the first token": ("slow-start", 1.0, None, {"first_token_ms": 1500}),
    "mid-text": ("text", 1.0, b'"content":', {"tokens_per_second": 20}),
    "mid-speech": ("speech", 1.0, b'"audio":', {"tokens_per_second": 20}),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_leaving_at_each_stage_frees_everything(stage: str) -> None:
    kind, fraction, until, emulator = STAGES[stage]
    settings = fast_settings(emulator=emulator, media={"allow_hosts": ["127.0.0.1"]})
    with slow_media_server() as media_url, live_server(settings) as s:
        assert s.accounts.store is not None
        _, admin = s.accounts.store.create("ops", admin=True)
        _, secret = s.accounts.store.create("app", concurrency=1)
        port = int(s.base_url.rsplit(":", 1)[1])
        body: dict[str, Any] = {
            "text": chat_body(max_tokens=200),
            "slow-start": chat_body(max_tokens=5),
            "image": image_body(media_url),
            "speech": chat_body(modalities=["text", "audio"], audio={"voice": "Cherry"}),
        }[kind]
        raw = json.dumps(body).encode()
        tasks_before = gauge(s, "omniserve_event_loop_tasks", admin)
        full = request_bytes(port, raw, secret)
        sent = full if fraction >= 1 else full[: len(full) - int(len(raw) * (1 - fraction))]
        leave(port, sent, read_until=until, wait_s=0.2)
        deadline = time.monotonic() + 10
        while (
            gauge(s, "omniserve_active_streams", admin) != 0
            or gauge(s, "omniserve_event_loop_tasks", admin) > tasks_before
        ):
            assert time.monotonic() < deadline, f"{stage}: still holding work"
            time.sleep(0.05)
        # The concurrency slot is free again: the same key gets a full answer.
        resp = httpx.post(
            f"{s.base_url}{PATH}",
            json=chat_body(max_tokens=3),
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        )
        assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
        assert s.accounts.writer is not None and s.accounts.writer.flush()
        with s.accounts.store.engine.connect() as conn:
            statuses = sorted(r[0] for r in conn.exec_driver_sql("SELECT status FROM ledger").all())
        admitted = stage != "uploading the body"
        assert statuses == sorted(["ok", *(["disconnected"] if admitted else [])]), statuses
