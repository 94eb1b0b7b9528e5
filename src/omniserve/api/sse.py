"""Engine events to DashScope chunks, byte-faithful to the vendor's stream.

Every chunk carries the same ``chatcmpl-<uuid>`` id and ``created``; keys are in the vendor's
order; audio is base64 of headerless PCM16 24 kHz with the id ``audio_<uuid>``. The stream opens
with a role chunk, ends with a finish chunk, the usage chunk when asked for, and ``[DONE]``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncGenerator
from typing import Any, Literal

import anyio
import anyio.to_thread

from omniserve.errors import SSE_ERROR_ORDER, ApiError, InternalError
from omniserve.events import AudioDelta, EngineEvent, Finished, ReasoningDelta, TextDelta
from omniserve.job import GenerationJob, TokenKind, Usage
from omniserve.speech.codecs import FORMATS, StreamEncoder

DONE = b"data: [DONE]\n\n"

AudioShape = Literal["dashscope", "openai"]
AUDIO_DELTA_HEADER = "x-omniserve-audio-delta"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


# The vendor's name for each token kind in the usage's details, in the vendor's key order:
# text always, the other kinds only when used.
_COMPLETION_DETAILS: tuple[tuple[TokenKind, str], ...] = (
    ("completion_audio", "audio_tokens"),
    ("completion_reasoning", "reasoning_tokens"),
    ("completion_text", "text_tokens"),
)
_PROMPT_DETAILS: tuple[tuple[TokenKind, str], ...] = (
    ("prompt_text", "text_tokens"),
    ("prompt_image", "image_tokens"),
    ("prompt_audio", "audio_tokens"),
    ("prompt_video", "video_tokens"),
)


def usage_object(usage: Usage) -> dict[str, Any]:
    """The vendor's usage: parents are sums of details; only details that apply are present."""
    kinds = usage.by_kind()

    def details(names: tuple[tuple[TokenKind, str], ...]) -> dict[str, int]:
        return {
            wire: kinds[kind]
            for kind, wire in names
            if kinds[kind] or kind in ("prompt_text", "completion_text")
        }

    p, c = usage.prompt.total, usage.completion.total
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "completion_tokens_details": details(_COMPLETION_DETAILS),
        "prompt_tokens_details": details(_PROMPT_DETAILS),
    }


class ChunkEncoder:
    """Builds the chunks of one completion."""

    def __init__(
        self,
        job: GenerationJob,
        *,
        created: int | None = None,
        audio_delta: AudioShape = "dashscope",
        audio_lifetime_s: float = 0,
    ) -> None:
        self.completion_id = f"chatcmpl-{job.request_id}"
        self.audio_id = f"audio_{job.request_id}"
        self.model = job.model_name
        self.thinking = job.thinking
        self.created = int(time.time()) if created is None else created
        self.audio_delta = audio_delta
        # OpenAI's expires_at says how long the id serves in history; the vendor's is created.
        self.expires_at = self.created + int(audio_lifetime_s)
        self._audio_sent = False
        self._text = ""  # the answer so far, and how far of it the transcripts have said
        self._spoken = 0

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        body = {
            "choices": choices,
            "object": "chat.completion.chunk",
            "usage": usage,
            "created": self.created,
            "system_fingerprint": None,
            "model": self.model,
            "id": self.completion_id,
        }
        return b"data: " + _dumps(body) + b"\n\n"

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._chunk([{"delta": delta, "finish_reason": None, "index": 0, "logprobs": None}])

    def role(self) -> bytes:
        if self.thinking:
            return self._delta({"content": None, "role": "assistant", "reasoning_content": ""})
        return self._delta({"content": "", "role": "assistant"})

    def text(self, text: str) -> bytes:
        if self.audio_delta == "openai":
            self._text += text
        return self._delta({"content": text})

    def reasoning(self, text: str) -> bytes:
        return self._delta({"content": None, "reasoning_content": text})

    def audio(self, pcm: bytes, transcript: str | None = None) -> bytes:
        data = base64.b64encode(pcm).decode("ascii")
        audio: dict[str, Any]
        if self.audio_delta == "openai":
            # Clients that add deltas up get one id, one expiry and the whole transcript.
            audio = {"data": data}
            if not self._audio_sent:
                audio.update(expires_at=self.expires_at, id=self.audio_id)
            audio["transcript"] = self._said(transcript) if transcript else ""
        else:
            audio = {"data": data, "expires_at": self.created, "id": self.audio_id}
            if transcript is not None:
                audio["transcript"] = transcript
        self._audio_sent = True
        return self._delta({"audio": audio})

    def _said(self, sentence: str) -> str:
        """The text up to the end of ``sentence``, from where the last transcript ended: the
        transcripts then add up to the text, spaces between sentences included."""
        at = self._text.find(sentence, self._spoken)
        if at < 0:
            return sentence
        said = self._text[self._spoken : at + len(sentence)]
        self._spoken = at + len(sentence)
        return said

    def finish(self, reason: str) -> bytes:
        delta: dict[str, Any] = {"content": ""}
        if self.thinking:
            delta["reasoning_content"] = None
        return self._chunk(
            [{"finish_reason": reason, "delta": delta, "index": 0, "logprobs": None}]
        )

    def usage(self, usage: Usage) -> bytes:
        return self._chunk([], usage_object(usage))

    @staticmethod
    def error(err: ApiError) -> bytes:
        """The error event of a stream that fails after its first chunk (the vendor's key
        order)."""
        return b"data: " + _dumps({"error": err.body(SSE_ERROR_ORDER)}) + b"\n\n"


def _joined(first: str | None, second: str | None) -> str | None:
    if first is None:
        return second
    return first + (second or "")


def error_event(err: ApiError) -> bytes:
    """What ends a stream that fails after its first chunk: the error event, then ``[DONE]``."""
    return ChunkEncoder.error(err) + DONE


async def encode_stream(
    job: GenerationJob,
    events: AsyncGenerator[EngineEvent, None],
    *,
    include_usage: bool,
    transcript: bool = False,
    created: int | None = None,
    audio_delta: AudioShape = "dashscope",
    audio_lifetime_s: float = 0,
) -> AsyncGenerator[bytes, None]:
    """SSE bytes for one completion. A failure propagates, wherever it happens: what it
    becomes depends on whether the client has bytes already, which the response knows
    (``streaming.py``). Closing this generator closes ``events``."""
    enc = ChunkEncoder(
        job, created=created, audio_delta=audio_delta, audio_lifetime_s=audio_lifetime_s
    )
    transcript = transcript or audio_delta == "openai"
    # mp3, opus, aac or flac, encoded as it streams (OpenAI-style deltas only; the vendor's
    # stream is raw PCM whatever audio.format says).
    codec: StreamEncoder | None = None
    if audio_delta == "openai" and job.audio_format in FORMATS:
        codec = StreamEncoder(job.audio_format)
    held: str | None = None  # a transcript whose audio the encoder still holds
    started = False
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                if not started:
                    started = True
                    yield enc.role()
                if isinstance(event, TextDelta):
                    if event.text:
                        yield enc.text(event.text)
                elif isinstance(event, ReasoningDelta):
                    if event.text:
                        yield enc.reasoning(event.text)
                elif isinstance(event, AudioDelta):
                    if not event.pcm:
                        continue
                    said = event.transcript if transcript else None
                    if codec is None:
                        yield enc.audio(event.pcm, said)
                        continue
                    data = await anyio.to_thread.run_sync(codec.encode, event.pcm)
                    said = _joined(held, said)
                    if data:
                        yield enc.audio(data, said)
                        held = None
                    else:
                        held = said
                elif isinstance(event, Finished):
                    if codec is not None:
                        data = await anyio.to_thread.run_sync(codec.finish)
                        if data:
                            yield enc.audio(data, held)
                    yield enc.finish(event.reason)
                    if include_usage:
                        yield enc.usage(event.usage)
                    yield DONE
                    return
    finally:
        if codec is not None:
            codec.close()
    raise InternalError("The engine ended the stream without finishing it.")
