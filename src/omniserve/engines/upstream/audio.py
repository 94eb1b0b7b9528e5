"""OpenAI's audio endpoints forwarded to an upstream's own: ``/audio/speech`` to its speech
model (Qwen3-TTS on vLLM-Omni, OpenAI's TTS models), ``/audio/transcriptions`` to its speech
recognizer (Whisper on vLLM, OpenAI's).

Each call goes to the least busy replica that is up, moving on to another while nothing has
been answered, with the upstream's errors mapped as chat's are (``errors.upstream_error``).
Speech is asked for as raw PCM and arrives as omniserve's audio events (resampled to 24 kHz
where the upstream speaks at another rate); a transcription is asked for as ``verbose_json``
(``json`` where the upstream takes only that) and read into a ``Transcript``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import httpx

from omniserve.audio_tasks import (
    WHISPER_LANGUAGES,
    Heard,
    SpeechTask,
    TranscriptionTask,
    wav_bytes,
)
from omniserve.config import UpstreamSpec
from omniserve.engines.upstream.errors import (
    UpstreamBroken,
    UpstreamBusy,
    UpstreamError,
    describe,
    refusal,
)
from omniserve.engines.upstream.pool import ReplicaSet
from omniserve.engines.upstream.stream import AudioNormalizer
from omniserve.events import PCM_SAMPLE_BYTES, AudioDelta, EngineEvent, Finished
from omniserve.job import CompletionTokens, PromptTokens, Usage
from omniserve.speech.recognizer import Segment, Transcript
from omniserve.tokens import QwenTokenizer

log = logging.getLogger("omniserve.upstream")

_CODES = {name: code for code, name in WHISPER_LANGUAGES.items()}
_PCM_TYPES = ("audio/pcm", "audio/l16", "application/octet-stream", "audio/raw")
# A transcription's JSON answer is read whole; more than this is not a transcript.
MAX_TRANSCRIPT_BYTES = 8 * 1024 * 1024


@contextlib.asynccontextmanager
async def answered(
    replicas: ReplicaSet, path: str, **request: Any
) -> AsyncIterator[httpx.Response]:
    """The first replica's 200 answer to ``POST {base_url}{path}`` (streamed, not yet read);
    a replica that cannot be reached or fails with a retryable error gives way to the next.
    Raises the ``UpstreamError`` the client gets."""
    spec = replicas.spec
    tried: set[int] = set()
    last: UpstreamError | None = None
    async with replicas.slot():
        while (index := replicas.pick(tried)) is not None:
            tried.add(index)
            replica = replicas.begin(index)
            try:
                built = replicas.client.build_request(
                    "POST", f"{replica.base_url}{path}", **request
                )
                async with asyncio.timeout(spec.first_byte_timeout_s):
                    response = await replicas.client.send(built, stream=True)
            except httpx.PoolTimeout:
                replicas.end(replica, ok=None)
                raise UpstreamBusy() from None
            except (httpx.TransportError, TimeoutError) as exc:
                replicas.end(replica, ok=False)
                last = UpstreamBroken(describe(exc))
                log.warning("upstream %s replica %s: %s", spec.name, replica.base_url, last.message)
                continue
            except BaseException:
                replicas.end(replica, ok=None)
                raise
            if response.status_code != 200:
                try:
                    error = await refusal(response, dashscope=spec.kind == "dashscope")
                finally:
                    await response.aclose()
                replicas.end(replica, ok=not error.retryable)
                if not error.retryable:
                    raise error
                last = error
                log.warning("upstream %s replica %s: %s", spec.name, replica.base_url, last.message)
                continue
            ok: bool | None = None
            try:
                yield response
                ok = True
            except (httpx.TransportError, TimeoutError) as exc:
                ok = False
                raise UpstreamBroken(describe(exc)) from None
            except UpstreamError:
                ok = False
                raise
            finally:
                await response.aclose()
                replicas.end(replica, ok=ok)
            return
    raise last or UpstreamBroken(f"no replica of upstream {spec.name} is available")


def speech_voice(spec: UpstreamSpec, voice: str) -> str:
    """The upstream's voice for ``voice``: mapped through ``voices`` (any case), else as sent."""
    mapped = {k.lower(): v for k, v in spec.voices.items()}
    return mapped.get(voice.lower(), voice)


async def read_aloud(
    replicas: ReplicaSet,
    task: SpeechTask,
    tokenizer: QwenTokenizer,
    *,
    chunk_bytes: int,
    audio_tokens_per_second: float,
) -> AsyncGenerator[EngineEvent, None]:
    """The upstream's speech model reading ``task.text``, as audio events and ``Finished``."""
    spec = replicas.spec
    assert spec.speech_model is not None
    body: dict[str, Any] = {
        "model": spec.speech_model,
        "input": task.text,
        "voice": speech_voice(spec, task.voice),
        "response_format": "pcm",
    }
    if task.speed != 1.0:
        body["speed"] = task.speed
    if task.instructions:
        body["instructions"] = task.instructions
    normalizer = AudioNormalizer(spec.audio_rate)
    held = bytearray()
    samples = 0
    async with answered(
        replicas, "/audio/speech", json=body, headers={"Accept": "audio/pcm"}
    ) as response:
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind and kind not in _PCM_TYPES:
            raise UpstreamBroken(f"the speech model answered {kind}, not the raw PCM asked for")
        async for data in response.aiter_bytes():
            if data[:4] == b"RIFF":  # a raw stream never starts a chunk with a WAV header
                raise UpstreamBroken("the speech model answered WAV, not the raw PCM asked for")
            held += normalizer.feed(data)
            while len(held) >= chunk_bytes:
                piece = bytes(held[:chunk_bytes])
                del held[:chunk_bytes]
                samples += len(piece) // PCM_SAMPLE_BYTES
                yield AudioDelta(piece)
    held += normalizer.flush()
    if held:
        samples += len(held) // PCM_SAMPLE_BYTES
        yield AudioDelta(bytes(held))
    seconds = samples / 24_000
    usage = Usage(
        PromptTokens(text=tokenizer.count(task.text)),
        CompletionTokens(audio=math.ceil(seconds * audio_tokens_per_second)),
    )
    yield Finished("stop", usage)


def _form(spec: UpstreamSpec, task: TranscriptionTask, response_format: str) -> dict[str, str]:
    assert spec.transcription_model is not None
    form = {"model": spec.transcription_model, "response_format": response_format}
    if task.language:
        form["language"] = task.language
    if task.prompt:
        form["prompt"] = task.prompt
    return form


def _number(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def read_transcript(body: Any, task: TranscriptionTask) -> Transcript:
    """An upstream's ``json`` or ``verbose_json`` answer as a ``Transcript``; ``UpstreamBroken``
    when it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise UpstreamBroken("the transcription model's answer has no text")
    text = body["text"].strip()
    language = body.get("language")
    code = task.language
    if isinstance(language, str) and language:
        lowered = language.strip().lower()
        code = _CODES.get(lowered, lowered if lowered in WHISPER_LANGUAGES else code)
    duration = _number(body.get("duration"), task.audio.seconds)
    segments: list[Segment] = []
    for item in body.get("segments") or ():
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            continue
        start = _number(item.get("start"), 0.0)
        end = max(start, _number(item.get("end"), duration))
        segments.append(Segment(round(start, 3), round(end, 3), item["text"].strip()))
    if not segments and text:
        segments.append(Segment(0.0, round(duration, 3), text))
    return Transcript(text, code, duration, tuple(segments))


async def _transcribed(
    replicas: ReplicaSet, task: TranscriptionTask, wav: bytes, response_format: str
) -> Any:
    form = _form(replicas.spec, task, response_format)
    files = {"file": ("audio.wav", wav, "audio/wav")}
    async with answered(replicas, "/audio/transcriptions", data=form, files=files) as response:
        raw = bytearray()
        async for data in response.aiter_bytes():
            raw += data
            if len(raw) > MAX_TRANSCRIPT_BYTES:
                raise UpstreamBroken("the transcription model's answer is too long")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UpstreamBroken("the transcription model's answer is not JSON") from None


async def transcribe(
    replicas: ReplicaSet, task: TranscriptionTask, tokenizer: QwenTokenizer
) -> Heard:
    """``task`` heard by the upstream's transcription model."""
    wav = await anyio.to_thread.run_sync(wav_bytes, task.audio)
    try:
        body = await _transcribed(replicas, task, wav, "verbose_json")
    except UpstreamError as exc:
        # Some models (OpenAI's gpt-4o-transcribe) give only json: segments are then one.
        refused = "verbose_json" in exc.message or "response_format" in exc.message
        if exc.status != 400 or not refused:
            raise
        body = await _transcribed(replicas, task, wav, "json")
    transcript = read_transcript(body, task)
    usage = Usage(
        PromptTokens(audio=task.audio.tokens),
        CompletionTokens(text=tokenizer.count(transcript.text)),
    )
    return Heard(transcript, usage, by=f"upstream {replicas.spec.name}")
