"""What an outside tester broke, each on a real uvicorn on 127.0.0.1: raw sockets where the
HTTP framing matters, a /healthz probe while a hostile request runs."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from helpers import LiveServer, chat_body, fast_settings, live_server, scrape, value


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


# -- request smuggling -----------------------------------------------------------------------


def test_a_request_with_two_framings_is_refused_and_its_connection_closed(
    server: LiveServer,
) -> None:
    """Content-Length and Transfer-Encoding together: 400, and the bytes after the chunked
    body never run as a second request (here a hidden GET /admin/keys)."""
    hidden = b"GET /admin/keys HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    body = b'{"model": "qwen3-omni-flash"}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
        + hidden
    )
    answer = _raw(server, request)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"both Content-Length and Transfer-Encoding" in answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # the hidden request got no answer
    assert b"connection: close" in answer.lower()


def test_two_different_lengths_are_refused(server: LiveServer) -> None:
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
    )
    assert _raw(server, request).startswith(b"HTTP/1.1 400")


# -- what a web page can make a browser send ---------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_a_body_that_is_not_declared_json_is_refused(
    server: LiveServer, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = httpx.post(
        f"{server.api}/chat/completions", content=json.dumps(chat_body()), headers=headers
    )
    assert r.status_code == 415
    assert r.json()["error"]["message"].startswith("Content-Type must be application/json")
    created = httpx.post(
        f"{server.base_url}/admin/keys", content=b'{"name": "mine"}', headers=headers
    )
    assert created.status_code == 415  # nobody's first key from a cross-site form


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_with_parameters_or_in_any_case_is_json(server: LiveServer, content_type: str) -> None:
    r = httpx.post(
        f"{server.api}/chat/completions",
        content=json.dumps(chat_body()),
        headers={"content-type": content_type},
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost:8000", "[::1]:8000", "10.1.2.3:9000", "app.localhost"]
)
def test_a_keyless_server_answers_to_loopback_names_and_addresses(
    server: LiveServer, host: str
) -> None:
    assert httpx.get(f"{server.base_url}/v1/models", headers={"host": host}).status_code == 200


def test_a_keyless_server_refuses_names_a_page_could_point_at_it(server: LiveServer) -> None:
    """DNS rebinding: attacker.example resolves to 127.0.0.1, and the page is same-origin."""
    for path in ("/admin/usage", "/v1/models"):
        r = httpx.get(f"{server.base_url}{path}", headers={"host": "attacker.example"})
        assert r.status_code == 403
        assert "attacker.example" in r.json()["error"]["message"]
    made = httpx.post(
        f"{server.base_url}/admin/keys",
        json={"name": "theirs"},
        headers={"host": "attacker.example:8000"},
    )
    assert made.status_code == 403


def test_allowed_hosts_and_keys_lift_the_name_check() -> None:
    settings = fast_settings(http={"allowed_hosts": ["omni.internal", ".corp.example"]})
    with live_server(settings) as s:
        for host in ("omni.internal", "gpu1.corp.example:8000"):
            assert httpx.get(f"{s.base_url}/v1/models", headers={"host": host}).status_code == 200
        assert httpx.get(f"{s.base_url}/v1/models", headers={"host": "other"}).status_code == 403
        created = httpx.post(f"{s.base_url}/admin/keys", json={"name": "ops", "admin": True})
        assert created.status_code in (200, 201), created.text
        # With keys, the keys protect the server: any name is answered (with a 401 here).
        r = httpx.get(f"{s.base_url}/v1/models", headers={"host": "other"})
        assert r.status_code == 401


# -- slow and silent connections -------------------------------------------------------------


@pytest.fixture
def strict() -> Iterator[LiveServer]:
    settings = fast_settings(
        http={
            "header_timeout_s": 0.5,
            "body_min_rate": 1000,
            "body_grace_s": 0.5,
            "max_connections": 8,
        }
    )
    with live_server(settings) as s:
        yield s


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``seconds``, and what it sent."""
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
        return True, got
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got


def test_headers_that_trickle_are_cut_off(strict: LiveServer) -> None:
    began = time.monotonic()
    with socket.create_connection(_address(strict)) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\n")
        for _ in range(20):
            try:
                sock.sendall(b"X-Slow: a\r\n")
            except OSError:
                break
            time.sleep(0.1)
        closed, _ = _closed_within(sock, 2)
    assert closed and time.monotonic() - began < 2.5


def test_a_silent_connection_is_closed(strict: LiveServer) -> None:
    with socket.create_connection(_address(strict)) as sock:
        closed, got = _closed_within(sock, 2)
    assert closed and got == b""


def test_a_kept_alive_connection_must_send_its_next_headers_in_time(strict: LiveServer) -> None:
    with socket.create_connection(_address(strict)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(2)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and then nothing
        closed, _ = _closed_within(sock, 2)
    assert closed


def test_a_body_at_a_byte_a_second_is_answered_408(strict: LiveServer) -> None:
    with socket.create_connection(_address(strict)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{"
        )
        began = time.monotonic()
        answer = b""
        sock.settimeout(0.1)
        while time.monotonic() - began < 5:
            try:
                sock.sendall(b" ")
            except OSError:
                break
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            except TimeoutError:
                pass
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"slower than 1000 bytes per second" in answer
        assert time.monotonic() - began < 3


def test_a_client_still_sending_gets_the_answer_not_a_reset(strict: LiveServer) -> None:
    """The 408 goes out while the client still has body to send. Bytes that reach a closed
    socket make the kernel answer with a reset, and a reset drops what the client had not read
    yet: the server half-closes instead, reads on and drops the rest, so the client reads the
    408 and an orderly end."""
    with socket.create_connection(_address(strict)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 4000000\r\n\r\n{"
        )
        time.sleep(1.2)  # past the body's deadline: the 408 is here, unread
        for _ in range(8):
            sock.sendall(b" " * 65536)
        time.sleep(0.2)
        sock.settimeout(5)
        answer = b""
        while chunk := sock.recv(65536):  # a reset raises here
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_connections_beyond_the_cap_are_answered_503(strict: LiveServer) -> None:
    held = [socket.create_connection(_address(strict)) for _ in range(8)]
    try:
        r = httpx.get(f"{strict.base_url}/healthz")
        assert r.status_code == 503
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.1)
    assert httpx.get(f"{strict.base_url}/healthz").status_code == 200


# -- one request must not stall the others ---------------------------------------------------


class HealthProbe:
    """/healthz round trips from a thread while something else runs: the slowest one."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.slowest = 0.0
        self.count = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                began = time.monotonic()
                assert client.get(f"{self.server.base_url}/healthz").status_code == 200
                self.slowest = max(self.slowest, time.monotonic() - began)
                self.count += 1
                time.sleep(0.01)

    def __enter__(self) -> HealthProbe:
        self.thread.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _post(server: LiveServer, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.api}/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=120,
    )


def _chat(messages: str) -> bytes:
    return b'{"model": "qwen3-omni-flash", "stream": true, "messages": ' + messages.encode() + b"}"


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        (
            "a 60 MB one-word message",
            _chat('[{"role": "user", "content": "' + "a" * 60_000_000 + '"}]'),
            "bytes of text besides media",
        ),
        (
            "a 7 MB one-word message",
            _chat('[{"role": "user", "content": "' + "a" * 7_000_000 + '"}]'),
            "Range of input length should be [1, 49152]",
        ),
        (
            "400,000 tiny messages",
            _chat("[" + ", ".join(['{"role": "user", "content": "hi"}'] * 400_000) + "]"),
            "JSON values",
        ),
        (
            "500,000 invalid content parts",
            _chat('[{"role": "user", "content": [' + ", ".join(["{}"] * 500_000) + "]}]"),
            "JSON values",
        ),
        (
            "2,000 messages in a small body",
            _chat("[" + ", ".join(['{"role": "user", "content": "hi"}'] * 2_000) + "]"),
            "Range of messages length should be [1, 1024]",
        ),
        (
            "5,000 content parts in a small body",
            _chat('[{"role": "user", "content": [' + ", ".join(['{"type": "x"}'] * 5000) + "]}]"),
            "at most 1024 content parts",
        ),
    ],
)
def test_a_hostile_body_is_refused_without_stalling_the_server(
    server: LiveServer, name: str, body: bytes, message: str
) -> None:
    with HealthProbe(server) as probe:
        began = time.monotonic()
        r = _post(server, body)
        took = time.monotonic() - began
    assert r.status_code == 400, (name, r.text[:300])
    assert message in r.json()["error"]["message"], (name, r.json())
    assert probe.count > 0
    # A liveness bound, not a benchmark: the event loop kept answering while this ran.
    assert probe.slowest < 0.5, (name, probe.slowest)
    assert took < 10, (name, took)


def test_a_stream_keeps_flowing_while_a_hostile_body_is_parsed(server: LiveServer) -> None:
    hostile = _chat('[{"role": "user", "content": "' + "a" * 6_000_000 + '"}]')
    gaps: list[float] = []
    refused = threading.Thread(target=lambda: _post(server, hostile))
    with httpx.stream(
        "POST", f"{server.api}/chat/completions", json=chat_body(max_tokens=400), timeout=60
    ) as r:
        last = time.monotonic()
        for i, _ in enumerate(r.iter_lines()):
            if i == 5:
                refused.start()
            now = time.monotonic()
            gaps.append(now - last)
            last = now
    refused.join()
    assert max(gaps[6:]) < 0.5


# -- decode bombs ------------------------------------------------------------------------------


def _png_url(mode: str, side: int, *, transparent: bool = False) -> str:
    import base64
    import io

    from PIL import Image

    out = io.BytesIO()
    if mode == "P":
        img = Image.new("P", (side, side), 0)
        img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        img.save(out, "PNG", **({"transparency": 0} if transparent else {}))
    else:
        Image.new(mode, (side, side)).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _rss_mb() -> float:
    from pathlib import Path

    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _frames_body(url: str, count: int) -> dict[str, object]:
    content = [{"type": "video", "video": [url] * count}, {"type": "text", "text": "what?"}]
    return chat_body(messages=[{"role": "user", "content": content}])


def test_a_frame_list_of_decode_bombs_is_refused_from_the_first_header(
    server: LiveServer,
) -> None:
    """128 copies of a 60 KB transparent palette PNG of 8000x8000: each would take 590 MB."""
    body = _frames_body(_png_url("P", 8000, transparent=True), 128)
    before = _rss_mb()
    with HealthProbe(server) as probe:
        began = time.monotonic()
        r = httpx.post(f"{server.api}/chat/completions", json=body, timeout=120)
        took = time.monotonic() - began
    assert r.status_code == 400
    assert "one decode may use" in r.json()["error"]["message"]
    assert took < 5
    assert probe.slowest < 0.5
    assert _rss_mb() - before < 200  # the server the test runs in: nothing was decoded


@pytest.mark.timeout(300)
def test_a_request_whose_media_would_decode_past_its_budget_is_refused() -> None:
    """Frames each under the one-decode bound, but together past the request's budget: the
    request is refused when the budget is spent, not after decoding them all."""
    settings = fast_settings(media={"request_decode_mb": 1000, "decode_memory_mb": 1000})
    with live_server(settings) as s:
        body = _frames_body(_png_url("RGBA", 4000), 64)  # 180 MB each, 11.5 GB in all
        with HealthProbe(s) as probe:
            r = httpx.post(f"{s.api}/chat/completions", json=body, timeout=120)
        assert r.status_code == 400
        assert "past 1000 MB of decoding memory" in r.json()["error"]["message"]
        assert probe.slowest < 0.5


# -- media downloads: a minimum rate, and slots shared fairly -------------------------------------


class _MediaOrigin(ThreadingHTTPServer):
    """/drip sends its headers, then a byte every 0.2 s; /hold answers once released."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OriginHandler)
        self.holding = 0
        self.release = threading.Event()
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _MediaOrigin

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        png = _tiny_png()
        if self.path == "/hold":
            with self.server.lock:
                self.server.holding += 1
            self.server.release.wait(20)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(png) if self.path != "/drip" else 10**6))
        self.end_headers()
        if self.path != "/drip":
            self.wfile.write(png)
            return
        try:
            for _ in range(300):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@contextmanager
def _origin() -> Iterator[_MediaOrigin]:
    httpd = _MediaOrigin()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()


def _image_body(url: str) -> dict[str, object]:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what?"}]
    return chat_body(messages=[{"role": "user", "content": content}])


def test_a_dripping_media_url_is_cut_at_the_minimum_rate() -> None:
    media = {"allow_hosts": ["127.0.0.1"], "min_rate": 4096, "min_rate_grace_s": 1.0}
    with (
        _origin() as origin,
        live_server(fast_settings(media=media)) as s,
        HealthProbe(s) as probe,
    ):
        began = time.monotonic()
        r = httpx.post(
            f"{s.api}/chat/completions", json=_image_body(origin.url("/drip")), timeout=60
        )
        took = time.monotonic() - began
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == (
        "Failed to download multimodal content. "
        "The server sent the file slower than 4096 bytes a second."
    )
    assert took < 5  # cut after its grace, not at the 60 s total deadline
    assert probe.slowest < 0.5


def test_one_key_cannot_hold_every_download_slot() -> None:
    """Two server-wide slots, one per caller: a key with three requests held by a slow origin
    keeps one slot, and another key's image still downloads at once."""
    media = {"allow_hosts": ["127.0.0.1"], "fetch_concurrency": 2, "caller_concurrency": 1}
    with _origin() as origin, live_server(fast_settings(media=media)) as s:
        _, hog = s.accounts.store.create("hog")
        _, other = s.accounts.store.create("other")

        def post(secret: str, path: str) -> httpx.Response:
            return httpx.post(
                f"{s.api}/chat/completions",
                json=_image_body(origin.url(path)),
                headers={"authorization": f"Bearer {secret}"},
                timeout=30,
            )

        held: list[httpx.Response] = []
        hogs = [threading.Thread(target=lambda: held.append(post(hog, "/hold"))) for _ in range(3)]
        for thread in hogs:
            thread.start()
        deadline = time.monotonic() + 10
        while origin.holding < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the hog's other requests are waiting now, on its own cap
        began = time.monotonic()
        r = post(other, "/small.png")
        took = time.monotonic() - began
        holding = origin.holding
        origin.release.set()
        for thread in hogs:
            thread.join(30)
    assert r.status_code == 200, r.text
    assert took < 5
    assert holding == 1
    assert [h.status_code for h in held] == [200, 200, 200]
