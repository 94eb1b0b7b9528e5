"""The upstream engine against real HTTP servers on 127.0.0.1 speaking vLLM-Omni's, Model
Studio's and OpenAI's dialects, with their quirks, driven through omniserve."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import numpy as np

from engines.upstream.fakes import Behaviour, FakeUpstream, Kind, wait_until
from helpers import LiveServer, fast_settings, live_server, read_sse, stream_reply

MODEL = "qwen3-omni-flash"
TEXT = Behaviour().text


@contextmanager
def relay(*fakes: FakeUpstream, kind: Kind | None = None, **spec: Any) -> Iterator[LiveServer]:
    upstream = {
        "name": "up",
        "kind": kind or fakes[0].kind,
        "base_urls": [f.base_url for f in fakes],
        "models": {MODEL: "fake-model"},
        "health_path": "",
        **spec,
    }
    with live_server(fast_settings(engine="upstream", upstream={"upstreams": [upstream]})) as s:
        yield s


def _speak(server: LiveServer, **extra: Any) -> dict[str, Any]:
    return stream_reply(
        server, model=MODEL, messages=[{"role": "user", "content": "Hello!"}], **extra
    )


AUDIO = {"modalities": ["text", "audio"], "audio": {"voice": "Cherry", "format": "wav"}}


def _pitch(pcm: bytes) -> float:
    x = np.frombuffer(pcm, "<i2").astype(float)
    return float(np.argmax(np.abs(np.fft.rfft(x))) * 24_000 / len(x))


# -- dialects -------------------------------------------------------------------------------


def test_vllm_omni_speech_at_16_khz_becomes_24_khz_pcm() -> None:
    with (
        FakeUpstream("vllm-omni", Behaviour(audio_rate=16_000, audio_seconds=1.0)) as fake,
        relay(fake, audio_rate=16_000) as server,
    ):
        reply = _speak(server, **AUDIO)
        sent = fake.requests[-1]["body"]
    assert reply["text"] == TEXT
    assert abs(len(reply["audio"]) // 2 - 24_000) <= 48  # 1 s at 24 kHz
    assert abs(_pitch(reply["audio"]) - 440) < 3
    assert sent["voice"] == "chelsie" and sent["audio"] == {"format": "pcm16"}
    assert sent["modalities"] == ["text", "audio"]
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    usage = reply["usage"]
    assert usage["completion_tokens_details"]["audio_tokens"] == 13  # added from the duration


def test_vllm_omni_one_late_audio_delta_is_rechunked() -> None:
    behaviour = Behaviour(audio_at_end=True, audio_seconds=2.0)
    with FakeUpstream("vllm-omni", behaviour) as fake, relay(fake) as server:
        reply = _speak(server, **AUDIO)
    assert len(reply["audio"]) == 2 * 48_000
    assert reply["chunks"] == 10  # 200 ms chunks


def test_dashscope_reasoning_and_usage_pass_through() -> None:
    behaviour = Behaviour(reasoning="Let me think about it.", audio_seconds=0)
    with FakeUpstream("dashscope", behaviour) as fake, relay(fake) as server:
        reply = _speak(server, extra_body={"enable_thinking": True})
        sent = fake.requests[-1]["body"]
    assert reply["reasoning"] == "Let me think about it."
    assert reply["text"] == TEXT
    assert sent["enable_thinking"] is True
    details = reply["usage"]["completion_tokens_details"]
    assert details["reasoning_tokens"] >= 1 and details["text_tokens"] >= 1


def test_openai_transcripts_become_content_and_audio_comes_through() -> None:
    with (
        FakeUpstream("openai", Behaviour(audio_seconds=0.5)) as fake,
        relay(fake, voices={"Cherry": "coral"}) as server,
    ):
        reply = _speak(server, **AUDIO)
        sent = fake.requests[-1]["body"]
    assert reply["text"] == TEXT
    assert len(reply["audio"]) == 24_000  # 0.5 s
    assert sent["audio"] == {"voice": "coral", "format": "pcm16"}


def test_a_text_only_upstream_gets_omniserves_own_speech() -> None:
    with (
        FakeUpstream("openai", Behaviour(audio_seconds=0)) as fake,
        relay(fake, audio_output=False) as server,
    ):
        reply = _speak(server, **AUDIO)
        sent = fake.requests[-1]["body"]
    assert sent["modalities"] == ["text"]
    assert reply["text"] == TEXT and len(reply["audio"]) > 24_000  # espeak-ng spoke it


# -- errors ---------------------------------------------------------------------------------


def _post(server: LiveServer, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    return httpx.post(f"{server.api}/chat/completions", json={**body, **extra}, timeout=30)


def test_an_error_mid_stream_becomes_an_error_event() -> None:
    with FakeUpstream("vllm-omni", Behaviour(error_after_chunks=3)) as fake, relay(fake) as s:
        r = _post(s)
    events = read_sse(iter(r.text.splitlines()))
    assert r.status_code == 200
    assert any(isinstance(e, dict) and e.get("choices") for e in events)
    error = events[-2]["error"]
    assert error["code"] == "ServiceUnavailable" and "fake upstream failed" in error["message"]
    assert events[-1] == "[DONE]"


def test_upstream_refusals_map_to_the_envelope() -> None:
    cases = [("dashscope", 400, 400, "invalid_parameter_error"),
             ("vllm-omni", 400, 400, "invalid_parameter_error"),
             ("openai", 401, 503, "ServiceUnavailable"),
             ("vllm-omni", 500, 503, "ServiceUnavailable"),
             ("openai", 429, 429, "limit_requests")]  # fmt: skip
    for kind, status, expected, code in cases:
        with FakeUpstream(kind, Behaviour(status=status)) as fake, relay(fake) as server:
            r = _post(server)
        assert r.status_code == expected, (kind, status, r.text)
        assert r.json()["error"]["code"] == code
        if expected == 429:
            assert "retry-after" in r.headers
        if status == 401:
            assert "Unauthorized" not in r.text and "key" not in r.json()["error"]["message"]


# -- replicas -------------------------------------------------------------------------------


def test_a_replica_that_dies_before_the_first_byte_is_stepped_around() -> None:
    with ExitStack() as stack:
        dying = stack.enter_context(FakeUpstream("vllm-omni", Behaviour(die_after_chunks=1)))
        good = stack.enter_context(FakeUpstream("vllm-omni"))
        server = stack.enter_context(relay(dying, good))
        for _ in range(3):
            assert _speak(server)["text"] == TEXT
        assert dying.started >= 1 and good.finished == 3


def test_a_replica_that_dies_after_the_first_byte_ends_the_stream_with_an_error() -> None:
    with ExitStack() as stack:
        dying = stack.enter_context(FakeUpstream("vllm-omni", Behaviour(die_after_chunks=4)))
        server = stack.enter_context(relay(dying))
        r = _post(server)
    events = read_sse(iter(r.text.splitlines()))
    assert r.status_code == 200
    assert events[-2]["error"]["code"] == "ServiceUnavailable"


def test_a_replica_that_never_answers_times_out_and_another_serves() -> None:
    with ExitStack() as stack:
        silent = stack.enter_context(FakeUpstream("openai", Behaviour(hang=True)))
        good = stack.enter_context(FakeUpstream("openai"))
        server = stack.enter_context(relay(silent, good, first_byte_timeout_s=0.5))
        assert _speak(server)["text"] == TEXT
        wait_until(lambda: silent.disconnected >= 1)  # its request was abandoned, not leaked


def test_a_dead_replica_opens_its_circuit() -> None:
    with ExitStack() as stack:
        dead = stack.enter_context(FakeUpstream("vllm-omni"))
        good = stack.enter_context(FakeUpstream("vllm-omni"))
        dead.stop_serving()
        server = stack.enter_context(relay(dead, good, failure_threshold=2, cooldown_s=60))
        engine: Any = server.service.engine
        for _ in range(6):
            assert _speak(server)["text"] == TEXT
        replica = engine.sets["up"].replicas[0]
        assert replica.open_until > 0 and replica.failures == 2  # tried twice, then left alone
        assert good.finished == 6


def test_streams_are_balanced_over_replicas() -> None:
    slow = Behaviour(chunk_delay_s=0.05)
    with ExitStack() as stack:
        a = stack.enter_context(FakeUpstream("dashscope", slow))
        b = stack.enter_context(FakeUpstream("dashscope", slow))
        server = stack.enter_context(relay(a, b))
        threads = [threading.Thread(target=_speak, args=(server,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert a.finished == b.finished == 3


def test_a_client_that_leaves_closes_the_upstream_stream() -> None:
    slow = Behaviour(chunk_delay_s=0.2, text="word " * 60)
    with FakeUpstream("vllm-omni", slow) as fake, relay(fake) as server:
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
        with httpx.stream("POST", f"{server.api}/chat/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        wait_until(lambda: fake.disconnected == 1)
        assert fake.finished == 0


def test_the_key_comes_from_its_environment_variable(monkeypatch: Any) -> None:
    monkeypatch.setenv("OMNISERVE_TEST_UPSTREAM_KEY", "sk-upstream-secret")
    with (
        FakeUpstream("openai") as fake,
        relay(fake, api_key_env="OMNISERVE_TEST_UPSTREAM_KEY") as s,
    ):
        _speak(s)
        assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-upstream-secret"


def test_after_a_failure_a_successful_stream_closes_the_circuit_again() -> None:
    """A replica that failed once and then served a stream takes concurrent streams again
    (success used to be lost when the client closed the stream after its last event)."""
    with FakeUpstream("openai", Behaviour(status=500)) as fake, relay(fake) as server:
        assert _post(server).status_code == 503
        fake.behaviour.status = 200
        assert _speak(server)["text"] == TEXT
        replica = server.service.engine.sets["up"].replicas[0]  # type: ignore[attr-defined]
        # The server records the success as it ends the stream, beside the client's last read.
        wait_until(lambda: replica.failures == 0)
        results: list[str] = []
        threads = [
            threading.Thread(target=lambda: results.append(_speak(server)["text"]))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [TEXT] * 8


def test_overload_is_refused_at_once_beyond_the_waiting_line() -> None:
    slow = Behaviour(chunk_delay_s=0.3)
    with FakeUpstream("openai", slow) as up, relay(up, max_connections=2, max_waiting=1) as s:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}

        def post() -> tuple[int, float, str]:
            started = time.monotonic()
            resp = httpx.post(f"{s.api}/chat/completions", json=body, timeout=60)
            return resp.status_code, time.monotonic() - started, resp.text

        with ThreadPoolExecutor(5) as pool:
            results = list(pool.map(lambda _: post(), range(5)))
        ok = [r for r in results if r[0] == 200]
        busy = [r for r in results if r[0] == 503]
        # Two stream, one waits for a connection and then streams, two are refused at once.
        assert len(ok) == 3 and len(busy) == 2, [r[:2] for r in results]
        assert all(elapsed < 1.0 for _, elapsed, _ in busy)
        assert all("Too many streams are open" in text for _, _, text in busy)
        assert up.started == 3
