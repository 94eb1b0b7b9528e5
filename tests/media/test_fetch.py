"""The safe fetcher against real servers on 127.0.0.1; no traffic goes anywhere else.

Names reach the loopback servers only through ``StaticResolver``; refusals are checked by
resolution alone, before any connection is attempted.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from omniserve.config import MediaSettings
from omniserve.errors import InvalidMedia
from omniserve.media.fetch import FAILED, MediaFetcher
from omniserve.media.resolve import Resolver, StaticResolver
from omniserve.media.sources import INVALID_URL

SMALL = b"\x89PNG\r\n\x1a\n small file"
HTML = b"<!doctype html><html><body>not an image</body></html>"
BIG = 32 * 1024 * 1024
PIECE = 64 * 1024


def not_public(host: str, ip: str) -> str:
    return (
        f"Failed to download multimodal content. The host {host} resolves to {ip}, "
        "which is not a public address."
    )


def settings(**overrides: Any) -> MediaSettings:
    values: dict[str, Any] = {
        "allow_hosts": ["127.0.0.1"],
        "connect_timeout_s": 2,
        "read_timeout_s": 2,
        "total_timeout_s": 5,
    }
    return MediaSettings(**{**values, **overrides})


async def fetch_with(fetcher: MediaFetcher, *sources: str, max_bytes: int) -> list[bytes]:
    try:
        return [await fetcher.fetch(s, max_bytes=max_bytes) for s in sources]
    finally:
        await fetcher.close()


def fetch(
    source: str,
    *,
    media: MediaSettings | None = None,
    resolver: Resolver | None = None,
    max_bytes: int = 1_000_000,
    bare_base64: bool = False,
) -> bytes:
    async def run() -> bytes:
        fetcher = MediaFetcher(media or settings(), resolver)
        try:
            return await fetcher.fetch(source, max_bytes=max_bytes, bare_base64=bare_base64)
        finally:
            await fetcher.close()

    return asyncio.run(run())


def refusal(source: str, **kwargs: Any) -> str:
    with pytest.raises(InvalidMedia) as info:
        fetch(source, **kwargs)
    return info.value.message


# --- a real HTTP server ------------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    client_port: int


@dataclass
class Outcome:
    sent: int = 0
    finished: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class MediaServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[Seen] = []
        self.outcome = Outcome()
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.holding = 0  # requests to /hold waiting for ``release``
        self.release = threading.Event()
        self.held = threading.Event()  # set once a request to /hold waits

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: MediaServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(Seen(self.path, dict(self.headers), self.client_address[1]))
        path = self.path
        if path == "/small":
            self.reply(200, SMALL, "image/png")
        elif path == "/page.html":
            self.reply(200, HTML, "text/html")
        elif path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            self.redirect(f"/chain/{left - 1}" if left else "/small")
        elif path == "/loop":
            self.redirect("/loop")
        elif path == "/to-other-loopback":
            self.redirect(f"http://127.0.0.2:{self.server.port}/small")
        elif path == "/to-file":
            self.redirect("file:///etc/passwd")
        elif path == "/big":
            self.send_big(chunked=False)
        elif path == "/big-chunked":
            self.send_big(chunked=True)
        elif path == "/gzip":
            self.reply(200, gzip.compress(SMALL * 10), "image/png", encoding="gzip")
        elif path == "/gzip-bomb":
            self.reply(200, gzip.compress(bytes(BIG)), "image/png", encoding="gzip")
        elif path == "/brotli":
            self.reply(200, b"\x0b\x02\x80hello\x03", "image/png", encoding="br")
        elif path == "/cookie":
            self.reply(200, SMALL, "image/png", extra={"Set-Cookie": "sid=secret; Path=/"})
        elif path == "/hold":
            with self.server.lock:
                self.server.holding += 1
            self.server.held.set()
            self.server.release.wait(10)
            self.reply(200, SMALL, "image/png")
        elif path == "/steady":  # 64 KiB at about 64 KiB/s, in 4 KiB pieces
            self.send_response(200)
            self.send_header("Content-Length", str(64 * 1024))
            self.end_headers()
            for _ in range(16):
                self.wfile.write(bytes(4096))
                self.wfile.flush()
                time.sleep(1 / 16)
        elif path == "/slow":
            with self.server.lock:
                self.server.active += 1
                self.server.max_active = max(self.server.max_active, self.server.active)
            time.sleep(0.2)
            with self.server.lock:
                self.server.active -= 1
            self.reply(200, SMALL, "image/png")
        else:
            self.reply(404, b"not found", "text/plain")

    def reply(
        self,
        status: int,
        body: bytes,
        kind: str,
        *,
        encoding: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_big(self, *, chunked: bool) -> None:
        """32 MiB, recording how much got out before the client hung up."""
        outcome = self.server.outcome
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(BIG))
        self.end_headers()
        piece = bytes(PIECE)
        framed = f"{PIECE:x}\r\n".encode() + piece + b"\r\n" if chunked else piece
        try:
            while outcome.sent < BIG:
                self.wfile.write(framed)
                outcome.sent += PIECE
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            outcome.finished = True
        except OSError:
            self.close_connection = True
        finally:
            outcome.done.set()


@pytest.fixture
def server() -> Iterator[MediaServer]:
    httpd = MediaServer()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@contextmanager
def raw_server(serve: Any) -> Iterator[int]:
    """A socket server on 127.0.0.1 whose connections ``serve(conn, stop)`` handles."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    workers: list[threading.Thread] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            worker = threading.Thread(target=serve, args=(conn, stop), daemon=True)
            worker.start()
            workers.append(worker)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        acceptor.join(timeout=5)
        for worker in workers:
            worker.join(timeout=5)
        listener.close()


def trickle(conn: socket.socket, stop: threading.Event) -> None:
    """Headers, then one byte every 0.2 s for as long as the client listens."""
    with conn:
        conn.recv(65536)
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            while not stop.wait(0.2):
                conn.sendall(b"x")
        except OSError:
            pass


def slow_headers(conn: socket.socket, stop: threading.Event) -> None:
    """The status line and headers one byte every 0.2 s."""
    with conn:
        conn.recv(65536)
        try:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Padding: " + b"x" * 200:
                if stop.wait(0.2):
                    break
                conn.sendall(bytes([byte]))
        except OSError:
            pass


def silent(conn: socket.socket, stop: threading.Event) -> None:
    with conn:
        stop.wait(10)


# --- data URLs and bare base64 ------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_data_urls_decode() -> None:
    assert fetch(f"data:image/png;base64,{b64(SMALL)}") == SMALL
    assert fetch(f"data:;base64,{b64(SMALL)}") == SMALL
    assert fetch(f"DATA:audio/wav;rate=16000;base64,{b64(SMALL)}") == SMALL
    assert fetch("data:;base64,") == b""


def test_data_url_allows_whitespace_inside() -> None:
    text = base64.encodebytes(bytes(range(256)) * 4).decode()  # lines of 76 and newlines
    assert "\n" in text
    assert fetch(f"  data:;base64,{text} \r\n") == bytes(range(256)) * 4
    assert fetch(f"data:;base64,{b64(SMALL)[:8]} \t{b64(SMALL)[8:]}") == SMALL


def test_large_data_url_decodes_across_windows() -> None:
    data = bytes(range(256)) * 1200  # 300 KiB: several decoding windows
    assert fetch(f"data:;base64,{b64(data)}") == data
    assert fetch(f"data:;base64,{base64.encodebytes(data).decode()}") == data
    assert fetch(" \n".join(b64(data)), bare_base64=True) == data
    message = "Failed to download multimodal content. The file is larger than 200000 bytes."
    assert refusal(f"data:;base64,{b64(data)}", max_bytes=200_000) == message
    padded_then_more = "QQ==" + " " * 70_000 + "QUJD"
    assert refusal(f"data:;base64,{padded_then_more}") == INVALID_URL
    assert refusal(f"data:;base64,{b64(data)}A") == INVALID_URL


@pytest.mark.parametrize(
    "payload",
    ["QUJD*", "QUJDRA=", "QUJDRA", "QQ==QQ==", "=QUJD", "QUJ\u00e9", "QUJDRA===", "QU\x00JD"],
)
def test_invalid_base64_is_an_invalid_url(payload: str) -> None:
    assert refusal(f"data:;base64,{payload}") == INVALID_URL
    assert refusal(payload, bare_base64=True) == INVALID_URL


@pytest.mark.parametrize(
    "source", ["data:image/png,abc", "data:image/png;base64", "data:text/plain;QUJD"]
)
def test_data_url_without_base64_is_invalid(source: str) -> None:
    assert refusal(source) == INVALID_URL


def test_data_url_size_is_capped_on_decoded_bytes() -> None:
    ten = f"data:;base64,{b64(bytes(10))}"
    assert fetch(ten, max_bytes=10) == bytes(10)
    message = "Failed to download multimodal content. The file is larger than 9 bytes."
    assert refusal(ten, max_bytes=9) == message
    assert refusal(b64(bytes(10)), max_bytes=9, bare_base64=True) == message


def test_bare_base64_only_when_asked() -> None:
    assert fetch(b64(SMALL), bare_base64=True) == SMALL
    assert fetch(f"{b64(SMALL)}\n", bare_base64=True) == SMALL
    assert refusal(b64(SMALL)) == INVALID_URL
    assert refusal("", bare_base64=True) == INVALID_URL


# --- URLs that never leave the process ----------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/a.png",
        "gopher://127.0.0.1:70/_x",
        "javascript:alert(1)",
        "http://user:pw@127.0.0.1/small",
        "http://user@127.0.0.1/small",
        "http:///small",
        "http://127.0.0.1:99999/small",
        "http://127.0.0.1:0/small",
        "http://127.0.0.1:port/",
        "http://[::1/",
        "//127.0.0.1/small",
    ],
)
def test_unfetchable_urls_are_invalid(source: str) -> None:
    assert refusal(source) == INVALID_URL
    assert refusal(source, bare_base64=True) == INVALID_URL


@pytest.mark.parametrize(
    ("host", "ip"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("[::ffff:a9fe:a9fe]", "::ffff:a9fe:a9fe"),
        ("[::1]", "::1"),
        ("[::]", "::"),
        ("[fe80::1%25eth0]", "fe80::1%25eth0"),
    ],
)
def test_ip_literals_in_any_form_are_checked(host: str, ip: str) -> None:
    resolver = StaticResolver({})
    name = host.strip("[]")
    source = f"http://{host}:8/x.png"
    message = refusal(source, media=settings(allow_hosts=[]), resolver=resolver)
    assert message == not_public(name, str(ip_address(ip)))
    assert resolver.lookups == []  # literals are never sent to a resolver


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.5",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "224.0.0.1",
        "0.0.0.0",
        "198.18.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "2002:a00:1::1",
    ],
)
def test_names_resolving_to_private_addresses_are_refused(ip: str) -> None:
    resolver = StaticResolver({"media.test": [ip]})
    message = refusal("https://media.test/cat.png", resolver=resolver)
    assert message == not_public("media.test", str(ip_address(ip)))
    assert resolver.lookups == ["media.test"]


def test_every_address_must_pass() -> None:
    resolver = StaticResolver({"mixed.test": ["93.184.215.14", "10.0.0.1"]})
    message = refusal("http://mixed.test/cat.png", resolver=resolver)
    assert message == not_public("mixed.test", "10.0.0.1")


def test_unknown_name_fails_like_dns() -> None:
    message = refusal("http://nowhere.test/cat.png", resolver=StaticResolver({}))
    expected = "Failed to download multimodal content. The host nowhere.test could not be resolved."
    assert message == expected


def test_loopback_name_without_allowlist_sends_nothing(server: MediaServer) -> None:
    resolver = StaticResolver({"sneaky.test": ["127.0.0.1"]})
    media = settings(allow_hosts=[])
    message = refusal(server.url("/small", "sneaky.test"), media=media, resolver=resolver)
    assert message == not_public("sneaky.test", "127.0.0.1")
    assert server.seen == []


# --- real downloads from 127.0.0.1 --------------------------------------------------------------


def test_small_file(server: MediaServer) -> None:
    assert fetch(server.url("/small")) == SMALL
    (seen,) = server.seen
    assert seen.headers["User-Agent"] == "omniserve"
    assert seen.headers["Accept-Encoding"] == "identity"


def test_html_page_is_returned_as_bytes(server: MediaServer) -> None:
    assert fetch(server.url("/page.html")) == HTML


def test_http_error_status(server: MediaServer) -> None:
    message = "Failed to download multimodal content. The server answered HTTP 404."
    assert refusal(server.url("/missing")) == message


def test_name_is_pinned_to_the_checked_address(server: MediaServer) -> None:
    resolver = StaticResolver({"media.test": ["127.0.0.1"]})
    media = settings(allow_hosts=["media.test"])
    assert fetch(server.url("/small", "media.test"), media=media, resolver=resolver) == SMALL
    assert resolver.lookups == ["media.test"]
    assert server.seen[0].headers["Host"] == f"media.test:{server.port}"


def test_wildcard_names(server: MediaServer) -> None:
    resolver = StaticResolver({"cam.lan.example": ["127.0.0.1"], "lan.example": ["127.0.0.1"]})
    media = settings(allow_hosts=["*.lan.example"])
    assert fetch(server.url("/small", "cam.lan.example"), media=media, resolver=resolver) == SMALL
    message = refusal(server.url("/small", "lan.example"), media=media, resolver=resolver)
    assert message == not_public("lan.example", "127.0.0.1")


def test_connections_are_pooled_per_name(server: MediaServer) -> None:
    resolver = StaticResolver({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]})
    fetcher = MediaFetcher(settings(allow_hosts=["127.0.0.1/32"]), resolver)
    urls = [server.url("/small", "a.test"), server.url("/small", "a.test")]
    urls.append(server.url("/small", "b.test"))
    assert asyncio.run(fetch_with(fetcher, *urls, max_bytes=100)) == [SMALL] * 3
    first, again, other = (s.client_port for s in server.seen)
    assert first == again  # kept alive for the same name
    assert other != first  # never shared between names, whose TLS identities differ


def test_cookies_are_not_kept(server: MediaServer) -> None:
    fetcher = MediaFetcher(settings())
    urls = [server.url("/cookie"), server.url("/small")]
    asyncio.run(fetch_with(fetcher, *urls, max_bytes=100))
    assert "Cookie" not in server.seen[1].headers


def test_redirect_chain_is_followed(server: MediaServer) -> None:
    assert fetch(server.url("/chain/4")) == SMALL
    assert [s.path for s in server.seen][-1] == "/small"


def test_names_are_resolved_again_on_every_hop(server: MediaServer) -> None:
    resolver = StaticResolver({"media.test": ["127.0.0.1"]})
    media = settings(allow_hosts=["media.test"])
    assert fetch(server.url("/chain/2", "media.test"), media=media, resolver=resolver) == SMALL
    assert resolver.lookups == ["media.test"] * 4


def test_redirect_loop_stops(server: MediaServer) -> None:
    message = "Failed to download multimodal content. More than 5 redirects."
    assert refusal(server.url("/loop")) == message
    assert len(server.seen) == 6
    assert refusal(server.url("/chain/5")) == message


def test_every_redirect_hop_is_checked(server: MediaServer) -> None:
    media = settings(allow_hosts=["127.0.0.1/32"])
    message = refusal(server.url("/to-other-loopback"), media=media)
    assert message == not_public("127.0.0.2", "127.0.0.2")


def test_redirect_to_another_scheme_is_refused(server: MediaServer) -> None:
    message = "Failed to download multimodal content. The server redirected to an unsupported URL."
    assert refusal(server.url("/to-file")) == message


def test_content_length_over_the_cap_is_refused_before_the_body(server: MediaServer) -> None:
    message = "Failed to download multimodal content. The file is larger than 1000000 bytes."
    assert refusal(server.url("/big")) == message
    assert server.outcome.done.wait(10)
    assert not server.outcome.finished


def test_streamed_body_is_cut_off_at_the_cap(server: MediaServer) -> None:
    message = "Failed to download multimodal content. The file is larger than 1000000 bytes."
    assert refusal(server.url("/big-chunked")) == message
    assert server.outcome.done.wait(10)
    assert not server.outcome.finished
    assert server.outcome.sent < BIG // 2


def test_gzip_is_inflated_within_the_cap(server: MediaServer) -> None:
    assert fetch(server.url("/gzip")) == SMALL * 10
    message = "Failed to download multimodal content. The file is larger than 1000000 bytes."
    assert refusal(server.url("/gzip-bomb")) == message
    message = (
        "Failed to download multimodal content. The server sent the file encoded as br, "
        "which is not supported."
    )
    assert refusal(server.url("/brotli")) == message


def test_downloads_share_the_server_wide_limit(server: MediaServer) -> None:
    fetcher = MediaFetcher(settings(fetch_concurrency=1))

    async def run() -> list[bytes]:
        try:
            urls = [server.url("/slow")] * 3
            return await asyncio.gather(*(fetcher.fetch(u, max_bytes=100) for u in urls))
        finally:
            await fetcher.close()

    assert asyncio.run(run()) == [SMALL] * 3
    assert server.max_active == 1


# --- slow, silent and absent servers ------------------------------------------------------------


def test_trickling_server_is_cut_off_at_the_total_deadline() -> None:
    media = settings(total_timeout_s=1, read_timeout_s=0.5)
    with raw_server(trickle) as port:
        started = time.monotonic()
        message = refusal(f"http://127.0.0.1:{port}/video.mp4", media=media)
        elapsed = time.monotonic() - started
    assert (
        message == "Failed to download multimodal content. The download took longer than 1 seconds."
    )
    assert 0.9 < elapsed < 1.5


def test_silent_server_hits_the_read_timeout() -> None:
    media = settings(read_timeout_s=0.5)
    with raw_server(silent) as port:
        started = time.monotonic()
        message = refusal(f"http://127.0.0.1:{port}/a.png", media=media)
        elapsed = time.monotonic() - started
    assert (
        message == "Failed to download multimodal content. The server sent nothing for 0.5 seconds."
    )
    assert elapsed < 1.5


DRIP = (
    "Failed to download multimodal content. "
    "The server sent the file slower than 1000 bytes a second."
)


def test_dripping_body_is_cut_below_the_minimum_rate() -> None:
    # 5 bytes a second is far below the floor; only the floor's grace lets it run at all.
    media = settings(min_rate=1000, min_rate_grace_s=0.5, total_timeout_s=30, read_timeout_s=5)
    with raw_server(trickle) as port:
        started = time.monotonic()
        message = refusal(f"http://127.0.0.1:{port}/video.mp4", media=media)
        elapsed = time.monotonic() - started
    assert message == DRIP
    assert 0.4 < elapsed < 2


def test_dripping_headers_are_cut_below_the_minimum_rate() -> None:
    media = settings(min_rate=1000, min_rate_grace_s=0.5, total_timeout_s=30, read_timeout_s=5)
    with raw_server(slow_headers) as port:
        started = time.monotonic()
        message = refusal(f"http://127.0.0.1:{port}/a.png", media=media)
        elapsed = time.monotonic() - started
    assert message == DRIP
    assert elapsed < 2


def test_a_slow_download_above_the_floor_completes(server: MediaServer) -> None:
    # About 64 KiB/s for one second, against a floor of 16 KiB/s after a grace shorter than
    # the download: the floor moves ahead of the clock with every byte that arrives.
    media = settings(min_rate=16384, min_rate_grace_s=0.2)
    assert fetch(server.url("/steady"), media=media) == bytes(64 * 1024)


def test_no_floor_when_the_minimum_rate_is_zero() -> None:
    media = settings(min_rate=0, min_rate_grace_s=0.1, total_timeout_s=1, read_timeout_s=0.5)
    with raw_server(trickle) as port:
        message = refusal(f"http://127.0.0.1:{port}/video.mp4", media=media)
    assert message.endswith("The download took longer than 1 seconds.")


def test_one_caller_cannot_take_every_download_slot(server: MediaServer) -> None:
    # Two slots in the server, one per caller: a caller with three held downloads holds one
    # slot, and another caller's download still goes through at once.
    fetcher = MediaFetcher(settings(fetch_concurrency=2, caller_concurrency=1))

    async def run() -> tuple[list[bytes], int]:
        try:
            hogs = [
                asyncio.create_task(
                    fetcher.fetch(server.url("/hold"), max_bytes=100, caller="key:hog")
                )
                for _ in range(3)
            ]
            assert await asyncio.to_thread(server.held.wait, 5)
            await asyncio.sleep(0.2)  # time for the hog's others to reach the server, if let
            other = await asyncio.wait_for(
                fetcher.fetch(server.url("/small"), max_bytes=100, caller="key:other"), 3
            )
            held = server.holding
            server.release.set()
            return [other, *await asyncio.gather(*hogs)], held
        finally:
            server.release.set()
            await fetcher.close()

    fetched, held = asyncio.run(run())
    assert fetched == [SMALL] * 4
    assert held == 1  # the hog's other two waited on its own cap, holding no server slot
    assert len(fetcher._callers) == 0  # callers are forgotten once their downloads end


def test_caller_cap_never_exceeds_the_server_cap(server: MediaServer) -> None:
    fetcher = MediaFetcher(settings(fetch_concurrency=1, caller_concurrency=8))

    async def run() -> list[bytes]:
        try:
            urls = [server.url("/slow")] * 3
            return await asyncio.gather(
                *(fetcher.fetch(u, max_bytes=100, caller="key:a") for u in urls)
            )
        finally:
            await fetcher.close()

    assert asyncio.run(run()) == [SMALL] * 3
    assert server.max_active == 1


def test_closed_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    message = refusal(f"http://127.0.0.1:{port}/a.png")
    assert message == "Failed to download multimodal content. Could not connect to 127.0.0.1."


# --- TLS: the name is the SNI and the certificate is verified -----------------------------------


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = time.time()
    import datetime as dt

    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - 60, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(now + 3600, dt.UTC))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_tls_uses_the_name_and_verifies_the_certificate(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path, "media.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    sni: list[str | None] = []

    def record_sni(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        sni.append(name)

    context.sni_callback = record_sni  # type: ignore[assignment]

    def handshake(conn: socket.socket, stop: threading.Event) -> None:
        with conn, suppress(OSError):  # the client refuses the certificate mid-handshake
            context.wrap_socket(conn, server_side=True).close()

    resolver = StaticResolver({"media.test": ["127.0.0.1"]})
    media = settings(allow_hosts=["media.test"])
    with raw_server(handshake) as port:
        message = refusal(f"https://media.test:{port}/a.png", media=media, resolver=resolver)
    assert message == f"{FAILED} The certificate of media.test could not be verified."
    assert sni == ["media.test"]
