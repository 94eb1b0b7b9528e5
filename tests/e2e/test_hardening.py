"""What an outside tester broke, each on a real uvicorn on 127.0.0.1: raw sockets where the
HTTP framing matters, a /healthz probe while a hostile request runs."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from helpers import LiveServer, live_server, scrape, value


@pytest.fixture
def server() -> Iterator[LiveServer]:
    with live_server() as s:
        yield s


def _address(server: LiveServer) -> tuple[str, int]:
    host, port = server.base_url.removeprefix("http://").split(":")
    return host, int(port)


def _raw(server: LiveServer, data: bytes, *, read: bool = True, timeout: float = 10) -> bytes:
    """Send ``data`` on a fresh connection; everything the server sends back until it closes
    (or ``timeout``)."""
    with socket.create_connection(_address(server), timeout=timeout) as sock:
        sock.sendall(data)
        if not read:
            return b""
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


# -- a client that leaves mid-body -----------------------------------------------------------


def test_a_client_that_leaves_mid_body_is_counted_not_a_500(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    )
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            _raw(server, head + b'{"model": "qwen3-omni-flash", "messages": [', read=False)
        time.sleep(0.5)
    m = scrape(server)
    assert (
        value(m, "omniserve_requests_total", model="qwen3-omni-flash", status="disconnected") == 3
    )
    route = "/v1/chat/completions"
    assert value(m, "omniserve_http_responses_total", route=route, status="500") == 0
    assert value(m, "omniserve_http_responses_total", route=route, status="499") == 3
    assert "Traceback" not in caplog.text and "Exception in ASGI application" not in caplog.text


def test_a_malformed_chunk_is_not_a_500(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'10\r\n{"model": "qwen3\r\nZZZ-not-a-size\r\nxx\r\n0\r\n\r\n'
    )
    with caplog.at_level(logging.ERROR):
        answer = _raw(server, request, timeout=5)
        time.sleep(0.3)
    assert not answer.startswith(b"HTTP/1.1 500")
    m = scrape(server)
    assert (
        value(m, "omniserve_http_responses_total", route="/v1/chat/completions", status="500") == 0
    )
    assert "Traceback" not in caplog.text and "Exception in ASGI application" not in caplog.text
