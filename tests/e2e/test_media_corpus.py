"""A corpus of bad media, each refused over HTTP with the status, code and message it must get.

Broken and hostile files are made here with Pillow, ffmpeg and espeak-ng; URLs point at servers
on 127.0.0.1 (allowlisted) or at names that resolve, through a static table, to addresses that
must be refused by resolution alone: no traffic goes anywhere but loopback.
"""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from helpers import LiveServer, fast_settings, live_server
from omniserve.media.resolve import StaticResolver

INVALID_URL = (
    "<400> InternalError.Algo.InvalidParameter: The provided URL does not appear to be valid. "
    "Ensure it is correctly formatted."
)
IMAGE_DECODE = "Failed to decode the image during the data inspection."
IMAGE_SIZE = "The image length and width do not meet the model restrictions."
AUDIO_ILLEGAL = "The audio format is illegal and cannot be opened."
AUDIO_WHY = "The audio modality input does not meet the requirements because: "
VIDEO_WHY = "The video modality input does not meet the requirements because: "
FAILED = "Failed to download multimodal content."


def not_public(host: str, ip: str) -> str:
    return f"{FAILED} The host {host} resolves to {ip}, which is not a public address."


# -- files --------------------------------------------------------------------------------------


def image(width: int, height: int, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 200)).save(out, format=fmt)
    return out.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring a huge image, with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def ffmpeg(out: Path, *args: str) -> bytes:
    subprocess.run(
        ["ffmpeg", "-y", "-loglevel", "error", *args, str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out.read_bytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("corpus")
    sine = ["-f", "lavfi", "-i", "sine=frequency=300:duration=3"]
    wav = ffmpeg(tmp / "a.wav", *sine)
    out = {
        "jpeg": image(320, 240, "JPEG"),
        "png": image(320, 240, "PNG"),
        "webp": image(320, 240, "WEBP"),
        "tiff": image(320, 240, "TIFF"),
        "bmp": image(320, 240, "BMP"),
        "gif": image(320, 240, "GIF"),
        "tall": image(1, 20000, "PNG"),
        "tiny": image(10, 10, "PNG"),
        "wide": image(2211, 11, "PNG"),
        "webp5k": image(5000, 3000, "WEBP"),
        "bomb": png_bomb(50_000, 50_000),
        "wav": wav,
        "mp3": ffmpeg(tmp / "a.mp3", *sine),
        "flac": ffmpeg(tmp / "a.flac", *sine),
        "ogg": ffmpeg(tmp / "a.ogg", *sine, "-c:a", "libvorbis"),
        "empty_wav": ffmpeg(
            tmp / "e.wav", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0"
        ),
        "long_audio": ffmpeg(
            tmp / "long.mp3",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=8000:cl=mono",
            "-t",
            "181",
            "-b:a",
            "8k",
        ),
        "mp4": ffmpeg(
            tmp / "v.mp4",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=5:duration=3",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ),
        "audio_only_mp4": ffmpeg(tmp / "ao.mp4", *sine, "-c:a", "aac"),
        "long_video": ffmpeg(
            tmp / "lv.mp4",
            "-f",
            "lavfi",
            "-i",
            "color=c=blue:size=64x64:rate=1:duration=41",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ),
        "html": b"<!doctype html><html><body>Not found</body></html>",
        "noise": bytes(range(256)) * 64,
    }
    return out


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def after_header(data: bytes, keep: int = 64) -> bytes:
    """The first bytes of a real file followed by noise: a corrupt body behind a valid header."""
    return data[:keep] + bytes((i * 7919) % 251 for i in range(len(data) - keep))


def data_url(data: bytes, mime: str = "") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# -- servers on 127.0.0.1 -----------------------------------------------------------------------


class Files(ThreadingHTTPServer):
    """Serves fixtures; /redirect/<port>/<path> redirects to 127.0.0.2:<port>/<path>."""

    def __init__(self, table: dict[str, bytes]) -> None:
        table_ref = table

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/loop"):
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.end_headers()
                    return
                if self.path.startswith("/to-127.0.0.2/"):
                    self.send_response(302)
                    port = self.server.server_address[1]
                    self.send_header("Location", f"http://127.0.0.2:{port}/png")
                    self.end_headers()
                    return
                body = table_ref.get(self.path.strip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The fetcher hangs up on a file over its cap as soon as it sees the length.
                with contextlib.suppress(ConnectionError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Trickler:
    """Accepts connections; sends headers then a byte at a time, or nothing at all."""

    def __init__(self, *, silent: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.silent = silent
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/img.png"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                if self.silent:
                    self.stop.wait(10)
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n")
                while not self.stop.is_set():
                    conn.sendall(b"x")
                    time.sleep(0.1)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture(scope="module")
def env(files: dict[str, bytes]) -> Iterator[dict[str, Any]]:
    table = dict(files)
    table["big"] = b"\xff\xd8\xff" + b"\0" * (10 * 1024 * 1024 + 10)
    served = Files(table)
    trickle, silent = Trickler(silent=False), Trickler(silent=True)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens here now
    resolver = StaticResolver({
        "private.test": ["10.0.0.5"], "home.test": ["192.168.1.1"], "corp.test": ["172.16.0.1"],
        "metadata.test": ["169.254.169.254"], "cgnat.test": ["100.64.0.1"],
        "multicast.test": ["224.0.0.1"], "v6loop.test": ["::1"], "v6link.test": ["fe80::1"],
        "v6ula.test": ["fd00::1"], "mapped.test": ["::ffff:10.0.0.1"],
        "zero.test": ["0.0.0.0"], "mixed.test": ["93.184.216.34", "10.1.2.3"],
    })  # fmt: skip
    settings = fast_settings(
        media={
            "allow_hosts": ["127.0.0.1/32"],
            "total_timeout_s": 1.5,
            "read_timeout_s": 0.6,
            "connect_timeout_s": 1.0,
        }
    )
    with live_server(settings, resolver=resolver) as server:
        yield {
            "server": server,
            "base": served.base,
            "trickle": trickle.url,
            "silent": silent.url,
            "closed": f"http://127.0.0.1:{closed_port}/x.png",
        }
    trickle.close()
    silent.close()
    served.shutdown()
    served.server_close()


# -- the corpus ---------------------------------------------------------------------------------

Part = Callable[[dict[str, bytes], dict[str, Any]], dict[str, Any]]


def img(url: Callable[[dict[str, bytes], dict[str, Any]], str]) -> Part:
    return lambda f, e: {"type": "image_url", "image_url": {"url": url(f, e)}}


def aud(data: Callable[[dict[str, bytes], dict[str, Any]], str]) -> Part:
    return lambda f, e: {"type": "input_audio", "input_audio": {"data": data(f, e)}}


def vid(url: Callable[[dict[str, bytes], dict[str, Any]], str]) -> Part:
    return lambda f, e: {"type": "video_url", "video_url": {"url": url(f, e)}}


def frames(urls: Callable[[dict[str, bytes], dict[str, Any]], list[str]]) -> Part:
    return lambda f, e: {"type": "video", "video": urls(f, e)}


def host(label: str, name: str, ip: str) -> tuple[str, Part, str, str]:
    return label, img(lambda f, e: f"http://{name}/a.png"), "", not_public(name, ip)


def png_frames(n: int) -> Callable[[dict[str, bytes], dict[str, Any]], list[str]]:
    return lambda f, e: [data_url(f["png"], "image/png")] * n


FRAMES_FLASH = VIDEO_WHY + "the range of sequence images shoule be (2, 128)."
FRAMES_TURBO = VIDEO_WHY + "the range of sequence images shoule be (4, 80)."

CORPUS: list[tuple[str, Part, str, str]] = [
    # images by data URL
    ("image: empty data URL", img(lambda f, e: "data:image/png;base64,"), "", IMAGE_DECODE),
    ("image: HTML", img(lambda f, e: data_url(f["html"], "image/png")), "", IMAGE_DECODE),
    ("image: noise", img(lambda f, e: data_url(f["noise"])), "", IMAGE_DECODE),
    ("image: truncated JPEG", img(lambda f, e: data_url(half(f["jpeg"]))), "", IMAGE_DECODE),
    ("image: truncated PNG", img(lambda f, e: data_url(half(f["png"]))), "", IMAGE_DECODE),
    ("image: truncated WEBP", img(lambda f, e: data_url(half(f["webp"]))), "", IMAGE_DECODE),
    ("image: truncated TIFF", img(lambda f, e: data_url(half(f["tiff"]))), "", IMAGE_DECODE),
    ("image: truncated BMP", img(lambda f, e: data_url(half(f["bmp"]))), "", IMAGE_DECODE),
    (
        "image: corrupt JPEG body",
        img(lambda f, e: data_url(after_header(f["jpeg"], 20))),
        "",
        IMAGE_DECODE,
    ),
    ("image: GIF is not a listed format", img(lambda f, e: data_url(f["gif"])), "", IMAGE_DECODE),
    ("image: 1x20000", img(lambda f, e: data_url(f["tall"])), "", IMAGE_SIZE),
    ("image: 10x10", img(lambda f, e: data_url(f["tiny"])), "", IMAGE_SIZE),
    ("image: aspect 201", img(lambda f, e: data_url(f["wide"])), "", IMAGE_SIZE),
    (
        "image: 50000x50000 PNG bomb",
        img(lambda f, e: data_url(f["bomb"])),
        "",
        "The image has 50000x50000 pixels, more than the 64000000 this server decodes.",
    ),
    (
        "image: 5000x3000 WEBP above 4K",
        img(lambda f, e: data_url(f["webp5k"])),
        "",
        "Images larger than 4K must be JPEG or PNG.",
    ),
    ("image: invalid base64", img(lambda f, e: "data:image/png;base64,iVBO!!!!"), "", INVALID_URL),
    (
        "image: 12 MB data URL",
        img(lambda f, e: "data:image/png;base64," + "A" * 12_000_000),
        "",
        "Exceeded limit on max bytes per data-uri item : 10485760'.",
    ),
    ("image: data URL without base64", img(lambda f, e: "data:image/png,abc"), "", INVALID_URL),
    # image URLs
    ("url: file://", img(lambda f, e: "file:///etc/passwd"), "", INVALID_URL),
    ("url: ftp://", img(lambda f, e: "ftp://127.0.0.1/a.png"), "", INVALID_URL),
    ("url: gopher://", img(lambda f, e: "gopher://127.0.0.1/a"), "", INVALID_URL),
    ("url: javascript:", img(lambda f, e: "javascript:alert(1)"), "", INVALID_URL),
    (
        "url: credentials",
        img(lambda f, e: e["base"].replace("//", "//u:p@") + "/png"),
        "",
        INVALID_URL,
    ),
    ("url: HTML page", img(lambda f, e: f"{e['base']}/html"), "", IMAGE_DECODE),
    (
        "url: 404",
        img(lambda f, e: f"{e['base']}/missing"),
        "",
        f"{FAILED} The server answered HTTP 404.",
    ),
    (
        "url: over 10 MB",
        img(lambda f, e: f"{e['base']}/big"),
        "",
        f"{FAILED} The file is larger than 10485760 bytes.",
    ),
    (
        "url: redirect loop",
        img(lambda f, e: f"{e['base']}/loop"),
        "",
        f"{FAILED} More than 5 redirects.",
    ),
    (
        "url: redirect to loopback outside the allowlist",
        img(lambda f, e: f"{e['base']}/to-127.0.0.2/"),
        "",
        not_public("127.0.0.2", "127.0.0.2"),
    ),
    (
        "url: decimal IP literal",
        img(lambda f, e: "http://2130706434/a.png"),
        "",
        not_public("2130706434", "127.0.0.2"),
    ),
    (
        "url: hex IP literal",
        img(lambda f, e: "http://0x7f.0.0.2/a.png"),
        "",
        not_public("0x7f.0.0.2", "127.0.0.2"),
    ),
    (
        "url: unresolvable host",
        img(lambda f, e: "http://nowhere.test/a.png"),
        "",
        f"{FAILED} The host nowhere.test could not be resolved.",
    ),
    (
        "url: server trickles forever",
        img(lambda f, e: e["trickle"]),
        "",
        f"{FAILED} The download took longer than 1.5 seconds.",
    ),
    (
        "url: server never answers",
        img(lambda f, e: e["silent"]),
        "",
        f"{FAILED} The server sent nothing for 0.6 seconds.",
    ),
    (
        "url: nothing listening",
        img(lambda f, e: e["closed"]),
        "",
        f"{FAILED} Could not connect to 127.0.0.1.",
    ),
    host("host: private 10/8", "private.test", "10.0.0.5"),
    host("host: private 192.168/16", "home.test", "192.168.1.1"),
    host("host: private 172.16/12", "corp.test", "172.16.0.1"),
    host("host: metadata 169.254.169.254", "metadata.test", "169.254.169.254"),
    host("host: CGNAT", "cgnat.test", "100.64.0.1"),
    host("host: multicast", "multicast.test", "224.0.0.1"),
    host("host: IPv6 loopback", "v6loop.test", "::1"),
    host("host: IPv6 link-local", "v6link.test", "fe80::1"),
    host("host: IPv6 ULA", "v6ula.test", "fd00::1"),
    host("host: IPv4-mapped private", "mapped.test", str(ip_address("::ffff:10.0.0.1"))),
    host("host: 0.0.0.0", "zero.test", "0.0.0.0"),
    host("host: one public, one private address", "mixed.test", "10.1.2.3"),
    # audio
    ("audio: empty WAV", aud(lambda f, e: data_url(f["empty_wav"])), "", "The audio is empty"),
    ("audio: HTML", aud(lambda f, e: data_url(f["html"])), "", AUDIO_ILLEGAL),
    ("audio: noise", aud(lambda f, e: data_url(f["noise"])), "", AUDIO_ILLEGAL),
    ("audio: PNG", aud(lambda f, e: data_url(f["png"])), "", AUDIO_ILLEGAL),
    ("audio: MP4 without sound", aud(lambda f, e: data_url(f["mp4"])), "", AUDIO_ILLEGAL),
    ("audio: corrupt MP3 body", aud(lambda f, e: data_url(b"\0" * 4096)), "", AUDIO_ILLEGAL),
    ("audio: zero-length bare base64", aud(lambda f, e: "===="), "", INVALID_URL),
    ("audio: invalid bare base64", aud(lambda f, e: "not base64 at all!"), "", INVALID_URL),
    (
        "audio: over 3 minutes on turbo",
        aud(lambda f, e: data_url(f["long_audio"])),
        "qwen-omni-turbo",
        AUDIO_WHY + "The audio file is too long.",
    ),
    ("audio: URL of an HTML page", aud(lambda f, e: f"{e['base']}/html"), "", AUDIO_ILLEGAL),
    (
        "audio: from a private host",
        aud(lambda f, e: "http://private.test/a.mp3"),
        "",
        not_public("private.test", "10.0.0.5"),
    ),
    # video files
    (
        "video: audio-only MP4",
        vid(lambda f, e: data_url(f["audio_only_mp4"])),
        "",
        VIDEO_WHY + "The video has no frames.",
    ),
    (
        "video: noise",
        vid(lambda f, e: data_url(f["noise"])),
        "",
        VIDEO_WHY + "The video file cannot be decoded.",
    ),
    (
        "video: HTML",
        vid(lambda f, e: data_url(f["html"])),
        "",
        VIDEO_WHY + "The video file cannot be decoded.",
    ),
    (
        "video: WAV",
        vid(lambda f, e: data_url(f["wav"])),
        "",
        VIDEO_WHY + "The video file cannot be decoded.",
    ),
    (
        "video: 41 s on turbo",
        vid(lambda f, e: data_url(f["long_video"])),
        "qwen-omni-turbo",
        VIDEO_WHY + "The video file is too long.",
    ),
    ("video: ftp URL", vid(lambda f, e: "ftp://127.0.0.1/v.mp4"), "", INVALID_URL),
    (
        "video: from a metadata host",
        vid(lambda f, e: "http://metadata.test/v.mp4"),
        "",
        not_public("metadata.test", "169.254.169.254"),
    ),
    # frame lists
    ("frames: 1 on flash", frames(png_frames(1)), "", FRAMES_FLASH),
    ("frames: 129 on flash", frames(png_frames(129)), "", FRAMES_FLASH),
    ("frames: 3 on turbo", frames(png_frames(3)), "qwen-omni-turbo", FRAMES_TURBO),
    ("frames: 81 on turbo", frames(png_frames(81)), "qwen-omni-turbo", FRAMES_TURBO),
    (
        "frames: a corrupt frame",
        frames(lambda f, e: [data_url(f["png"])] * 3 + [data_url(half(f["png"]))]),
        "",
        IMAGE_DECODE,
    ),
    (
        "frames: a frame from a private host",
        frames(lambda f, e: [data_url(f["png"])] * 3 + ["http://home.test/f.png"]),
        "",
        not_public("home.test", "192.168.1.1"),
    ),
    ("frames: a file:// frame", frames(lambda f, e: ["file:///etc/passwd"] * 4), "", INVALID_URL),
]


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 60


@pytest.mark.parametrize(
    ("part", "model", "message"),
    [pytest.param(p, m, msg, id=name) for name, p, m, msg in CORPUS],
)
def test_bad_media_is_a_clear_400(
    env: dict[str, Any], files: dict[str, bytes], part: Part, model: str, message: str
) -> None:
    server: LiveServer = env["server"]
    body = {
        "model": model or "qwen3-omni-flash",
        "stream": True,
        "messages": [
            {"role": "user", "content": [part(files, env), {"type": "text", "text": "?"}]}
        ],
    }
    r = httpx.post(f"{server.api}/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    payload = r.json()
    assert payload["error"]["code"] == "invalid_parameter_error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["message"] == message
    assert payload["request_id"] == r.headers["x-request-id"]


def test_good_files_of_every_format_still_pass(
    env: dict[str, Any], files: dict[str, bytes]
) -> None:
    """The corpus's sources, unbroken, are accepted: the refusals are about the damage."""
    server: LiveServer = env["server"]
    parts = [
        *(
            {"type": "image_url", "image_url": {"url": data_url(files[k])}}
            for k in ("jpeg", "png", "webp", "tiff", "bmp")
        ),
    ]
    audio = [
        {"type": "input_audio", "input_audio": {"data": data_url(files[k])}}
        for k in ("wav", "mp3", "flac", "ogg")
    ]
    video = [{"type": "video_url", "video_url": {"url": data_url(files["mp4"])}}]
    for part in [*parts, *audio, *video]:
        body = {
            "model": "qwen3-omni-flash",
            "stream": True,
            "messages": [{"role": "user", "content": [part, {"type": "text", "text": "?"}]}],
        }
        with httpx.stream("POST", f"{server.api}/chat/completions", json=body, timeout=30) as r:
            assert r.status_code == 200, (part["type"], r.read())
            assert r.read().endswith(b"data: [DONE]\n\n")


def test_a_slow_url_does_not_stall_other_requests(env: dict[str, Any]) -> None:
    """While one request waits on a trickling server, others are served to the end."""
    server: LiveServer = env["server"]
    slow_body = {"model": "qwen3-omni-flash", "stream": True, "messages": [{"role": "user",
                 "content": [{"type": "image_url", "image_url": {"url": env["trickle"]}},
                             {"type": "text", "text": "?"}]}]}  # fmt: skip
    finished: list[str] = []

    def slow() -> None:
        httpx.post(f"{server.api}/chat/completions", json=slow_body, timeout=30)
        finished.append("slow")

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.2)  # the slow request is now waiting on the trickler
    for _ in range(3):
        body = {
            "model": "qwen3-omni-flash",
            "stream": True,
            "messages": [{"role": "user", "content": "hello"}],
        }
        with httpx.stream("POST", f"{server.api}/chat/completions", json=body) as r:
            assert r.read().endswith(b"data: [DONE]\n\n")
        finished.append("fast")
    thread.join(30)
    assert finished == ["fast", "fast", "fast", "slow"]
