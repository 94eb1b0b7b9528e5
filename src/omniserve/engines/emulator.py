"""The offline emulator: a real engine that needs no model.

Its reply is a function of the normalized request and the seed: it says what it received, in the
language of the last user message, streamed token by token with the real Qwen vocabulary, with
optional pacing so clients meet realistic streams. Speech comes from ``omniserve.speech``. With
the server's speech recognizer it also says what it heard in the last user turn's audio (the
words are Whisper's: deterministic for the same audio, on the same machine).

A request a rule of the emulator's rules file answers (``GenerationJob.script``,
``scenarios.py``) gets the rule's text, reasoning, finish reason and pacing instead, and a
fault that comes before the first byte is raised here as the HTTP error it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncGenerator, Iterator
from typing import TYPE_CHECKING

import numpy as np

from omniserve.catalog import Language
from omniserve.config import EmulatorSettings
from omniserve.engines.base import Engine
from omniserve.engines.emulator_text import (
    MediaFacts,
    Received,
    compose_answer,
    compose_reasoning,
)
from omniserve.events import EngineEvent, Finished, FinishReason, ReasoningDelta, TextDelta
from omniserve.job import (
    AudioInput,
    CompletionTokens,
    GenerationJob,
    ImageInput,
    MediaItem,
    Usage,
    VideoInput,
)
from omniserve.speech.language import detect_language
from omniserve.tokens import QwenTokenizer

if TYPE_CHECKING:
    from omniserve.speech.recognizer import Recognizer


def last_user_text(job: GenerationJob) -> str:
    for message in reversed(job.messages):
        if message.role == "user":
            return message.text
    return ""


def media_facts(item: MediaItem, heard: str = "") -> MediaFacts:
    d = item.decoded
    if isinstance(d, ImageInput):
        return MediaFacts("image", d.tokens, d.source_width, d.source_height)
    if isinstance(d, AudioInput):
        return MediaFacts("audio", d.tokens, seconds=d.seconds, heard=heard)
    if isinstance(d, VideoInput):
        return MediaFacts(
            "frames" if d.format == "frames" else "video",
            d.tokens,
            d.source_width,
            d.source_height,
            seconds=d.seconds,
            frames=d.frame_count,
            audio_tokens=d.audio.tokens if d.audio else 0,
            heard=heard,
        )
    return MediaFacts(item.modality, 0, frames=item.frames)


def received_from(job: GenerationJob, heard: dict[int, str] | None = None) -> Received:
    """The facts of ``job``; ``heard``: the words of audio items, by ``id()`` of the item."""
    heard = heard or {}
    roles = [m.role for m in job.messages]
    inputs: dict[str, int] = {}
    for message in job.messages:
        for item in message.media:
            inputs[item.modality] = inputs.get(item.modality, 0) + 1
    media = tuple(media_facts(i, heard.get(id(i), "")) for m in job.messages for i in m.media)
    return Received(
        model=job.model_name,
        messages=len(roles),
        user=roles.count("user"),
        assistant=roles.count("assistant"),
        system=roles.count("system"),
        inputs=inputs,
        prompt_tokens=job.prompt_tokens.total,
        last_user_text=last_user_text(job),
        voice=job.voice.name if job.voice else None,
        system_ignored=job.audio_output
        and not job.model.system_prompt_with_audio
        and "system" in roles,
        media=media,
    )


def request_digest(job: GenerationJob) -> int:
    """A stable number from the normalized request and the seed; ids and timing excluded."""
    normalized = {
        "model": job.model_name,
        "messages": [
            [m.role, m.text, [[i.kind, _source_digest(i.source)] for i in m.media]]
            for m in job.messages
        ],
        "voice": job.voice.name if job.voice else None,
        "thinking": job.thinking,
        "seed": job.sampling.seed,
    }
    blob = json.dumps(normalized, sort_keys=True, ensure_ascii=False).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def _source_digest(source: str | tuple[str, ...]) -> str:
    parts = (source,) if isinstance(source, str) else source
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class EmulatorEngine(Engine):
    """Deterministic replies, real token counts, configurable pacing."""

    name = "emulator"
    speaks = False

    def __init__(self, settings: EmulatorSettings, tokenizer: QwenTokenizer) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.recognizer: Recognizer | None = None

    def use_recognizer(self, recognizer: Recognizer) -> None:
        """With a recognizer, a reply says what it heard in the last user turn's audio."""
        self.recognizer = recognizer

    def language_of(self, job: GenerationJob, heard: str = "") -> Language:
        text = last_user_text(job) or heard
        return detect_language(text, allowed=job.model.output_languages)

    async def _hear(self, job: GenerationJob) -> dict[int, str]:
        """The words of the audio clips and video soundtracks of the last user message
        (earlier turns were heard when they were answered), by ``id()`` of their items."""
        if self.recognizer is None:
            return {}
        last = next((m for m in reversed(job.messages) if m.role == "user"), None)
        heard: dict[int, str] = {}
        for item in last.media if last else ():
            d = item.decoded
            sound = d.audio if isinstance(d, VideoInput) else d
            if isinstance(sound, AudioInput) and len(sound.samples):
                pcm = (np.clip(sound.samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
                heard[id(item)] = (await self.recognizer.transcribe_async(pcm)).text
        return heard

    async def generate(self, job: GenerationJob) -> AsyncGenerator[EngineEvent, None]:
        script = job.script
        reply = script.reply if script else None
        fault = script.fault if script else None
        if fault is not None and fault.error is not None and fault.after_chunks == 0:
            raise fault.api_error(mid_stream=False)  # before the first byte: an HTTP error
        scripted_text = reply.text if reply else None
        scripted_reasoning = reply.reasoning if reply else None
        heard: dict[int, str] = {}
        if scripted_text is None or (job.thinking and scripted_reasoning is None):
            heard = await self._hear(job)
        received = received_from(job, heard)
        language = self.language_of(job, " ".join(heard.values()))
        if scripted_text is None:
            answer = compose_answer(received, language, closing=request_digest(job))
        else:
            answer = scripted_text
        pacer = _Pacer(
            _first(reply.tokens_per_second if reply else None, self.settings.tokens_per_second),
            _first(reply.first_token_ms if reply else None, self.settings.first_token_ms) / 1000,
        )
        await pacer.first()

        reasoning_tokens = 0
        if job.thinking:
            budget = job.thinking_budget or job.model.mode_limits(True).max_reasoning
            if scripted_reasoning is None:
                reasoning = compose_reasoning(received, language)
            else:
                reasoning = scripted_reasoning
            for piece, n in self._pieces(reasoning, budget):
                reasoning_tokens += n
                yield ReasoningDelta(piece)
                await pacer.tick(n)

        answer, reason = self._apply_stop(answer, job.sampling.stop)
        text_tokens = 0
        limit = job.max_tokens
        for piece, n in self._pieces(answer, limit):
            text_tokens += n
            yield TextDelta(piece)
            await pacer.tick(n)
        # A piece of several tokens that would cross the limit is held back whole, so the text
        # can end a token or two short of max_tokens; it was still cut by the limit.
        if limit is not None and text_tokens < self.tokenizer.count(answer):
            reason = "length"
        if reply is not None and reply.finish_reason is not None:
            reason = reply.finish_reason
        usage = Usage(
            prompt=job.prompt_tokens,
            completion=CompletionTokens(text=text_tokens, reasoning=reasoning_tokens),
        )
        yield Finished(reason=reason, usage=usage)

    def _pieces(self, text: str, limit: int | None) -> Iterator[tuple[str, int]]:
        used = 0
        for piece, n in self.tokenizer.stream_pieces(text):
            if limit is not None and used + n > limit:
                return
            used += n
            yield piece, n

    @staticmethod
    def _apply_stop(text: str, stops: tuple[str, ...]) -> tuple[str, FinishReason]:
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        return (text[:cut], "stop") if cut >= 0 else (text, "stop")


def _first(given: float | None, default: float) -> float:
    return default if given is None else given


class _Pacer:
    """Sleeps so tokens leave at a steady rate measured from the start, not per token."""

    def __init__(self, tokens_per_second: float, first_token_s: float) -> None:
        self.rate = tokens_per_second
        self.first_token_s = first_token_s
        self.start = time.monotonic()
        self.sent = 0

    async def first(self) -> None:
        if self.first_token_s > 0:
            await asyncio.sleep(self.first_token_s)
        self.start = time.monotonic()

    async def tick(self, tokens: int) -> None:
        self.sent += tokens
        if self.rate <= 0:
            # Unpaced: still give other streams and cancellation a turn every few tokens.
            if self.sent % 16 < tokens:
                await asyncio.sleep(0)
            return
        due = self.start + self.sent / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
