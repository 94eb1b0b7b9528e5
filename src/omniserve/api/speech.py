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

import base64
import contextlib
import dataclasses
import json
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
from omniserve.api.errors import error_response
from omniserve.catalog import Voice
from omniserve.errors import ApiError, InvalidParameter, ServiceUnavailable
from omniserve.events import PCM_RATE, AudioDelta, EngineEvent, Finished, TextDelta
from omniserve.job import Usage, new_request_id
from omniserve.service import ChatService
from omniserve.speech import speak_along
from omniserve.speech.codecs import FORMATS, StreamEncoder
from omniserve.speech.language import detect_language
from omniserve.speech.synth import Rescue, SpeechError, Synthesizer
from omniserve.speech.voices import EspeakVoice

router = APIRouter()
KEY = Depends(guard("key"))

MAX_INPUT = 4096  # characters, as OpenAI's
MAX_BODY = 256 * 1024

# OpenAI's voices, each read by a catalog voice of a like character.
OPENAI_VOICES = {
    "alloy": "Cherry",
    "ash": "Ethan",
    "ballad": "Ryan",
    "coral": "Serena",
    "echo": "Elias",
    "fable": "Roy",
    "nova": "Jennifer",
    "onyx": "Marcus",
    "sage": "Katerina",
    "shimmer": "Vivian",
    "verse": "Aiden",
}

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

    model: str = Field(min_length=1)
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


async def _audio(
    service: ChatService, synth: Synthesizer, request: SpeechRequest, voice: Voice
) -> AsyncGenerator[tuple[bytes, int], None]:
    """The speech in ``response_format``, piece by piece, and at the end (``b"", tokens``)
    the audio tokens."""
    if request.speed != 1.0:
        synth = _Paced(synth, request.speed)
    language = detect_language(request.input, allowed=voice.languages)
    model = next(iter(service.models()))
    events = speak_along(
        _text(request.input),
        synth,
        voice,
        languages=(language, *[lang for lang in voice.languages if lang != language]),
        chunk_bytes=service.chunk_bytes,
        tokens_per_second=model.tokens.output_audio_tokens_per_second,
    )
    fmt = request.response_format
    codec = StreamEncoder(fmt) if fmt in FORMATS else None
    try:
        if fmt == "wav":
            yield wav_header(), 0
        async for event in events:
            if isinstance(event, AudioDelta) and event.pcm:
                data = event.pcm
                if codec is not None:
                    data = await anyio.to_thread.run_sync(codec.encode, event.pcm)
                if data:
                    yield data, 0
            elif isinstance(event, Finished):
                if codec is not None:
                    tail = await anyio.to_thread.run_sync(codec.finish)
                    if tail:
                        yield tail, 0
                yield b"", event.usage.completion.audio
    finally:
        await events.aclose()
        if codec is not None:
            codec.close()


async def create_speech(request: Request, caller: Caller = KEY) -> Response:
    """Authenticated (the guard), then read aloud as it streams."""
    service: ChatService = request.app.state.service
    request_id = new_request_id()
    headers = {"x-request-id": request_id}
    try:
        body = await read_body(request, MAX_BODY)
        asked = await anyio.to_thread.run_sync(parse, body)
        voice = find_voice(service, asked.voice)
        synth = await service.built_in_speech()
        pieces = _audio(service, synth, asked, voice)
        first = await anext(pieces)
    except ApiError as exc:
        return error_response(exc, request_id)
    except SpeechError as exc:
        return error_response(
            ServiceUnavailable(f"The server's built-in speech is unavailable: {exc}"), request_id
        )
    input_tokens = service.tokenizer.count(asked.input)

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
                data, tokens = item
                if data:
                    event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
                    yield b"data: " + json.dumps(event).encode() + b"\n\n"
                else:
                    usage = {
                        "input_tokens": input_tokens,
                        "output_tokens": tokens,
                        "total_tokens": input_tokens + tokens,
                    }
                    done = {"type": "speech.audio.done", "usage": usage}
                    yield b"data: " + json.dumps(done).encode() + b"\n\n"
                    return
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
