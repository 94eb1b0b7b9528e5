"""Engine events to DashScope chunks, byte-faithful to the vendor's stream.

Every chunk carries the same ``chatcmpl-<uuid>`` id and ``created``; keys are in the vendor's
order; audio is base64 of headerless PCM16 24 kHz with the id ``audio_<uuid>``. The stream opens
with a role chunk, ends with a finish chunk, the usage chunk when asked for, and ``[DONE]``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from omniserve.engines.base import (
    AudioDelta,
    EngineEvent,
    Finished,
    GenerationJob,
    ReasoningDelta,
    TextDelta,
    Usage,
)
from omniserve.errors import ApiError, InternalError

log = logging.getLogger("omniserve.stream")

DONE = b"data: [DONE]\n\n"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def usage_object(usage: Usage) -> dict[str, Any]:
    """The vendor's usage: parents are sums of details; only details that apply are present."""
    p, c = usage.prompt, usage.completion
    completion_details: dict[str, int] = {}
    if c.audio:
        completion_details["audio_tokens"] = c.audio
    if c.reasoning:
        completion_details["reasoning_tokens"] = c.reasoning
    completion_details["text_tokens"] = c.text
    prompt_details: dict[str, int] = {"text_tokens": p.text}
    for key, value in (
        ("image_tokens", p.image),
        ("audio_tokens", p.audio),
        ("video_tokens", p.video),
    ):
        if value:
            prompt_details[key] = value
    return {
        "prompt_tokens": p.total,
        "completion_tokens": c.total,
        "total_tokens": p.total + c.total,
        "completion_tokens_details": completion_details,
        "prompt_tokens_details": prompt_details,
    }


class ChunkEncoder:
    """Builds the chunks of one completion."""

    def __init__(self, job: GenerationJob, *, created: int | None = None) -> None:
        self.completion_id = f"chatcmpl-{job.request_id}"
        self.audio_id = f"audio_{job.request_id}"
        self.model = job.model_name
        self.thinking = job.thinking
        self.created = int(time.time()) if created is None else created

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
        return self._delta({"content": text})

    def reasoning(self, text: str) -> bytes:
        return self._delta({"content": None, "reasoning_content": text})

    def audio(self, pcm: bytes, transcript: str | None = None) -> bytes:
        audio: dict[str, Any] = {
            "data": base64.b64encode(pcm).decode("ascii"),
            "expires_at": self.created,
            "id": self.audio_id,
        }
        if transcript is not None:
            audio["transcript"] = transcript
        return self._delta({"audio": audio})

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
        body = {
            "error": {
                "message": err.message,
                "type": err.type,
                "param": err.param,
                "code": err.code,
            }
        }
        return b"data: " + _dumps(body) + b"\n\n"


async def encode_stream(
    job: GenerationJob,
    events: AsyncIterator[EngineEvent],
    *,
    include_usage: bool,
    transcript: bool = False,
    created: int | None = None,
) -> AsyncIterator[bytes]:
    """SSE bytes for one completion.

    An error before the first event propagates (the API answers it with an HTTP error); after
    that it becomes a ``data: {"error": …}`` event followed by ``[DONE]``. Closing this iterator
    closes the engine's.
    """
    enc = ChunkEncoder(job, created=created)
    started = False
    try:
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
                if event.pcm:
                    yield enc.audio(event.pcm, event.transcript if transcript else None)
            elif isinstance(event, Finished):
                yield enc.finish(event.reason)
                if include_usage:
                    yield enc.usage(event.usage)
                yield DONE
                return
        raise InternalError("The engine ended the stream without finishing it.")
    except ApiError as exc:
        if not started:
            raise
        log.warning("stream %s failed: %r", enc.completion_id, exc)
        yield enc.error(exc)
        yield DONE
    except Exception:
        if not started:
            raise
        log.exception("stream %s failed", enc.completion_id)
        yield enc.error(InternalError())
        yield DONE
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
