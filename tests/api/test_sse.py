"""ChunkEncoder and encode_stream: the vendor's chunks byte for byte, and stream failure modes."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from omniserve.api.sse import DONE, ChunkEncoder, encode_stream, usage_object
from omniserve.api.streaming import EventStreamResponse
from omniserve.catalog import Catalog
from omniserve.errors import ApiError, InternalError, InvalidParameter, RateLimited
from omniserve.events import AudioDelta, EngineEvent, Finished, ReasoningDelta, TextDelta
from omniserve.job import CompletionTokens, GenerationJob, PromptTokens, Usage

UUID = "a68eca3b-c67e-4666-a72f-73c0b4919860"
CREATED = 1757647879
TAIL = (
    f'"object":"chat.completion.chunk","usage":null,"created":{CREATED},'
    f'"system_fingerprint":null,"model":"qwen3-omni-flash","id":"chatcmpl-{UUID}"}}\n\n'
)
FLASH = Catalog.default().get("qwen3-omni-flash")
USAGE = Usage(PromptTokens(text=11), CompletionTokens(text=3))


def make_job(*, thinking: bool = False, model_name: str = "qwen3-omni-flash") -> GenerationJob:
    return GenerationJob(
        request_id=UUID,
        model_name=model_name,
        model=FLASH,
        messages=(),
        prompt_tokens=PromptTokens(text=11),
        thinking=thinking,
    )


ENC = ChunkEncoder(make_job(), created=CREATED)
THINKING = ChunkEncoder(make_job(thinking=True), created=CREATED)


def chunk(choices: str) -> bytes:
    return f'data: {{"choices":[{choices}],{TAIL}'.encode()


def delta(body: str) -> bytes:
    return chunk(f'{{"delta":{body},"finish_reason":null,"index":0,"logprobs":null}}')


# -- ChunkEncoder --------------------------------------------------------------------------


def test_text_chunk_matches_the_vendor_sample_byte_for_byte() -> None:
    expected = (
        'data: {"choices":[{"delta":{"content":"我"},"finish_reason":null,"index":0,'
        '"logprobs":null}],"object":"chat.completion.chunk","usage":null,"created":1757647879,'
        '"system_fingerprint":null,"model":"qwen3-omni-flash",'
        '"id":"chatcmpl-a68eca3b-c67e-4666-a72f-73c0b4919860"}\n\n'
    ).encode()
    assert ENC.text("我") == expected


def test_key_order_and_common_fields() -> None:
    body = json.loads(ENC.text("x")[len(b"data: ") :])
    assert list(body) == [
        "choices",
        "object",
        "usage",
        "created",
        "system_fingerprint",
        "model",
        "id",
    ]
    assert body["object"] == "chat.completion.chunk"
    assert body["usage"] is None
    assert body["system_fingerprint"] is None
    assert body["created"] == CREATED
    assert body["model"] == "qwen3-omni-flash"
    assert body["id"] == f"chatcmpl-{UUID}"
    assert list(body["choices"][0]) == ["delta", "finish_reason", "index", "logprobs"]


def test_framing() -> None:
    raw = ENC.text("a\nb")
    assert raw.startswith(b"data: {")
    assert raw.endswith(b"}\n\n")
    assert raw.count(b"\n") == 2  # newlines in content are escaped
    assert b'"content":"a\\nb"' in raw
    assert DONE == b"data: [DONE]\n\n"


def test_non_ascii_is_not_escaped() -> None:
    assert '"content":"你好🙂"'.encode() in ENC.text("你好🙂")
    assert b'"content":"\\"q\\""' in ENC.text('"q"')


def test_role_chunk() -> None:
    assert ENC.role() == delta('{"content":"","role":"assistant"}')
    assert THINKING.role() == delta('{"content":null,"role":"assistant","reasoning_content":""}')


def test_reasoning_chunk() -> None:
    assert THINKING.reasoning("嗯") == delta('{"content":null,"reasoning_content":"嗯"}')


def test_finish_chunk() -> None:
    finish = '{{"finish_reason":"{}","delta":{},"index":0,"logprobs":null}}'
    assert ENC.finish("stop") == chunk(finish.format("stop", '{"content":""}'))
    assert ENC.finish("length") == chunk(finish.format("length", '{"content":""}'))
    assert THINKING.finish("stop") == chunk(
        finish.format("stop", '{"content":"","reasoning_content":null}')
    )


def test_audio_chunk() -> None:
    pcm = b"\xfe\xff\x00\x00\x00\x00"
    assert ENC.audio(pcm) == delta(
        f'{{"audio":{{"data":"/v8AAAAA","expires_at":{CREATED},"id":"audio_{UUID}"}}}}'
    )
    body = json.loads(ENC.audio(pcm)[len(b"data: ") :])
    audio = body["choices"][0]["delta"]["audio"]
    assert list(audio) == ["data", "expires_at", "id"]
    assert base64.b64decode(audio["data"]) == pcm
    assert audio["expires_at"] == body["created"]
    assert audio["id"] == f"audio_{UUID}"
    assert body["id"] == f"chatcmpl-{UUID}"


def test_audio_transcript_only_when_given() -> None:
    pcm = bytes(6)
    assert b"transcript" not in ENC.audio(pcm)
    assert b"transcript" not in ENC.audio(pcm, None)
    with_text = json.loads(ENC.audio(pcm, "你好。")[len(b"data: ") :])
    audio = with_text["choices"][0]["delta"]["audio"]
    assert list(audio) == ["data", "expires_at", "id", "transcript"]
    assert audio["transcript"] == "你好。"
    assert (
        json.loads(ENC.audio(pcm, "")[len(b"data: ") :])["choices"][0]["delta"]["audio"][
            "transcript"
        ]
        == ""
    )


def test_usage_chunk() -> None:
    usage = Usage(PromptTokens(text=207), CompletionTokens(text=20, audio=83))
    expected = (
        'data: {"choices":[],"object":"chat.completion.chunk","usage":{"prompt_tokens":207,'
        '"completion_tokens":103,"total_tokens":310,"completion_tokens_details":'
        '{"audio_tokens":83,"text_tokens":20},"prompt_tokens_details":{"text_tokens":207}},'
        f'"created":{CREATED},"system_fingerprint":null,"model":"qwen3-omni-flash",'
        f'"id":"chatcmpl-{UUID}"}}\n\n'
    ).encode()
    assert ENC.usage(usage) == expected


def test_error_event() -> None:
    err = ApiError("Output data may contain inappropriate content.")
    err.code = "data_inspection_failed"
    err.type = "data_inspection_failed"
    assert ChunkEncoder.error(err) == (
        b'data: {"error":{"message":"Output data may contain inappropriate content.",'
        b'"type":"data_inspection_failed","param":null,"code":"data_inspection_failed"}}\n\n'
    )
    assert ChunkEncoder.error(InvalidParameter("bad", param="x")) == (
        b'data: {"error":{"message":"bad","type":"invalid_request_error","param":"x",'
        b'"code":"invalid_parameter_error"}}\n\n'
    )


def test_model_name_is_the_one_asked_for() -> None:
    enc = ChunkEncoder(make_job(model_name="qwen3-omni-flash-0915"), created=CREATED)
    assert b'"model":"qwen3-omni-flash-0915"' in enc.text("x")


def test_created_defaults_to_now() -> None:
    import time

    before = int(time.time())
    enc = ChunkEncoder(make_job())
    assert before <= enc.created <= int(time.time())
    assert enc.completion_id == f"chatcmpl-{UUID}"
    assert enc.audio_id == f"audio_{UUID}"


# -- usage_object --------------------------------------------------------------------------


def test_usage_object_text_only() -> None:
    assert usage_object(USAGE) == {
        "prompt_tokens": 11,
        "completion_tokens": 3,
        "total_tokens": 14,
        "completion_tokens_details": {"text_tokens": 3},
        "prompt_tokens_details": {"text_tokens": 11},
    }


def test_usage_object_thinking() -> None:
    usage = Usage(PromptTokens(text=11), CompletionTokens(text=168, reasoning=195))
    obj = usage_object(usage)
    assert obj == {
        "prompt_tokens": 11,
        "completion_tokens": 363,
        "total_tokens": 374,
        "completion_tokens_details": {"reasoning_tokens": 195, "text_tokens": 168},
        "prompt_tokens_details": {"text_tokens": 11},
    }
    assert list(obj["completion_tokens_details"]) == ["reasoning_tokens", "text_tokens"]


def test_usage_object_media_details() -> None:
    usage = Usage(
        PromptTokens(text=24, image=520, audio=125, video=7202),
        CompletionTokens(text=5, audio=40),
    )
    obj = usage_object(usage)
    assert obj["prompt_tokens_details"] == {
        "text_tokens": 24,
        "image_tokens": 520,
        "audio_tokens": 125,
        "video_tokens": 7202,
    }
    assert obj["completion_tokens_details"] == {"audio_tokens": 40, "text_tokens": 5}
    assert obj["prompt_tokens"] == sum(obj["prompt_tokens_details"].values()) == 7871
    assert obj["completion_tokens"] == sum(obj["completion_tokens_details"].values()) == 45
    assert obj["total_tokens"] == obj["prompt_tokens"] + obj["completion_tokens"]
    assert list(obj) == [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "completion_tokens_details",
        "prompt_tokens_details",
    ]


def test_usage_object_has_no_zero_fillers() -> None:
    obj = usage_object(Usage(PromptTokens(text=24, image=520), CompletionTokens(text=9)))
    assert obj["prompt_tokens_details"] == {"text_tokens": 24, "image_tokens": 520}
    assert obj["completion_tokens_details"] == {"text_tokens": 9}


# -- encode_stream -------------------------------------------------------------------------


@dataclass
class Source:
    """A real async generator of engine events that records how it ended."""

    events: Sequence[EngineEvent]
    fail_with: BaseException | None = None
    fail_after: int = 0  # raise after this many events
    finish: bool = True
    started: bool = False
    closed: bool = False
    delay: float = 0.0

    async def generate(self) -> AsyncIterator[EngineEvent]:
        self.started = True
        try:
            for i, event in enumerate(self.events):
                if self.fail_with is not None and i == self.fail_after:
                    raise self.fail_with
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield event
            if self.fail_with is not None and self.fail_after >= len(self.events):
                raise self.fail_with
            if self.finish:
                yield Finished("stop", USAGE)
        finally:
            self.closed = True


def encoded(
    source: Source, *, include_usage: bool = False, transcript: bool = False, **kw: Any
) -> list[bytes]:
    """What ``encode_stream`` yields for ``source`` (a failure propagates)."""

    async def run() -> list[bytes]:
        stream = encode_stream(
            kw.pop("job", make_job()),
            source.generate(),
            include_usage=include_usage,
            transcript=transcript,
            created=CREATED,
        )
        return [chunk async for chunk in stream]

    return asyncio.run(run())


def collect(
    source: Source, *, include_usage: bool = False, transcript: bool = False, **kw: Any
) -> list[bytes]:
    """What a client reads of ``source``'s stream: the encoder's chunks as the response sends
    them (a failure after the first chunk becomes the error event and ``[DONE]``)."""

    async def run() -> list[bytes]:
        stream = encode_stream(
            kw.pop("job", make_job()),
            source.generate(),
            include_usage=include_usage,
            transcript=transcript,
            created=CREATED,
        )
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # the client never leaves
            return {}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        response = EventStreamResponse(stream, request_id="r")
        await response({"type": "http"}, receive, send)  # type: ignore[arg-type]
        assert sent[0]["status"] == 200
        return [m["body"] for m in sent[1:] if m["body"]]

    return asyncio.run(run())


def test_stream_of_text() -> None:
    out = collect(Source([TextDelta("你"), TextDelta(""), TextDelta("好")]))
    assert out == [
        ENC.role(),
        ENC.text("你"),
        ENC.text("好"),
        ENC.finish("stop"),
        DONE,
    ]


def test_stream_with_usage() -> None:
    out = collect(Source([TextDelta("hi")]), include_usage=True)
    assert out == [ENC.role(), ENC.text("hi"), ENC.finish("stop"), ENC.usage(USAGE), DONE]


def test_stream_with_thinking() -> None:
    out = collect(
        Source([ReasoningDelta("嗯"), ReasoningDelta(""), TextDelta("告诉我")]),
        job=make_job(thinking=True),
    )
    assert out == [
        THINKING.role(),
        THINKING.reasoning("嗯"),
        THINKING.text("告诉我"),
        THINKING.finish("stop"),
        DONE,
    ]


def test_stream_with_audio() -> None:
    pcm = bytes(range(12))
    events: list[EngineEvent] = [
        TextDelta("Hi."),
        AudioDelta(pcm, transcript="Hi."),
        AudioDelta(b""),
        AudioDelta(pcm),
    ]
    out = collect(Source(events))
    assert out == [
        ENC.role(),
        ENC.text("Hi."),
        ENC.audio(pcm),
        ENC.audio(pcm),
        ENC.finish("stop"),
        DONE,
    ]
    with_transcript = collect(Source(events), transcript=True)
    assert with_transcript[2] == ENC.audio(pcm, "Hi.")
    assert with_transcript[3] == ENC.audio(pcm)


def test_stream_ends_at_finished() -> None:
    source = Source([TextDelta("a"), Finished("length", USAGE), TextDelta("never")], finish=False)
    out = collect(source)
    assert out == [ENC.role(), ENC.text("a"), ENC.finish("length"), DONE]
    assert source.closed


def test_finished_first_still_opens_with_the_role_chunk() -> None:
    out = collect(Source([]), include_usage=True)
    assert out == [ENC.role(), ENC.finish("stop"), ENC.usage(USAGE), DONE]


@pytest.mark.parametrize(
    "error", [InvalidParameter("bad"), RateLimited(retry_after=2), ValueError("boom")]
)
def test_error_before_the_first_event_propagates(error: Exception) -> None:
    source = Source([TextDelta("x")], fail_with=error, fail_after=0)
    with pytest.raises(type(error)) as info:
        encoded(source)
    assert info.value is error
    assert source.closed


def test_api_error_after_the_first_event_is_an_error_event() -> None:
    err = InvalidParameter("Output data may contain inappropriate content.")
    source = Source([TextDelta("a"), TextDelta("b")], fail_with=err, fail_after=1)
    out = collect(source)
    assert out == [ENC.role(), ENC.text("a"), ChunkEncoder.error(err) + DONE]
    assert source.closed


def test_other_error_after_the_first_event_hides_its_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source([TextDelta("a")], fail_with=RuntimeError("secret detail"), fail_after=1)
    with caplog.at_level(logging.ERROR, logger="omniserve.stream"):
        out = collect(source)
    assert out == [ENC.role(), ENC.text("a"), ChunkEncoder.error(InternalError()) + DONE]
    assert b"secret" not in b"".join(out)
    assert "secret detail" in caplog.text  # logged for the operator, not sent


def test_engine_that_ends_without_finished() -> None:
    out = collect(Source([TextDelta("a")], finish=False))
    assert out[:2] == [ENC.role(), ENC.text("a")]
    assert out[-1].endswith(DONE)
    assert len(out) == 3
    error = json.loads(out[2].removesuffix(DONE)[len(b"data: ") :])["error"]
    assert error == {
        "message": "The engine ended the stream without finishing it.",
        "type": "internal_error",
        "param": None,
        "code": "InternalError",
    }


def test_engine_that_yields_nothing_is_an_error_before_output() -> None:
    with pytest.raises(InternalError, match="without finishing"):
        encoded(Source([], finish=False))


def test_closing_the_encoder_closes_the_source() -> None:
    source = Source([TextDelta(str(i)) for i in range(100)])

    async def read_two() -> list[bytes]:
        stream = encode_stream(make_job(), source.generate(), include_usage=False)
        out = [await anext(stream), await anext(stream)]
        assert source.started and not source.closed
        await stream.aclose()
        return out

    out = asyncio.run(read_two())
    assert out[0].startswith(b"data: ")
    assert source.closed


def test_cancelling_the_consumer_closes_the_source() -> None:
    source = Source([TextDelta(str(i)) for i in range(100)], delay=0.01)

    async def cancel_midway() -> int:
        chunks: list[bytes] = []
        three = asyncio.Event()

        async def consume() -> None:
            stream = encode_stream(make_job(), source.generate(), include_usage=False)
            try:
                async for c in stream:
                    chunks.append(c)
                    if len(chunks) == 3:
                        three.set()
            finally:
                await stream.aclose()

        task = asyncio.create_task(consume())
        await three.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(chunks)

    received = asyncio.run(cancel_midway())
    assert 3 <= received < 50
    assert source.closed
