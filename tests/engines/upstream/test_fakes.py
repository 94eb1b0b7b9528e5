"""The fake upstreams speak their dialects, and fail the ways the tests ask them to."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from engines.upstream.fakes import Behaviour, FakeUpstream, Kind, wait_until
from helpers import chat_body, read_sse

TEXT = "Hello from upstream. How are you today?"


def _body(**overrides: Any) -> dict[str, Any]:
    defaults = {"model": "m-1", "messages": [{"role": "user", "content": "Say hello, please."}]}
    return chat_body(**{**defaults, **overrides})


def _parse(lines: list[str]) -> list[Any]:
    return read_sse(iter(lines))


def _stream(up: FakeUpstream, body: dict[str, Any], **client: Any) -> list[Any]:
    with (
        httpx.Client(**client) as http,
        http.stream("POST", f"{up.base_url}/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return _parse(list(r.iter_lines()))


def _deltas(events: list[Any]) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in events if isinstance(e, dict) and e.get("choices")]


def _freq(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(samples))


def test_dashscope_streams_text_then_24k_audio_and_usage() -> None:
    behaviour = Behaviour(audio_seconds=0.5, audio_rate=16_000)  # dashscope ignores the rate
    with FakeUpstream("dashscope", behaviour) as up:
        assert up.base_url == f"{up.root}/compatible-mode/v1"
        body = _body(modalities=["text", "audio"], audio={"voice": "Cherry", "format": "wav"})
        events = _stream(up, body, headers={"Authorization": "Bearer k"})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["model"] == "m-1" and c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = _deltas(chunks)
    assert deltas[0] == {"content": "", "role": "assistant"}
    assert "".join(d.get("content") or "" for d in deltas) == TEXT
    audio = [d["audio"] for d in deltas if "audio" in d]
    assert len(audio) == 4 and all(set(a) == {"data", "expires_at", "id"} for a in audio)
    assert all(set(d) == {"audio"} for d in deltas if "audio" in d)  # in chunks of their own
    pcm = np.frombuffer(b"".join(base64.b64decode(a["data"]) for a in audio), "<i2")
    assert len(pcm) == 12_000  # 0.5 s at 24 kHz
    assert abs(_freq(pcm, 24_000) - 440) < 3
    assert 0.25 < np.abs(pcm).max() / 32767 < 0.31
    finish = chunks[-2]["choices"][0]
    assert finish["finish_reason"] == "stop" and finish["delta"] == {"content": ""}
    usage = chunks[-1]
    assert usage["choices"] == []
    details = usage["usage"]["completion_tokens_details"]
    assert details == {"text_tokens": 7, "audio_tokens": 7}  # 7 pieces; ceil(12.5 * 0.5)
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 14
    assert up.requests[0]["body"]["audio"] == {"voice": "Cherry", "format": "wav"}
    assert up.requests[0]["headers"]["authorization"] == "Bearer k"
    assert (up.started, up.finished, up.disconnected) == (1, 1, 0)


def test_dashscope_reasoning_only_when_thinking_is_asked() -> None:
    with FakeUpstream("dashscope", Behaviour(reasoning="Let me think.")) as up:
        plain = _deltas(_stream(up, _body(stream_options=None)))
        thinking = _deltas(_stream(up, _body(enable_thinking=True)))
    assert not any("reasoning_content" in d for d in plain)
    assert not any("audio" in d for d in plain)  # text-only request
    reasoning = [d for d in thinking if d.get("reasoning_content")]
    assert all(d["content"] is None for d in reasoning)
    assert "".join(d["reasoning_content"] for d in reasoning) == "Let me think."
    assert thinking.index(reasoning[-1]) < [d.get("content") for d in thinking].index("Hello ")


def test_vllm_omni_wav_per_chunk_at_the_upstream_rate() -> None:
    behaviour = Behaviour(audio_seconds=1.0, audio_rate=16_000, audio_chunks=3)
    with FakeUpstream("vllm-omni", behaviour) as up:
        assert up.base_url == f"{up.root}/v1"
        body = _body(modalities=["text", "audio"], voice="Ethan")
        events = _stream(up, body)
    chunks = events[:-1]
    content = [c for c in chunks if c.get("choices")]
    assert {c["modality"] for c in content} == {"text", "audio"}
    assert content[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"]["content"] for c in content if c["modality"] == "text")
    assert text == TEXT
    wavs = [base64.b64decode(c["choices"][0]["delta"]["content"]) for c in content
            if c["modality"] == "audio"]  # fmt: skip
    assert len(wavs) == 3 and all(w.startswith(b"RIFF") for w in wavs)
    parts = [sf.read(io.BytesIO(w), dtype="int16") for w in wavs]
    assert all(rate == 16_000 for _, rate in parts)
    samples = np.concatenate([p for p, _ in parts])
    assert len(samples) == 16_000 and abs(_freq(samples, 16_000) - 440) < 3
    finishes = [c["choices"][0]["finish_reason"] for c in content]
    assert finishes == [None] * (len(content) - 1) + ["stop"]
    usage = chunks[-1]
    assert usage["choices"] == [] and "modality" not in usage
    assert set(usage["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["usage"]["completion_tokens"] == 7  # text only


def test_vllm_omni_pcm16_is_headerless_and_can_come_all_at_the_end() -> None:
    behaviour = Behaviour(audio_seconds=0.5, audio_rate=22_050, audio_at_end=True)
    thinking = {"enable_thinking": True}
    with FakeUpstream("vllm-omni", behaviour) as up:
        body = _body(
            modalities=["text", "audio"], audio={"format": "pcm16"}, chat_template_kwargs=thinking
        )
        chunks = _stream(up, body)[:-1]
    content = [c for c in chunks if c.get("choices")]
    modalities = [c["modality"] for c in content]
    assert modalities == ["text"] * (len(content) - 1) + ["audio"]
    pcm = base64.b64decode(content[-1]["choices"][0]["delta"]["content"])
    assert not pcm.startswith(b"RIFF") and len(pcm) == 2 * round(0.5 * 22_050)
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("reasoning_content" in c["choices"][0]["delta"] for c in content)  # none set


def test_vllm_omni_rejects_unknown_voices_and_non_streaming() -> None:
    with FakeUpstream("vllm-omni") as up, httpx.Client() as http:
        url = f"{up.base_url}/chat/completions"
        bad_voice = http.post(url, json=_body(voice="Cherry"))
        not_streamed = http.post(url, json=_body(stream=False))
        assert up.started == 0 and len(up.requests) == 2
    for r in (bad_voice, not_streamed):
        assert r.status_code == 400
        error = r.json()
        assert error["object"] == "error" and error["type"] == "BadRequestError"
        assert error["code"] == 400 and error["param"] in ("voice", "stream")


def test_openai_puts_text_in_transcripts_when_audio_is_on() -> None:
    behaviour = Behaviour(audio_seconds=0.3, audio_rate=24_000, audio_chunks=2)
    with FakeUpstream("openai", behaviour) as up:
        spoken = _stream(up, _body(modalities=["text", "audio"], audio={"voice": "alloy"}))
        written = _stream(up, _body(stream_options=None))
    deltas = _deltas(spoken)
    assert all(d["content"] is None for d in deltas)
    audio = [d["audio"] for d in deltas if "audio" in d]
    assert "".join(a.get("transcript", "") for a in audio) == TEXT
    pcm = b"".join(base64.b64decode(a["data"]) for a in audio if "data" in a)
    assert len(pcm) == 2 * 7_200 and sum("data" in a for a in audio) == 2
    assert set(audio[-1]) == {"id", "expires_at"}
    assert spoken[-3]["choices"][0]["finish_reason"] == "stop"
    assert spoken[-2]["choices"] == [] and "completion_tokens_details" not in spoken[-2]["usage"]
    plain = _deltas(written)
    assert "".join(d.get("content") or "" for d in plain) == TEXT
    assert plain[-1] == {} and written[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("kind", ["dashscope", "vllm-omni", "openai"])
def test_error_after_chunks_sends_an_error_event_then_done(kind: Kind) -> None:
    with FakeUpstream(kind, Behaviour(error_after_chunks=3)) as up:
        events = _stream(up, _body())
        assert (up.started, up.finished, up.disconnected) == (1, 1, 0)
    assert len(events) == 5 and events[-1] == "[DONE]"
    assert all("choices" in e for e in events[:3])
    error = events[3]["error"]
    assert set(error) >= {"message", "type", "code"}
    if kind == "vllm-omni":
        assert error["code"] == 500 and error["type"] == "InternalServerError"


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("dashscope", 429, "limit_requests"), ("openai", 401, "invalid_api_key")],
)
def test_http_errors_come_in_the_kinds_envelope(kind: Kind, status: int, code: str) -> None:
    with FakeUpstream(kind, Behaviour(status=status)) as up, httpx.Client() as http:
        r = http.post(f"{up.base_url}/chat/completions", json=_body())
        up.behaviour.error_body = {"error": {"message": "custom"}}
        custom = http.post(f"{up.base_url}/chat/completions", json=_body())
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert custom.status_code == status and custom.json() == {"error": {"message": "custom"}}


def test_die_after_chunks_breaks_the_body() -> None:
    with FakeUpstream("vllm-omni", Behaviour(die_after_chunks=2)) as up, httpx.Client() as http:
        lines: list[str] = []
        with (
            pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
            http.stream("POST", f"{up.base_url}/chat/completions", json=_body()) as r,
        ):
            lines.extend(r.iter_lines())
        assert (up.started, up.finished) == (1, 0)
    events = _parse(lines)
    assert len(events) == 2 and "[DONE]" not in events


def test_hang_times_out_and_counts_the_disconnect() -> None:
    with FakeUpstream("dashscope", Behaviour(hang=True)) as up:
        timeout = httpx.Timeout(5.0, read=0.3)
        with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=timeout) as http:
            http.post(f"{up.base_url}/chat/completions", json=_body())
        wait_until(lambda: up.disconnected == 1)
        assert (up.started, up.finished) == (1, 0)


def test_a_client_leaving_mid_stream_is_a_disconnect() -> None:
    with FakeUpstream("openai", Behaviour(chunk_delay_s=0.05)) as up, httpx.Client() as http:
        with http.stream("POST", f"{up.base_url}/chat/completions", json=_body()) as r:
            next(r.iter_lines())
        wait_until(lambda: up.disconnected == 1)
        assert up.finished == 0


def test_first_byte_delay_holds_the_headers() -> None:
    with FakeUpstream("openai", Behaviour(first_byte_delay_s=0.3)) as up:
        start = time.monotonic()
        events = _stream(up, _body())
        assert time.monotonic() - start >= 0.3 and events[-1] == "[DONE]"


def test_stop_serving_refuses_new_connections_even_from_a_pool() -> None:
    with FakeUpstream("vllm-omni") as up, httpx.Client() as pooled:
        assert pooled.get(f"{up.root}/health").status_code == 200
        up.stop_serving()
        with pytest.raises(httpx.ConnectError), httpx.Client() as fresh:
            fresh.get(f"{up.root}/health")
        with pytest.raises(httpx.ConnectError):
            pooled.get(f"{up.root}/health")


def test_health_and_models() -> None:
    with FakeUpstream("dashscope") as up, httpx.Client() as http:
        assert http.get(f"{up.root}/health").status_code == 200
        up.behaviour.healthy = False
        assert http.get(f"{up.root}/health").status_code == 503
        _stream(up, _body(model="qwen3-omni-flash"))
        models = http.get(f"{up.base_url}/models").json()
    assert [m["id"] for m in models["data"]] == ["qwen3-omni-flash", "fake-model"]
