"""``POST /v1/audio/transcriptions``: OpenAI's speech-to-text, heard by the server's recognizer.

Voice tools (Open WebUI, LibreChat, dictation plugins) upload a recording as multipart form
data and get its words back as ``json``, ``text``, ``verbose_json``, ``srt`` or ``vtt``, or with
``stream=true`` as ``transcript.text.delta`` events and a last ``transcript.text.done``. The audio
is decoded by the same hardened code as chat audio input (the same formats, limits and 400s),
and heard by the offline recognizer (Whisper, ``[recognizer] enabled = true``). See
docs/audio-endpoints.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message

from omniserve.accounts.auth import Caller
from omniserve.api.auth import guard
from omniserve.api.drain import Drain, shutting_down
from omniserve.api.errors import error_response
from omniserve.audio_tasks import WHISPER_LANGUAGES, Heard, Transcriber, TranscriptionTask
from omniserve.catalog import MediaLimits
from omniserve.errors import ApiError, InvalidMedia, InvalidParameter, PayloadTooLarge
from omniserve.job import AudioInput, GenerationJob, PromptTokens, new_request_id
from omniserve.media.audio import EMPTY, WEBM, decode_audio
from omniserve.media.budget import AUDIO_COST, DecodeBudget
from omniserve.media.policy import MediaPolicy, policy_for
from omniserve.service import ChatService
from omniserve.speech.recognizer import Segment, Transcript

log = logging.getLogger("omniserve")
router = APIRouter()
KEY = Depends(guard("key"))

MAX_FILE_BYTES = 25 * 1024 * 1024  # OpenAI's limit
MAX_FIELDS = 20
MAX_FIELD_BYTES = 16 * 1024  # one text field (a prompt is a few hundred characters)
# What the body may hold besides the file: the fields and the parts' headers and boundaries.
FORM_OVERHEAD_BYTES = MAX_FIELDS * MAX_FIELD_BYTES + 64 * 1024

MAX_MODEL_NAME = 100  # as the ledger keeps it
FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
STREAMED_FORMATS = ("json", "text")
GRANULARITY_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")
NO_RECOGNIZER = (
    "This server has no speech recognizer: start it with [recognizer] enabled = true "
    "(pip install 'omniserve[asr]')."
)
NOT_MULTIPART = (
    "Send the audio as multipart/form-data with a 'file' and a 'model' field, as OpenAI's "
    "API takes it"
)


@dataclass(frozen=True)
class TranscriptionRequest:
    """The form's fields, checked; the file is read only after they pass."""

    file: UploadFile
    model: str
    language: str | None
    prompt: str | None
    response_format: str
    stream: bool


# -- reading the form ------------------------------------------------------------------------


def file_limit(service: ChatService) -> int:
    """The largest file accepted: OpenAI's 25 MiB, or less where the server takes less."""
    return min(MAX_FILE_BYTES, service.settings.max_request_bytes)


def too_large(limit: int) -> PayloadTooLarge:
    error = PayloadTooLarge(limit)
    error.param = "file"
    return error


async def read_form(request: Request, limit: int) -> FormData:
    """The multipart form, refused with 413 as soon as the body passes what a file of ``limit``
    bytes and the fields need (from Content-Length before reading, then while reading)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "multipart/form-data":
        got = f"'{media_type}'" if media_type else "none"
        raise InvalidParameter(f"{NOT_MULTIPART} (Content-Type: {got}).", param="file")
    most = limit + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > most:
        raise too_large(limit)
    received = 0

    async def bounded() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > most:
                raise too_large(limit)
        return message

    try:
        return await Request(request.scope, bounded).form(
            max_files=1, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES
        )
    except (HTTPException, MultiPartException) as exc:
        detail = exc.detail if isinstance(exc, HTTPException) else exc.message
        raise InvalidParameter(
            f"The multipart/form-data body cannot be read: {detail}", param="file"
        ) from None


def text_field(form: FormData, name: str) -> str | None:
    """A text field's value, stripped; None when absent or empty (clients send empty fields
    for options left unset)."""
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidParameter(f"'{name}' must be a text field, not a file.", param=name)
    return value.strip() or None


def checked(form: FormData) -> TranscriptionRequest:
    """The request the form describes; ``InvalidParameter`` naming the first field at fault."""
    file = form.get("file")
    if file is None:
        raise InvalidParameter("Missing the audio: send it as the 'file' field.", param="file")
    if not isinstance(file, UploadFile):
        raise InvalidParameter(
            "'file' must be an uploaded file (a form part with a filename), not a text field.",
            param="file",
        )
    model = text_field(form, "model")
    if model is None:
        raise InvalidParameter(
            "Missing 'model': name one, such as 'whisper-1' (every name is answered by the "
            "server's speech recognizer).",
            param="model",
        )
    if len(model) > MAX_MODEL_NAME:
        raise InvalidParameter(
            f"'model' is {len(model)} characters; the limit is {MAX_MODEL_NAME}.", param="model"
        )
    response_format = text_field(form, "response_format") or "json"
    if response_format not in FORMATS:
        raise InvalidParameter(
            f"response_format must be one of {', '.join(FORMATS)}, not {response_format!r}.",
            param="response_format",
        )
    stream = _flag(text_field(form, "stream"), "stream")
    if stream and response_format not in STREAMED_FORMATS:
        raise InvalidParameter(
            f"stream=true works with response_format json or text, not {response_format!r}.",
            param="stream",
        )
    _check_granularities(form)
    _check_temperature(text_field(form, "temperature"))
    return TranscriptionRequest(
        file=file,
        model=model,
        language=text_field(form, "language"),
        prompt=text_field(form, "prompt"),
        response_format=response_format,
        stream=stream,
    )


def _flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise InvalidParameter(f"'{name}' must be true or false, not {value!r}.", param=name)


def _check_granularities(form: FormData) -> None:
    for field in GRANULARITY_FIELDS:
        for value in form.getlist(field):
            if not isinstance(value, str) or value.strip() == "segment":
                continue
            if value.strip() == "word":
                raise InvalidParameter(
                    "Word timestamps are not available on this server; ask for "
                    "timestamp_granularities[]=segment (the segments of verbose_json).",
                    param="timestamp_granularities[]",
                )
            raise InvalidParameter(
                f"timestamp_granularities[] may be 'segment', not {value!r}.",
                param="timestamp_granularities[]",
            )


def _check_temperature(value: str | None) -> None:
    """Accepted as OpenAI accepts it, and not used: the recognizer decodes greedily."""
    if value is None:
        return
    try:
        temperature = float(value)
    except ValueError:
        temperature = math.nan
    if not 0.0 <= temperature <= 1.0:
        raise InvalidParameter(
            f"temperature must be a number from 0 to 1, not {value!r}.", param="temperature"
        )


# -- decoding --------------------------------------------------------------------------------


def decode(
    data: bytes, policy: MediaPolicy, limits: MediaLimits, budget: DecodeBudget
) -> AudioInput:
    """``data`` decoded to 16 kHz mono by chat audio input's decoder (and WebM, which browsers
    record) within the server's decoding memory. Blocking: on a worker thread."""
    with budget.hold(AUDIO_COST, "this audio"):
        return decode_audio(data, policy, limits, extra_formats=WEBM)


async def read_audio(service: ChatService, upload: UploadFile, limit: int) -> AudioInput:
    """The uploaded file decoded; ``InvalidMedia`` (param ``file``) for audio that chat input
    would refuse, 413 past ``limit``."""
    if upload.size is not None and upload.size > limit:
        raise too_large(limit)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise too_large(limit)
    model = next(iter(service.models()))
    policy = policy_for(model, service.engine.media_accounting(model))
    try:
        if not data:
            raise InvalidMedia(EMPTY)
        return await anyio.to_thread.run_sync(
            decode, data, policy, model.media, service.media.budget
        )
    except InvalidMedia as exc:
        exc.param = "file"
        raise


async def transcribe(transcriber: Transcriber, task: TranscriptionTask) -> Heard:
    try:
        return await transcriber(task)
    except ValueError:  # the only malformed input left is a language Whisper does not know
        raise InvalidParameter(
            f"language {task.language!r} is not one the speech recognizer knows; send an "
            "ISO-639-1 code such as 'en' or 'zh', or leave it out to have the language detected.",
            param="language",
        ) from None


def estimate_job(service: ChatService, task: TranscriptionTask) -> GenerationJob:
    """The request as admission sees it: the recording in, some eight words a second out."""
    return GenerationJob(
        request_id=task.request_id,
        model_name=task.model,
        model=service.limits_model(task.model),
        messages=(),
        prompt_tokens=PromptTokens(audio=task.audio.tokens),
        max_tokens=int(task.audio.seconds * 8) + 32,
    )


# -- the answers -----------------------------------------------------------------------------


def usage(transcript: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(transcript.duration_s)}


def as_json(transcript: Transcript) -> dict[str, Any]:
    return {"text": transcript.text, "usage": usage(transcript)}


def as_verbose_json(transcript: Transcript) -> dict[str, Any]:
    code = transcript.language
    return {
        "task": "transcribe",
        "language": WHISPER_LANGUAGES.get(code, code) if code else "unknown",
        "duration": round(transcript.duration_s, 3),
        "text": transcript.text,
        "segments": [
            {
                "id": i,
                "seek": 0,
                "start": s.start_s,
                "end": s.end_s,
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
            }
            for i, s in enumerate(transcript.segments)
        ],
        "usage": usage(transcript),
    }


def timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS,mmm`` (SubRip) or ``HH:MM:SS.mmm`` (WebVTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cue_text(segment: Segment) -> str:
    """One line: a blank line would end the cue, and an arrow would read as its timing."""
    return " ".join(segment.text.split()).replace("-->", "->")


def as_srt(transcript: Transcript) -> str:
    return "".join(
        f"{i}\n{timestamp(s.start_s, ',')} --> {timestamp(s.end_s, ',')}\n{_cue_text(s)}\n\n"
        for i, s in enumerate(transcript.segments, 1)
    )


def as_vtt(transcript: Transcript) -> str:
    cues = "".join(
        f"{timestamp(s.start_s, '.')} --> {timestamp(s.end_s, '.')}\n{_vtt_text(s)}\n\n"
        for s in transcript.segments
    )
    return "WEBVTT\n\n" + cues


def _vtt_text(segment: Segment) -> str:
    """WebVTT cue text is markup: its ampersands and angle brackets are escaped."""
    text = _cue_text(segment)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def deltas(transcript: Transcript) -> list[str]:
    """The text segment by segment, each piece with what joins it to the one before (a space,
    or nothing in languages written without spaces), so the pieces add up to the text."""
    pieces: list[str] = []
    text, at = transcript.text, 0
    for segment in transcript.segments:
        found = text.find(segment.text, at)
        if found < 0:  # not expected: the text is the segments joined
            break
        end = found + len(segment.text)
        pieces.append(text[at:end])
        at = end
    if at < len(text):
        pieces.append(text[at:])
    return pieces


def _event(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"


async def events(transcript: Transcript) -> AsyncGenerator[bytes, None]:
    for delta in deltas(transcript):
        yield _event({"type": "transcript.text.delta", "delta": delta})
    done = {"type": "transcript.text.done", "text": transcript.text, "usage": usage(transcript)}
    yield _event(done)


def answer(transcript: Transcript, asked: TranscriptionRequest, request_id: str) -> Response:
    headers = {"x-request-id": request_id}
    if asked.stream:
        return StreamingResponse(
            events(transcript),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )
    text_formats: dict[str, tuple[Callable[[Transcript], str], str]] = {
        "text": (lambda t: t.text + "\n", "text/plain; charset=utf-8"),
        "srt": (as_srt, "text/plain; charset=utf-8"),
        "vtt": (as_vtt, "text/vtt; charset=utf-8"),
    }
    if asked.response_format in text_formats:
        render, media_type = text_formats[asked.response_format]
        return Response(render(transcript), media_type=media_type, headers=headers)
    if asked.response_format == "verbose_json":
        return JSONResponse(as_verbose_json(transcript), headers=headers)
    return JSONResponse(as_json(transcript), headers=headers)


# -- the route -------------------------------------------------------------------------------


async def create_transcription(request: Request, caller: Caller = KEY) -> Response:
    """Authenticated (the guard), read and checked, decoded off the event loop, admitted, and
    heard by whoever hears it here (``ChatService.transcriber_for``)."""
    service: ChatService = request.app.state.service
    drain: Drain = request.app.state.drain
    request_id = new_request_id()
    form: FormData | None = None
    try:
        if drain.draining:
            raise shutting_down()
        if service.recognizer is None and not service.engine.hears:
            raise InvalidParameter(NO_RECOGNIZER, param="model")
        limit = file_limit(service)
        form = await read_form(request, limit)
        asked = checked(form)
        audio = await read_audio(service, asked.file, limit)
        task = TranscriptionTask(request_id, asked.model, audio, asked.language, asked.prompt)
        transcriber = service.transcriber_for(asked.model)
        if transcriber is None:
            raise InvalidParameter(NO_RECOGNIZER, param="model")
        booking = await service.book(
            caller, estimate_job(service, task), input_audio_seconds=audio.seconds
        )
        status, usage = "error", None
        code: str | None = "InternalError"
        try:
            heard = await transcribe(transcriber, task)
            status, code, usage = "ok", None, heard.usage
        except ApiError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            status, code = "disconnected", None
            raise
        finally:
            await booking.close(status, code, usage, "stop" if usage else None)
    except ApiError as exc:
        return error_response(exc, request_id)
    finally:
        if form is not None:
            await form.close()
    log.info("transcription %s heard by %s", request_id, heard.by)
    return answer(heard.transcript, asked, request_id)


# The form, for the schema: the route reads the body itself.
FORM_SCHEMA = {
    "type": "object",
    "required": ["file", "model"],
    "properties": {
        "file": {"type": "string", "format": "binary"},
        "model": {"type": "string", "minLength": 1, "example": "whisper-1"},
        "language": {"type": "string", "example": "en"},
        "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": list(FORMATS), "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
        "timestamp_granularities[]": {
            "type": "array",
            "items": {"type": "string", "enum": ["segment"]},
        },
        "stream": {"type": "boolean", "default": False},
    },
}

for prefix in ("/compatible-mode/v1", "/v1"):
    router.add_api_route(
        f"{prefix}/audio/transcriptions",
        create_transcription,
        methods=["POST"],
        include_in_schema=prefix == "/v1",
        response_model=None,
        summary="Speech to text with the server's recognizer (OpenAI's audio.transcriptions)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": {"schema": FORM_SCHEMA}},
            }
        },
    )
