"""Cassettes: chat completions recorded from a live engine, replayed byte for byte, with no
secret written down. Real servers on 127.0.0.1 throughout."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from engines.upstream.fakes import Behaviour, FakeUpstream
from helpers import LiveServer, chat_body, fast_settings, live_server, read_sse, stream_reply
from omniserve.api.app import create_app
from omniserve.cassettes import redact_url
from omniserve.errors import StartupError

MODEL = "qwen3-omni-flash"
AUDIO = {"modalities": ["text", "audio"], "audio": {"voice": "Cherry", "format": "wav"}}

Answer = tuple[int, httpx.Headers, bytes]


def _post(
    url: str,
    body: Any = None,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Status, headers and the body's bytes exactly as they came off the wire."""
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", url, json=body, content=content, headers=headers) as resp,
    ):
        return resp.status_code, resp.headers, b"".join(resp.iter_raw())


def _chat(server: LiveServer, body: Any, **kwargs: Any) -> Answer:
    return _post(f"{server.api}/chat/completions", body, **kwargs)


def _hello(text: str = "Hello there", **overrides: Any) -> dict[str, Any]:
    return chat_body(messages=[{"role": "user", "content": text}], **overrides)


def _cassettes(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text("utf-8")) for p in sorted(directory.glob("*.json"))]


def _played(cassette: dict[str, Any]) -> bytes:
    return b"".join(c["data"].encode() for c in cassette["response"]["chunks"])


@contextmanager
def recording(directory: Path, **settings: Any) -> Iterator[LiveServer]:
    with live_server(fast_settings(cassettes={"record": str(directory)}, **settings)) as s:
        yield s


@contextmanager
def replaying(directory: Path, pace: str = "fast", **settings: Any) -> Iterator[LiveServer]:
    cassettes = {"replay": str(directory), "replay_pace": pace}
    with live_server(fast_settings(cassettes=cassettes, **settings)) as s:
        yield s


@contextmanager
def relay(fake: FakeUpstream, directory: Path) -> Iterator[LiveServer]:
    """omniserve on the upstream engine, in front of ``fake``, recording."""
    upstream = {
        "name": "up",
        "kind": fake.kind,
        "base_urls": [fake.base_url],
        "models": {MODEL: "fake-model"},
        "health_path": "",
    }
    with recording(directory, engine="upstream", upstream={"upstreams": [upstream]}) as s:
        yield s


# -- record, then replay ------------------------------------------------------------------


def test_upstream_streams_replay_byte_for_byte(tmp_path: Path) -> None:
    text, spoken = _hello("Say hello"), _hello("Say hello aloud", **AUDIO)
    with (
        FakeUpstream("vllm-omni", Behaviour(audio_seconds=0.5)) as fake,
        relay(fake, tmp_path) as s,
    ):
        live = [_chat(s, text), _chat(s, spoken)]
    assert [status for status, _, _ in live] == [200, 200]
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == ["0001-say-hello.json", "0002-say-hello-aloud.json"]
    cassettes = _cassettes(tmp_path)
    for cassette, (_, headers, body) in zip(cassettes, live, strict=True):
        assert _played(cassette) == body  # every byte sent, in cassette chunks
        assert len(cassette["response"]["chunks"]) > 3
        assert cassette["response"]["headers"] == {
            "content-type": headers["content-type"],
            "x-request-id": headers["x-request-id"],
        }
    events = read_sse(iter(live[1][2].decode().splitlines()))
    assert any(e["choices"] and e["choices"][0]["delta"].get("audio") for e in events[:-1])

    with replaying(tmp_path) as s:
        replayed = [_chat(s, text), _chat(s, spoken)]
        # The same route under its other prefix, and a body written another way.
        spaced = json.dumps(text, indent=2).encode()
        json_type = {"content-type": "application/json"}
        other = _post(f"{s.base_url}/v1/chat/completions", content=spaced, headers=json_type)
    for (status, headers, body), (_, live_headers, live_body) in zip(replayed, live, strict=True):
        assert status == 200 and body == live_body
        assert headers["content-type"] == live_headers["content-type"]
        assert headers["x-request-id"] == live_headers["x-request-id"]
    assert other[0] == 200 and other[2] == live[0][2]


def test_the_emulator_records_too(tmp_path: Path) -> None:
    with recording(tmp_path) as s:
        status, _, body = _chat(s, _hello())
    assert status == 200
    (cassette,) = _cassettes(tmp_path)
    assert cassette["omniserve_cassette"] == 1
    assert cassette["request"]["path"] == "/compatible-mode/v1/chat/completions"
    assert cassette["request"]["method"] == "POST"
    assert cassette["request"]["body"] == _hello()
    assert cassette["response"]["status"] == 200
    assert _played(cassette) == body
    offsets = [c["at_ms"] for c in cassette["response"]["chunks"]]
    assert offsets == sorted(offsets) and offsets[0] >= 0
    assert (tmp_path / "0001-hello-there.json").read_text("utf-8").startswith('{\n "omniserve')


def test_identical_requests_take_their_cassettes_in_turn(tmp_path: Path) -> None:
    with recording(tmp_path) as s:
        first, second = _chat(s, _hello())[2], _chat(s, _hello())[2]
    assert first != second  # each has its own ids
    with replaying(tmp_path) as s:
        assert [_chat(s, _hello())[2] for _ in range(3)] == [first, second, first]


def test_a_dropped_connection_is_recorded_as_far_as_it_went(tmp_path: Path) -> None:
    received = b""
    with recording(tmp_path) as s:
        headers = {"X-Omniserve-Fault": "drop_after_chunks=2"}
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("POST", f"{s.api}/chat/completions", json=_hello(), headers=headers) as r,
        ):
            for piece in r.iter_raw():
                received += piece
    (cassette,) = _cassettes(tmp_path)
    assert len(cassette["response"]["chunks"]) == 2
    assert _played(cassette) == received
    assert cassette["request"]["headers"]["x-omniserve-fault"] == "drop_after_chunks=2"


def test_errors_are_recorded_and_replayed(tmp_path: Path) -> None:
    bad_voice = _hello(modalities=["text", "audio"], audio={"voice": "Nobody"})
    with recording(tmp_path) as s:
        status, headers, body = _chat(s, bad_voice)
    assert status == 400
    (cassette,) = _cassettes(tmp_path)
    assert cassette["response"]["status"] == 400
    assert cassette["response"]["chunks"][0]["data"] == body.decode()
    assert cassette["response"]["headers"]["x-request-id"] == headers["x-request-id"]
    with replaying(tmp_path) as s:
        again = _chat(s, bad_voice)
    assert again[0] == 400 and again[2] == body
    assert again[1]["content-type"] == "application/json"
    assert json.loads(body)["error"]["param"] == "audio.voice"


def test_the_openai_sdk_reads_a_replay(tmp_path: Path) -> None:
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story"}]}
    with recording(tmp_path) as s:
        live = stream_reply(s, **ask)
    with replaying(tmp_path) as s:
        replayed = stream_reply(s, **ask)
    assert live["text"] and live["usage"]
    assert replayed == live


# -- secrets ------------------------------------------------------------------------------


class _Images(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ImageHandler)
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
        self.png = buffer.getvalue()

    def url(self, query: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/cat.png?{query}"


class _ImageHandler(BaseHTTPRequestHandler):
    server: _Images

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.server.png)))
        self.end_headers()
        self.wfile.write(self.server.png)


@pytest.fixture
def images() -> Iterator[_Images]:
    server = _Images()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _look(url: str) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}]
    return chat_body(messages=[{"role": "user", "content": content}])


def test_secrets_never_reach_a_cassette(tmp_path: Path, images: _Images) -> None:
    signed = "Signature=sigSIGNATURE123&OSSAccessKeyId=xyzACCESSKEY&Expires=1&size=large"
    media = {"media": {"allow_hosts": ["127.0.0.1"]}}
    with recording(tmp_path, **media) as s:
        _, secret = s.accounts.store.create("app")
        headers = {
            "Authorization": f"Bearer {secret}",
            "X-Api-Key": "apikeyAPIKEY456",
            "Cookie": "session=cookieCOOKIE789",
        }
        status, _, live = _chat(s, _look(images.url(signed)), headers=headers)
    assert status == 200
    (path,) = tmp_path.glob("*.json")
    text = path.read_text("utf-8")
    for value in (secret, "apikeyAPIKEY456", "cookieCOOKIE789", "sigSIGNATURE", "xyzACCESSKEY"):
        assert value not in text
    cassette = json.loads(text)
    recorded = cassette["request"]["headers"]
    assert not {"authorization", "x-api-key", "cookie", "host", "content-length"} & set(recorded)
    assert recorded["content-type"] == "application/json"
    url = cassette["request"]["body"]["messages"][0]["content"][0]["image_url"]["url"]
    assert url == images.url(
        "Signature=REDACTED&OSSAccessKeyId=REDACTED&Expires=REDACTED&size=large"
    )

    with replaying(tmp_path) as s:
        _, key = s.accounts.store.create("app")
        resigned = "Signature=otherSIG&OSSAccessKeyId=otherKEY&Expires=99&size=large"
        status, _, replayed = _chat(
            s, _look(images.url(resigned)), headers={"Authorization": f"Bearer {key}"}
        )
        assert status == 200 and replayed == live
        # Authentication still applies to a replay.
        assert _chat(s, _look(images.url(resigned)))[0] == 401
        # The rest of the URL still counts.
        other = images.url(resigned.replace("large", "small"))
        status, _, body = _chat(s, _look(other), headers={"Authorization": f"Bearer {key}"})
        assert status == 400
        assert "messages[0].content[0].image_url.url" in json.loads(body)["error"]["message"]


def test_redacting_keeps_everything_but_credentials() -> None:
    url = "https://b.test/a.png?X-Amz-Date=2025&X-Amz-Credential=AK%2F1&w=3&sig=s#top"
    assert redact_url(url)[0] == (
        "https://b.test/a.png?X-Amz-Date=REDACTED&X-Amz-Credential=REDACTED&w=3&sig=REDACTED#top"
    )
    assert redact_url("https://b.test/a.png")[0] == "https://b.test/a.png"


# -- refusals -----------------------------------------------------------------------------


def test_an_unmatched_request_names_the_closest_cassette(tmp_path: Path) -> None:
    with recording(tmp_path) as s:
        _chat(s, _hello("Good morning"))
        _chat(s, _hello(modalities=["text", "audio"], audio={"voice": "Cherry"}))
    with replaying(tmp_path) as s:
        asked = _hello("Hello here", modalities=["text", "audio"], audio={"voice": "Ethan"})
        status, _, body = _chat(s, asked)
    assert status == 400
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_parameter_error"
    assert error["message"] == (
        "No cassette matches this request; the closest is 0002-hello-there.json, "
        "which differs at messages[0].content, audio.voice."
    )


def test_malformed_json_in_replay_is_the_servers_400(tmp_path: Path, server: LiveServer) -> None:
    with recording(tmp_path) as s:
        _chat(s, _hello())
    json_type = {"content-type": "application/json"}
    with replaying(tmp_path) as s:
        for broken in (b'{"model": ', b'{"a": NaN}', b"\xff\xfe"):
            status, _, body = _chat(s, None, content=broken, headers=json_type)
            usual = _chat(server, None, content=broken, headers=json_type)
            assert status == 400 == usual[0]
            assert json.loads(body)["error"] == json.loads(usual[2])["error"]
        status, _, body = _chat(s, None, content=b"[1, 2]", headers=json_type)
        assert status == 400 and "No cassette matches" in body.decode()


def test_fast_pace_does_not_wait_for_the_recorded_clock(tmp_path: Path) -> None:
    with recording(tmp_path, emulator={"tokens_per_second": 300, "first_token_ms": 100}) as s:
        _chat(s, _hello())
    (cassette,) = _cassettes(tmp_path)
    last_s = cassette["response"]["chunks"][-1]["at_ms"] / 1000
    assert last_s > 0.1
    durations = {}
    for pace in ("recorded", "fast"):
        with replaying(tmp_path, pace) as s:
            started = time.monotonic()
            status, _, body = _chat(s, _hello())
            durations[pace] = time.monotonic() - started
        assert status == 200 and body == _played(cassette)
    assert durations["recorded"] >= 0.8 * last_s
    assert durations["fast"] < durations["recorded"] / 3


def test_a_directory_that_cannot_be_replayed_stops_the_start(tmp_path: Path) -> None:
    def start() -> None:
        create_app(fast_settings(cassettes={"replay": str(tmp_path)}))

    with pytest.raises(StartupError, match="does not exist"):
        create_app(fast_settings(cassettes={"replay": str(tmp_path / "missing")}))
    (tmp_path / "0001-broken.json").write_text('{"omniserve_cassette": 1,', "utf-8")
    with pytest.raises(StartupError, match=r"0001-broken\.json.*not JSON"):
        start()
    (tmp_path / "0001-broken.json").write_text(
        json.dumps({"omniserve_cassette": 1, "request": {"path": "/v1/x", "body": {}}}), "utf-8"
    )
    with pytest.raises(StartupError, match=r"0001-broken\.json.*response"):
        start()
