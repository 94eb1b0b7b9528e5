"""The SSE stream, byte for byte, as the vendor sends it; read with httpx from a real server."""

from __future__ import annotations

import base64
import math
import re
import uuid
from typing import Any

import httpx
import numpy as np

from helpers import LiveServer, chat_body, fast_settings, live_server, read_sse
from omniserve.tokens import get_tokenizer

KEY_ORDER = ["choices", "object", "usage", "created", "system_fingerprint", "model", "id"]


def stream(server: LiveServer, body: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    with httpx.stream("POST", f"{server.api}/chat/completions", json=body, timeout=60) as r:
        raw = r.read()
    return r, raw


def events_of(raw: bytes) -> list[Any]:
    text = raw.decode("utf-8")
    assert text.endswith("data: [DONE]\n\n")
    assert all(block.startswith("data: ") for block in text.split("\n\n") if block)
    return read_sse(iter(text.split("\n\n")))


def test_text_stream_framing_and_ids(server: LiveServer) -> None:
    r, raw = stream(server, chat_body())
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream;charset=UTF-8"
    events = events_of(raw)
    chunks = events[:-1]
    ids = {c["id"] for c in chunks}
    created = {c["created"] for c in chunks}
    assert len(ids) == 1 and len(created) == 1
    (cid,) = ids
    assert re.fullmatch(r"chatcmpl-[0-9a-f-]{36}", cid)
    assert uuid.UUID(cid.removeprefix("chatcmpl-")).version == 4
    assert r.headers["x-request-id"] == cid.removeprefix("chatcmpl-")
    for c in chunks:
        assert list(c) == KEY_ORDER
        assert c["object"] == "chat.completion.chunk"
        assert c["system_fingerprint"] is None
        assert c["model"] == "qwen3-omni-flash"
    assert chunks[0]["choices"][0]["delta"] == {"content": "", "role": "assistant"}
    assert chunks[0]["usage"] is None
    finish = chunks[-2]
    assert finish["choices"] == [
        {"finish_reason": "stop", "delta": {"content": ""}, "index": 0, "logprobs": None}
    ]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    for c in chunks[1:-2]:
        (choice,) = c["choices"]
        assert choice["finish_reason"] is None and choice["index"] == 0
        assert choice["logprobs"] is None
        assert set(choice["delta"]) == {"content"}


def test_usage_counts_are_real(server: LiveServer) -> None:
    _, raw = stream(server, chat_body())
    events = events_of(raw)
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in events[:-2] if c["choices"]
    )
    usage = events[-2]["usage"]
    assert usage["prompt_tokens"] == 11  # "你是谁？" as the vendor bills it
    assert usage["prompt_tokens_details"] == {"text_tokens": 11}
    assert usage["completion_tokens"] == get_tokenizer().count(text)
    assert usage["completion_tokens_details"] == {"text_tokens": usage["completion_tokens"]}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_no_usage_chunk_without_include_usage(server: LiveServer) -> None:
    for options in (None, {"include_usage": False}):
        _, raw = stream(server, chat_body(stream_options=options))
        events = events_of(raw)
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
        assert all(e["usage"] is None for e in events[:-1])


def test_audio_stream(server: LiveServer) -> None:
    body = chat_body(modalities=["text", "audio"], audio={"voice": "Ethan", "format": "wav"})
    _, raw = stream(server, body)
    events = events_of(raw)
    cid = events[0]["id"]
    audio_chunks = [e for e in events[:-1] if e["choices"] and "audio" in e["choices"][0]["delta"]]
    assert audio_chunks
    pcm = b""
    for i, c in enumerate(audio_chunks):
        delta = c["choices"][0]["delta"]
        assert list(delta) == ["audio"]
        audio = delta["audio"]
        assert list(audio) == ["data", "expires_at", "id"]
        assert audio["id"] == "audio_" + cid.removeprefix("chatcmpl-")
        assert audio["expires_at"] == c["created"]
        data = base64.b64decode(audio["data"], validate=True)
        if i < len(audio_chunks) - 1:
            assert len(data) % 6 == 0 and "=" not in audio["data"]
        pcm += data
    # Concatenating the base64 strings and decoding once gives the same bytes.
    joined = "".join(c["choices"][0]["delta"]["audio"]["data"] for c in audio_chunks)
    assert base64.b64decode(joined) == pcm
    samples = np.frombuffer(pcm, dtype="<i2")
    seconds = len(samples) / 24_000
    assert seconds > 2
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 300
    usage = events[-2]["usage"]
    assert usage["prompt_tokens_details"] == {"text_tokens": 11 + 196}
    details = usage["completion_tokens_details"]
    assert list(details) == ["audio_tokens", "text_tokens"]
    assert details["audio_tokens"] == math.ceil(seconds * 12.5)
    assert usage["completion_tokens"] == details["audio_tokens"] + details["text_tokens"]


def test_first_audio_arrives_before_the_text_ends() -> None:
    """With a paced engine, speech of the first sentence leaves while text still streams."""
    body = chat_body(
        modalities=["text", "audio"],
        messages=[{"role": "user", "content": "Tell me about yourself in a few sentences."}],
    )
    with live_server(fast_settings(emulator={"tokens_per_second": 200})) as paced:
        _, raw = stream(paced, body)
    events = events_of(raw)[:-1]
    kinds = [
        "audio"
        if e["choices"] and "audio" in e["choices"][0]["delta"]
        else "text"
        if e["choices"] and e["choices"][0]["delta"].get("content")
        else "other"
        for e in events
    ]
    first_audio = kinds.index("audio")
    last_text = max(i for i, k in enumerate(kinds) if k == "text")
    assert first_audio < last_text


def test_thinking_stream(server: LiveServer) -> None:
    _, raw = stream(server, chat_body(enable_thinking=True))
    events = events_of(raw)
    assert events[0]["choices"][0]["delta"] == {
        "content": None,
        "role": "assistant",
        "reasoning_content": "",
    }
    reasoning = [e for e in events[1:-2] if e["choices"][0]["delta"].get("reasoning_content")]
    content = [e for e in events[1:-2] if e["choices"][0]["delta"].get("content")]
    assert reasoning and content
    assert events.index(reasoning[-1]) < events.index(content[0])
    for e in reasoning:
        assert e["choices"][0]["delta"]["content"] is None
    assert events[-3]["choices"][0] == {
        "finish_reason": "stop",
        "delta": {"content": "", "reasoning_content": None},
        "index": 0,
        "logprobs": None,
    }
    details = events[-2]["usage"]["completion_tokens_details"]
    assert list(details) == ["reasoning_tokens", "text_tokens"]
    tok = get_tokenizer()
    assert details["reasoning_tokens"] == tok.count(
        "".join(e["choices"][0]["delta"]["reasoning_content"] for e in reasoning)
    )


def test_max_tokens_truncates_with_length(server: LiveServer) -> None:
    _, raw = stream(server, chat_body(max_tokens=5))
    events = events_of(raw)
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["usage"]["completion_tokens"] == 5


def test_stop_sequence(server: LiveServer) -> None:
    _, raw = stream(server, chat_body(stop=["omniserve"]))
    events = events_of(raw)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[1:-3])
    assert text == "你好！这里是 "
    assert events[-3]["choices"][0]["finish_reason"] == "stop"


def test_same_seed_same_reply_other_seed_may_differ(server: LiveServer) -> None:
    def reply(seed: int | None) -> str:
        _, raw = stream(server, chat_body(seed=seed))
        return "".join(e["choices"][0]["delta"].get("content") or "" for e in events_of(raw)[1:-2])

    assert reply(7) == reply(7)
    assert reply(None) == reply(None)
    assert len({reply(s) for s in range(6)}) > 1


def test_reply_language_follows_last_user_message(server: LiveServer) -> None:
    cases = {
        "Who are you?": "Hello!",
        "Qui es-tu ? Je voudrais savoir.": "Bonjour",
        "Wer bist du? Ich möchte es wissen.": "Hallo!",
        "Кто ты?": "Здравствуйте!",
        "あなたは誰ですか？": "こんにちは",
        "너는 누구니?": "안녕하세요",
        "¿Quién eres tú? Me gustaría saberlo.": "¡Hola!",
    }
    for question, greeting in cases.items():
        _, raw = stream(server, chat_body(messages=[{"role": "user", "content": question}]))
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events_of(raw)[1:-2])
        assert text.startswith(greeting), (question, text)


def test_turbo_replies_in_chinese_or_english_only(server: LiveServer) -> None:
    body = chat_body(model="qwen-omni-turbo", messages=[{"role": "user", "content": "Кто ты?"}])
    _, raw = stream(server, body)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events_of(raw)[1:-2])
    assert text.startswith("Hello!")


def test_transcript_flag_adds_the_spoken_sentence() -> None:
    body = chat_body(
        modalities=["text", "audio"], messages=[{"role": "user", "content": "Who are you?"}]
    )
    with live_server(fast_settings(speech={"transcript": True})) as s:
        _, raw = stream(s, body)
    events = events_of(raw)[:-1]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    audio = [
        e["choices"][0]["delta"]["audio"]
        for e in events
        if e["choices"] and "audio" in e["choices"][0]["delta"]
    ]
    spoken = [a["transcript"] for a in audio if "transcript" in a]
    assert spoken[0] == "Hello!"
    assert " ".join(spoken) == text
