"""``POST /v1/audio/speech``: OpenAI's text-to-speech, read by the server's built-in voice.

Voice tools (Open WebUI, LibreChat, most TTS plugins) call this endpoint. The text is read
sentence by sentence by the same speech as chat answers (espeak-ng, or Kokoro with
``speech.backend = "kokoro"``), in the language of each sentence, and streamed as it is made:
as a file of ``response_format`` (mp3 by default; opus, aac, flac encoded as they stream; wav
with an open-ended header; pcm raw), or with ``stream_format: "sse"`` as
``speech.audio.delta`` events and a last ``speech.audio.done`` with the usage. Voices are the
catalog's (``Cherry``, ``Ethan``…), and OpenAI's names stand for one of them (docs).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import math
import struct
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Literal

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response, StreamingResponse

from omniserve.accounts.auth import Caller
from omniserve.api.auth import guard
from omniserve.api.chat import read_body
from omniserve.api.drain import Drain, shutting_down
from omniserve.api.errors import error_response
from omniserve.audio_tasks import OPENAI_VOICES, SpeechTask
from omniserve.catalog import Voice
from omniserve.errors import ApiError, InternalError, InvalidParameter, ServiceUnavailable
from omniserve.events import PCM_RATE, AudioDelta, EngineEvent, Finished, TextDelta
from omniserve.job import GenerationJob, PromptTokens, Usage, new_request_id
from omniserve.service import Booking, ChatService
from omniserve.speech import speak_along
from omniserve.speech.codecs import FORMATS, StreamEncoder
from omniserve.speech.language import detect_language
from omniserve.speech.synth import Rescue, SpeechError, Synthesizer
from omniserve.speech.voices import EspeakVoice

router = APIRouter()
KEY = Depends(guard("key"))

MAX_INPUT = 4096  # characters, as OpenAI's
MAX_BODY = 256 * 1024

MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


class SpeechRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = Field(min_length=1, max_length=100)
    input: str
    voice: str = Field(min_length=1)
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = None  # OpenAI's style prompt: the built-in voice has none


class _Paced:
    """A synthesizer reading ``factor`` times as fast (espeak-ng's words a minute; Kokoro
    follows them)."""

    def __init__(self, synth: Synthesizer, factor: float) -> None:
        self.synth, self.factor = synth, factor
        rescue = synth.rescue
        self.rescue = (
            None
            if rescue is None
            else Rescue(_Paced(rescue.by, factor), rescue.first_audio_s, rescue.margin_s)
        )

    async def synthesize(
        self,
        text: str,
        voice: EspeakVoice,
        *,
        deadline: float | None = None,
        playing: bool = True,
    ) -> bytes:
        speed = min(450, max(80, round(voice.speed * self.factor)))
        paced = dataclasses.replace(voice, speed=speed)
        return await self.synth.synthesize(text, paced, deadline=deadline, playing=playing)

    async def check(self) -> None:
        await self.synth.check()

    async def close(self) -> None:
        """The wrapped synthesizer is the server's: it stays open."""


def find_voice(service: ChatService, name: str) -> Voice:
    """A catalog voice of a served model by its name (any case), or OpenAI's name for one."""
    wanted = OPENAI_VOICES.get(name.lower(), name).lower()
    names: dict[str, Voice] = {}
    for model in service.models():
        for each in model.voices:
            names.setdefault(each.name.lower(), each)
    voice = names.get(wanted)
    if voice is None:
        known = sorted({v.name for v in names.values()}) + sorted(OPENAI_VOICES)
        raise InvalidParameter(
            f"Unknown voice {name!r}; the voices are {', '.join(known)}.", param="voice"
        )
    return voice


def parse(body: bytes | bytearray) -> SpeechRequest:
    try:
        request = SpeechRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "json_invalid":
            raise InvalidParameter("Request body is not valid JSON.") from None
        raise InvalidParameter(f"{first['msg']}: {where}", param=where) from None
    if not request.input.strip():
        raise InvalidParameter("input must not be empty.", param="input")
    if len(request.input) > MAX_INPUT:
        raise InvalidParameter(
            f"input is {len(request.input)} characters; the limit is {MAX_INPUT}.", param="input"
        )
    return request


def wav_header() -> bytes:
    """A WAV header for PCM16 mono 24 kHz of unknown length (as streaming servers send)."""
    unknown = 0xFFFFFFFF
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, PCM_RATE, PCM_RATE * 2, 2, 16)
        + b"data"
        + struct.pack("<I", unknown)
    )


async def _text(text: str) -> AsyncIterator[EngineEvent]:
    yield TextDelta(text)
    yield Finished("stop", Usage())


def built_in(
    service: ChatService, synth: Synthesizer, request: SpeechRequest, voice: Voice
) -> AsyncGenerator[EngineEvent, None]:
    """The text read by the server's built-in voice, sentence by sentence, in each one's
    language."""
    if request.speed != 1.0:
        synth = _Paced(synth, request.speed)
    language = detect_language(request.input, allowed=voice.languages)
    model = next(iter(service.models()))
    return speak_along(
        _text(request.input),
        synth,
        voice,
        languages=(language, *[lang for lang in voice.languages if lang != language]),
        chunk_bytes=service.chunk_bytes,
        tokens_per_second=model.tokens.output_audio_tokens_per_second,
    )


def estimate_job(service: ChatService, request: SpeechRequest, request_id: str) -> GenerationJob:
    """The request as admission sees it: the text in, about a second of speech for every
    twelve characters out (at most)."""
    spec = service.limits_model(request.model)
    seconds = len(request.input) / 12 / request.speed + 1
    audio_tokens = math.ceil(seconds * spec.tokens.output_audio_tokens_per_second)
    return GenerationJob(
        request_id=request_id,
        model_name=request.model,
        model=spec,
        messages=(),
        prompt_tokens=PromptTokens(text=service.tokenizer.count(request.input)),
        max_tokens=audio_tokens,
    )


async def _encoded(
    events: AsyncGenerator[EngineEvent, None],
    fmt: str,
    booking: Booking,
    prompt: PromptTokens,
) -> AsyncGenerator[tuple[bytes, Usage | None], None]:
    """The speech in ``fmt``, piece by piece, and at the end (``b"", usage``); the request is
    settled when it ends, however it ends."""
    codec = StreamEncoder(fmt) if fmt in FORMATS else None
    status, usage = "error", None
    code: str | None = "InternalError"
    try:
        if fmt == "wav":
            yield wav_header(), None
        async for event in events:
            booking.observe(event)
            if isinstance(event, AudioDelta) and event.pcm:
                data = event.pcm
                if codec is not None:
                    data = await anyio.to_thread.run_sync(codec.encode, event.pcm)
                if data:
                    yield data, None
            elif isinstance(event, Finished):
                if codec is not None:
                    tail = await anyio.to_thread.run_sync(codec.finish)
                    if tail:
                        yield tail, None
                usage = event.usage
                if not usage.prompt.total:  # the built-in voice counts only what it said
                    usage = dataclasses.replace(usage, prompt=prompt)
                status, code = "ok", None
                yield b"", usage
                return
    except ApiError as exc:
        status, code = "error", exc.code
        raise
    except (GeneratorExit, asyncio.CancelledError):
        if status != "ok":
            status, code = "disconnected", None
        raise
    finally:
        await events.aclose()
        if codec is not None:
            codec.close()
        await booking.close(status, code, usage, "stop" if usage else None)


async def create_speech(request: Request, caller: Caller = KEY) -> Response:
    """Authenticated (the guard), checked, admitted, then read aloud as it streams: by the
    engine's own voice where it has one (``Engine.read_aloud``), else the built-in voice."""
    service: ChatService = request.app.state.service
    drain: Drain = request.app.state.drain
    request_id = new_request_id()
    headers = {"x-request-id": request_id}
    events: AsyncGenerator[EngineEvent, None] | None = None
    try:
        if drain.draining:
            raise shutting_down()
        body = await read_body(request, MAX_BODY)
        asked = await anyio.to_thread.run_sync(parse, body)
        task = SpeechTask(
            request_id, asked.model, asked.input, asked.voice, asked.speed, asked.instructions
        )
        events = service.engine.read_aloud(task)
        if events is None:
            voice = find_voice(service, asked.voice)
            synth = await service.built_in_speech()
            events = built_in(service, synth, asked, voice)
        booking = await service.book(caller, estimate_job(service, asked, request_id))
    except ApiError as exc:
        if events is not None:
            await events.aclose()
        return error_response(exc, request_id)
    except SpeechError as exc:
        return error_response(
            ServiceUnavailable(f"The server's built-in speech is unavailable: {exc}"), request_id
        )
    prompt = PromptTokens(text=service.tokenizer.count(asked.input))
    pieces = _encoded(events, asked.response_format, booking, prompt)
    try:
        first = await anext(pieces)
    except ApiError as exc:  # refused by the engine before any audio (a voice it lacks)
        return error_response(exc, request_id)
    except StopAsyncIteration:
        return error_response(InternalError("The speech ended before it began."), request_id)

    async def audio() -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(pieces):
            data, _ = first
            if data:
                yield data
            async for data, _ in pieces:
                if data:
                    yield data

    async def sse() -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(pieces):
            item = first
            while True:
                data, usage = item
                if usage is not None:
                    done = {"type": "speech.audio.done", "usage": openai_usage(usage)}
                    yield b"data: " + json.dumps(done).encode() + b"\n\n"
                    return
                if data:
                    event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
                    yield b"data: " + json.dumps(event).encode() + b"\n\n"
                try:
                    item = await anext(pieces)
                except StopAsyncIteration:
                    return

    if asked.stream_format == "sse":
        return StreamingResponse(
            sse(), media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"}
        )
    return StreamingResponse(
        audio(), media_type=MEDIA_TYPES[asked.response_format], headers=headers
    )


def openai_usage(usage: Usage) -> dict[str, int]:
    """A speech request's usage as OpenAI reports it."""
    return {
        "input_tokens": usage.prompt.total,
        "output_tokens": usage.completion.total,
        "total_tokens": usage.total,
    }


for prefix in ("/compatible-mode/v1", "/v1"):
    router.add_api_route(
        f"{prefix}/audio/speech",
        create_speech,
        methods=["POST"],
        include_in_schema=prefix == "/v1",
        response_model=None,
        summary="Text to speech with the built-in voice (OpenAI's audio.speech)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": SpeechRequest.model_json_schema()}},
            }
        },
    )
