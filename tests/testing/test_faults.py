"""Scripted replies and injected faults over real HTTP, through raw httpx and the openai SDK,
on the server the pytest fixture ``omniserve`` gives (omniserve.testing)."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import time
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from helpers import scrape, value
from omniserve.scenarios import ERRORS
from omniserve.testing import OmniServer

SDK_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    429: openai.RateLimitError,
    500: openai.InternalServerError,
    503: openai.InternalServerError,
}


def body(text: str = "Tell me about the weather", **extra: Any) -> dict[str, Any]:
    return {
        "model": "qwen3-omni-flash",
        "messages": [{"role": "user", "content": text}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


def raw(
    server: OmniServer, headers: dict[str, str] | None = None, **extra: Any
) -> tuple[int, dict[str, str], list[bytes]]:
    """Status, headers and the body's SSE events as sent (the last may be cut short)."""
    with httpx.stream(
        "POST",
        f"{server.base_url}/chat/completions",
        json=body(**extra),
        headers=headers,
        timeout=30,
    ) as response:
        data = b"".join(response.iter_raw())
    events = [e + b"\n\n" for e in data.split(b"\n\n")]
    events[-1] = events[-1][:-2]
    return response.status_code, dict(response.headers), [e for e in events if e]


def decoded(events: list[bytes]) -> list[Any]:
    """The events' JSON without what differs between two requests (ids, times)."""
    out = []
    for event in events:
        data = event.removeprefix(b"data: ").strip()
        item = data.decode() if data == b"[DONE]" else json.loads(data)
        if isinstance(item, dict):
            item.pop("id", None)
            item.pop("created", None)
            for choice in item.get("choices") or []:
                audio = choice.get("delta", {}).get("audio")
                if audio:
                    audio.pop("id", None)
                    audio.pop("expires_at", None)
        out.append(item)
    return out


def client(server: OmniServer) -> OpenAI:
    return OpenAI(api_key=server.api_key, base_url=server.base_url, max_retries=0)


# -- scripted replies ------------------------------------------------------------------------


def test_scripted_text_reasoning_and_usage_through_the_sdk(omniserve: OmniServer) -> None:
    omniserve.set_rules(
        [
            {
                "match": {"message": "weather", "thinking": True},
                "reply": {"text": "Sunny, 24 °C.", "reasoning": "Look outside."},
            },
            {
                "match": {"message": "weather"},
                "reply": {
                    "text": "It is sunny in Hangzhou.",
                    "usage": {"prompt_text": 11, "completion_text": 7},
                },
            },
        ]
    )
    with client(omniserve) as sdk:
        stream = sdk.chat.completions.create(**body())  # type: ignore[call-overload]
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "It is sunny in Hangzhou."
        usage = chunks[-1].usage
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 7, 18)

        thinking = sdk.chat.completions.create(  # type: ignore[call-overload]
            **body(), extra_body={"enable_thinking": True}
        )
        parts = [c.choices[0].delta for c in thinking if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in parts) == "Look outside."
    assert "".join(d.content or "" for d in parts) == "Sunny, 24 °C."


def test_unmatched_requests_get_the_emulators_answer(omniserve: OmniServer) -> None:
    omniserve.set_rules([{"match": {"message": "weather"}, "reply": {"text": "Sunny."}}])
    status, _, events = raw(omniserve, text="Who are you?")
    assert status == 200
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in decoded(events)[:-1] if e["choices"]
    )
    assert "omniserve" in text


def test_finish_reason_length(omniserve: OmniServer) -> None:
    omniserve.set_rules([{"reply": {"text": "Cut.", "finish_reason": "length"}}])
    _, _, events = raw(omniserve)
    finishes = [e["choices"][0]["finish_reason"] for e in decoded(events)[:-1] if e["choices"]]
    assert finishes[-1] == "length"


def test_speech_on_and_off(omniserve: OmniServer) -> None:
    audio = {"modalities": ["text", "audio"], "audio": {"voice": "Cherry", "format": "wav"}}
    omniserve.set_rules(
        [
            {"match": {"voice": "Ethan"}, "reply": {"text": "Silent answer.", "speech": False}},
            {"reply": {"text": "Spoken answer."}},
        ]
    )

    def audio_bytes(voice: str) -> int:
        extra = {**audio, "audio": {"voice": voice, "format": "wav"}}
        _, _, events = raw(omniserve, **extra)
        return sum(
            len(base64.b64decode(e["choices"][0]["delta"]["audio"]["data"]))
            for e in decoded(events)[:-1]
            if e["choices"] and "audio" in e["choices"][0]["delta"]
        )

    assert audio_bytes("Cherry") > 24_000  # more than half a second of speech
    assert audio_bytes("Ethan") == 0


def test_pacing(omniserve: OmniServer) -> None:
    omniserve.set_rules(
        [
            {
                "reply": {
                    "text": "one two three four five six",
                    "first_token_ms": 300,
                    "tokens_per_second": 20,
                }
            }
        ]
    )
    began = time.monotonic()
    with httpx.stream(
        "POST", f"{omniserve.base_url}/chat/completions", json=body(), timeout=30
    ) as response:
        lines = response.iter_lines()
        next(lines)
        first = time.monotonic() - began
        for _ in lines:
            pass
    total = time.monotonic() - began
    assert first >= 0.3  # a sleep: a lower bound, never flaky
    assert total >= 0.3 + 5 / 20


# -- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ERRORS))
def test_every_error_before_the_first_byte(omniserve: OmniServer, code: str) -> None:
    status, headers, events = raw(omniserve, {"X-Omniserve-Fault": f"error={code}"})
    expected, type_, message = ERRORS[code]
    assert status == expected
    error = json.loads(b"".join(events))["error"]
    assert error == {"code": code, "param": None, "message": message, "type": type_}
    assert ("retry-after" in headers) is (expected == 429)
    with client(omniserve) as sdk, pytest.raises(SDK_ERRORS[expected]) as caught:
        list(
            sdk.chat.completions.create(  # type: ignore[call-overload]
                **body(), extra_headers={"X-Omniserve-Fault": f"error={code}"}
            )
        )
    assert caught.value.status_code == expected


def test_a_429_carries_its_retry_after(omniserve: OmniServer) -> None:
    omniserve.set_rules(
        [{"match": {"scenario": "busy"}, "fault": {"error": "limit_requests", "retry_after": 7}}]
    )
    status, headers, _ = raw(omniserve, {"X-Omniserve-Scenario": "busy"})
    assert (status, headers["retry-after"]) == (429, "7")
    assert raw(omniserve)[0] == 200  # without the scenario, no rule fits


def test_an_error_event_after_n_chunks(omniserve: OmniServer) -> None:
    fault = {"X-Omniserve-Fault": "error=data_inspection_failed; after_chunks=3"}
    status, _, events = raw(omniserve, fault)
    items = decoded(events)
    assert status == 200 and len(items) == 5
    assert all("choices" in item for item in items[:3])
    assert items[3] == {
        "error": {
            "message": "Output data may contain inappropriate content.",
            "type": "data_inspection_failed",
            "param": None,
            "code": "data_inspection_failed",
        }
    }
    assert items[4] == "[DONE]"
    with client(omniserve) as sdk, pytest.raises(openai.APIError, match="inappropriate"):
        list(sdk.chat.completions.create(**body(), extra_headers=fault))  # type: ignore[call-overload]


def test_the_same_fault_answers_the_same_way_twice(omniserve: OmniServer) -> None:
    for header in ("error=InternalError; after_chunks=5", "drop_after_chunks=4", "truncate"):
        first = decoded_or_cut(omniserve, header)
        assert first == decoded_or_cut(omniserve, header), header


def decoded_or_cut(server: OmniServer, header: str) -> list[Any]:
    try:
        status, _, events = raw(server, {"X-Omniserve-Fault": header})
    except httpx.RemoteProtocolError:
        # Cut mid-body: read it again by pieces, keeping what arrived.
        got = bytearray()
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream(
                "POST",
                f"{server.base_url}/chat/completions",
                json=body(),
                headers={"X-Omniserve-Fault": header},
                timeout=30,
            ) as response,
        ):
            for piece in response.iter_raw():
                got += piece
        whole = [e for e in bytes(got).split(b"\n\n") if e]
        cut = [] if bytes(got).endswith(b"\n\n") else [whole.pop()]
        return [*decoded([e + b"\n\n" for e in whole]), *cut]
    return [status, *decoded(events)]


def test_a_dropped_connection(omniserve: OmniServer) -> None:
    got = bytearray()
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            f"{omniserve.base_url}/chat/completions",
            json=body(),
            headers={"X-Omniserve-Fault": "drop_after_chunks=3"},
            timeout=30,
        ) as response,
    ):
        assert response.status_code == 200
        for piece in response.iter_raw():
            got += piece
    events = [e for e in bytes(got).split(b"\n\n") if e]
    assert len(events) == 3 and bytes(got).endswith(b"\n\n")
    with client(omniserve) as sdk, pytest.raises((httpx.RemoteProtocolError, openai.APIError)):
        list(
            sdk.chat.completions.create(  # type: ignore[call-overload]
                **body(), extra_headers={"X-Omniserve-Fault": "drop_after_chunks=3"}
            )
        )


def test_a_truncated_last_chunk(omniserve: OmniServer) -> None:
    cut = decoded_or_cut(omniserve, "truncate")
    whole = decoded(raw(omniserve)[2])
    # Everything before the last data event arrives whole; then half of it, and no [DONE].
    assert cut[:-1] == whole[:-2]
    assert isinstance(cut[-1], bytes) and cut[-1].startswith(b"data: {")
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut[-1].removeprefix(b"data: "))


def test_a_stall_before_the_first_byte_and_mid_stream(omniserve: OmniServer) -> None:
    def gaps(header: str) -> tuple[float, list[float]]:
        began = time.monotonic()
        times = []
        with httpx.stream(
            "POST",
            f"{omniserve.base_url}/chat/completions",
            json=body(),
            headers={"X-Omniserve-Fault": header},
            timeout=30,
        ) as response:
            for line in response.iter_lines():
                if line:
                    times.append(time.monotonic())
        return times[0] - began, [b - a for a, b in itertools.pairwise(times)]

    first, _ = gaps("stall_s=0.4")
    assert first >= 0.4
    _, between = gaps("stall_s=0.4; after_chunks=3")
    # Between the third event and the fourth (as the client reads them: the third may reach
    # it a little late, so the gap it sees can be a little short of the stall).
    assert between[2] >= 0.3
    assert max(between[:2] + between[3:]) < between[2]


def test_a_slow_trickle_sends_the_same_bytes(omniserve: OmniServer) -> None:
    omniserve.set_rules([{"reply": {"text": "Short."}}])
    _, _, plain = raw(omniserve)
    began = time.monotonic()
    pieces = []
    with httpx.stream(
        "POST",
        f"{omniserve.base_url}/chat/completions",
        json=body(),
        headers={"X-Omniserve-Fault": "trickle_bytes=64; trickle_ms=10"},
        timeout=30,
    ) as response:
        pieces = list(response.iter_raw())
    took = time.monotonic() - began
    sent = b"".join(pieces)
    assert decoded([e + b"\n\n" for e in sent.split(b"\n\n") if e]) == decoded(plain)
    assert took >= (len(sent) // 64) * 0.010
    assert max(len(p) for p in pieces) < len(sent)


def test_a_bad_fault_header_is_a_400(omniserve: OmniServer) -> None:
    status, _, events = raw(omniserve, {"X-Omniserve-Fault": "explode=yes"})
    assert status == 400
    error = json.loads(b"".join(events))["error"]
    assert error["param"] == "X-Omniserve-Fault" and "explode" in error["message"]


def test_faults_show_in_the_metrics_and_the_request_log(
    omniserve: OmniServer, caplog: pytest.LogCaptureFixture
) -> None:
    before = scrape(omniserve.url)
    omniserve.set_rules([{"name": "moderated", "fault": {"error": "data_inspection_failed"}}])
    with caplog.at_level(logging.INFO, logger="omniserve.request"):
        assert raw(omniserve)[0] == 400
        raw(omniserve, {"X-Omniserve-Fault": "stall_s=0.05"})
    after = scrape(omniserve.url)
    for kind in ("error", "stall"):
        assert value(after, "omniserve_injected_faults_total", kind=kind) == 1 + value(
            before, "omniserve_injected_faults_total", kind=kind
        )
    lines = [r.fields for r in caplog.records if r.name == "omniserve.request"]  # type: ignore[attr-defined]
    assert {"injected": "error", "rule": "moderated"}.items() <= lines[0].items()
    assert lines[0]["error_code"] == "data_inspection_failed"
    assert lines[1]["injected"] == "stall" and lines[1]["rule"] == "moderated"


def test_rules_match_on_model_input_and_voice_through_the_sdk(omniserve: OmniServer) -> None:
    import io

    import numpy as np
    import soundfile as sf

    omniserve.set_rules(
        [
            {"match": {"input": "audio"}, "reply": {"text": "I heard a clip."}},
            {"match": {"model": "qwen-omni-turbo"}, "reply": {"text": "Turbo here."}},
            {"match": {"voice": "Ethan"}, "reply": {"text": "Ethan speaking."}},
        ]
    )
    tone = (0.3 * np.sin(np.arange(16_000) * 2 * np.pi * 440 / 16_000)).astype(np.float32)
    wav = io.BytesIO()
    sf.write(wav, tone, 16_000, format="WAV")
    clip = "data:;base64," + base64.b64encode(wav.getvalue()).decode()

    def answer(**kwargs: Any) -> str:
        with client(omniserve) as sdk:
            stream = sdk.chat.completions.create(stream=True, **kwargs)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    audio_part = {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}}
    assert (
        answer(
            model="qwen3-omni-flash",
            messages=[{"role": "user", "content": [audio_part]}],
        )
        == "I heard a clip."
    )
    hello = [{"role": "user", "content": "Hello"}]
    assert answer(model="qwen-omni-turbo", messages=hello) == "Turbo here."
    spoken = {"modalities": ["text", "audio"], "audio": {"voice": "Ethan", "format": "wav"}}
    assert answer(model="qwen3-omni-flash", messages=hello, **spoken) == "Ethan speaking."
    assert "omniserve" in answer(model="qwen3-omni-flash", messages=hello)
