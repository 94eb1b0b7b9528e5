"""Speech for engines that only write: text passes straight through, audio follows by sentence.

Three pieces run together: a pump reads the engine and passes text on at once, a speaker
synthesizes finished sentences in order (a couple ahead of the one playing out), and the
generator yields whatever is ready. Closing the generator stops all of it.

Each sentence is synthesized with a deadline: the moment the client's playback would run out
of the audio before it (the first sentence is due at once). The synthesizer serves the earliest
deadline first, so under load every stream stays ahead of its listener. A synthesizer slower
than real time under load (the neural voice) names a quicker one as its rescue: a sentence not
ready shortly before the listener needs it is read by the rescue too, and the first one done
plays, so playback never runs dry.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from omniserve.catalog import Language, Voice
from omniserve.events import (
    PCM_RATE,
    PCM_SAMPLE_BYTES,
    AudioDelta,
    EngineEvent,
    Finished,
    TextDelta,
)
from omniserve.speech.language import detect_language
from omniserve.speech.pcm import CHUNK_ALIGN, chunk_pcm
from omniserve.speech.segmenter import SentenceSegmenter
from omniserve.speech.synth import Synthesizer
from omniserve.speech.voices import EspeakVoice, voice_settings

# Sentences being synthesized at once for one reply: the one about to play and the next.
_LOOKAHEAD = 2
# Events waiting for the consumer; past this the engine is read no faster than it is consumed.
_BACKLOG = 64


@dataclass(frozen=True)
class _Failed:
    error: Exception


_Item = EngineEvent | _Failed | None  # None: the engine ended without Finished


async def speak_along(
    events: AsyncIterator[EngineEvent],
    synth: Synthesizer,
    voice: Voice,
    *,
    languages: Sequence[Language],
    chunk_bytes: int,
    tokens_per_second: float,
) -> AsyncGenerator[EngineEvent, None]:
    """``events`` with ``voice`` reading the text aloud, audio tokens added to the usage.

    Close it (``aclose()``) or cancel its consumer to stop synthesis and close ``events``.
    """
    if not languages:
        raise ValueError("speech needs at least one language")
    if chunk_bytes <= 0 or chunk_bytes % CHUNK_ALIGN:
        raise ValueError(f"chunk size must be a positive multiple of 6, not {chunk_bytes}")
    out: asyncio.Queue[_Item] = asyncio.Queue(maxsize=_BACKLOG)
    speaker = _Speaker(synth, voice, tuple(languages), chunk_bytes, out)
    pump = asyncio.create_task(_pump(events, speaker, out, tokens_per_second))
    try:
        while True:
            item = await out.get()
            if item is None:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
            if isinstance(item, Finished):
                return
    finally:
        pump.cancel()
        await speaker.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        if isinstance(events, AsyncGenerator):
            await events.aclose()


async def _pump(
    events: AsyncIterator[EngineEvent],
    speaker: _Speaker,
    out: asyncio.Queue[_Item],
    tokens_per_second: float,
) -> None:
    """Passes the engine's events on and hands finished sentences to the speaker."""
    segmenter = SentenceSegmenter()
    try:
        async for event in events:
            if isinstance(event, Finished):
                if (rest := segmenter.flush()) is not None:
                    speaker.say(rest)
                await speaker.finish()
                tokens = math.ceil(speaker.seconds * tokens_per_second)
                if speaker.seconds > 0:
                    tokens = max(1, tokens)
                await out.put(Finished(event.reason, event.usage.with_audio_tokens(tokens)))
                return
            await out.put(event)
            if isinstance(event, TextDelta):
                for sentence in segmenter.feed(event.text):
                    speaker.say(sentence)
        if (rest := segmenter.flush()) is not None:
            speaker.say(rest)
        await speaker.finish()
        await out.put(None)
    except Exception as exc:
        await out.put(_Failed(exc))


class _Speaker:
    """Synthesizes sentences in order and queues their audio as whole, aligned chunks."""

    def __init__(
        self,
        synth: Synthesizer,
        voice: Voice,
        languages: tuple[Language, ...],
        chunk_bytes: int,
        out: asyncio.Queue[_Item],
    ) -> None:
        self._synth = synth
        self._voice = voice
        self._languages = languages
        self._chunk_bytes = chunk_bytes
        self._out = out
        self._sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self._inflight: deque[_Sentence] = deque()
        self._ended = False
        # Playback clock: when the audio starts (or, before that, when the first sentence was
        # asked for), and the seconds of audio planned from then: queued, or estimated.
        self._base: float | None = None
        self._planned = 0.0
        self._pcm_bytes = 0
        self._task = asyncio.create_task(self._run())

    @property
    def seconds(self) -> float:
        return self._pcm_bytes / (PCM_SAMPLE_BYTES * PCM_RATE)

    def say(self, sentence: str) -> None:
        self._sentences.put_nowait(sentence)

    async def finish(self) -> None:
        """Returns once every sentence said so far is queued as audio."""
        self._sentences.put_nowait(None)
        await self._task

    async def cancel(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        carry = b""  # the last 2 or 4 bytes that would break 6-byte alignment
        try:
            while await self._start_next(wait=True):
                head = self._inflight[0]
                pcm = await self._in_time(head)
                self._inflight.popleft()
                seconds = len(pcm) / (PCM_SAMPLE_BYTES * PCM_RATE)
                if self._pcm_bytes == 0 and pcm:
                    self._base = time.monotonic()  # playback starts with this audio
                self._planned += seconds - head.estimate
                await self._start_next(wait=False)  # the next sentence synthesizes meanwhile
                self._pcm_bytes += len(pcm)
                data = carry + pcm
                cut = len(data) - len(data) % CHUNK_ALIGN
                data, carry = data[:cut], data[cut:]
                words: str | None = head.text  # the sentence's first chunk carries its words
                for chunk in chunk_pcm(data, self._chunk_bytes):
                    await self._out.put(AudioDelta(chunk, transcript=words))
                    words = None
            if carry:
                await self._out.put(AudioDelta(carry))
        except Exception as exc:
            await self._out.put(_Failed(exc))
            raise
        finally:
            for item in self._inflight:
                item.task.cancel()
            await asyncio.gather(*(i.task for i in self._inflight), return_exceptions=True)

    async def _start_next(self, *, wait: bool) -> bool:
        """Starts sentences up to the lookahead; False once nothing is left to play."""
        while not self._ended and len(self._inflight) < _LOOKAHEAD:
            if self._inflight or not wait:
                try:
                    sentence = self._sentences.get_nowait()
                except asyncio.QueueEmpty:
                    break
            else:
                sentence = await self._sentences.get()
            if sentence is None:
                self._ended = True
                break
            if self._base is None:
                self._base = time.monotonic()
            deadline = self._base + self._planned
            estimate = estimate_seconds(sentence)
            self._planned += estimate
            language = detect_language(sentence, allowed=self._languages)
            voice = voice_settings(self._voice, language)
            task = asyncio.create_task(
                self._synth.synthesize(
                    sentence, voice, deadline=deadline, playing=self._pcm_bytes > 0
                )
            )
            self._inflight.append(_Sentence(sentence, voice, estimate, task))
        return bool(self._inflight)

    async def _in_time(self, head: _Sentence) -> bytes:
        """The head sentence's audio; rescued when it is not ready in time (module doc)."""
        rescue = self._synth.rescue
        if rescue is None or head.task.done() or self._base is None:
            return await head.task
        # Needed when the audio sent so far has played out; a reply's first audio, at
        # first_audio_s from its request.
        needed = self._base + (self.seconds if self._pcm_bytes else rescue.first_audio_s)
        wait = needed - rescue.margin_s - time.monotonic()
        done, _ = await asyncio.wait({head.task}, timeout=max(0.0, wait))
        if done:
            return head.task.result()
        quick = asyncio.create_task(rescue.by.synthesize(head.text, head.voice))
        try:
            done, _ = await asyncio.wait({head.task, quick}, return_when=asyncio.FIRST_COMPLETED)
            if head.task in done and not head.task.cancelled() and not head.task.exception():
                return head.task.result()  # quality first, when both are ready
            return await quick
        finally:
            for task in (quick, head.task):
                task.cancel()
            await asyncio.gather(quick, head.task, return_exceptions=True)


@dataclass
class _Sentence:
    """A sentence being synthesized: its text, voice, estimated length and task."""

    text: str
    voice: EspeakVoice
    estimate: float
    task: asyncio.Task[bytes]


def estimate_seconds(sentence: str) -> float:
    """A rough spoken length, until the audio itself is known: about 0.27 s per Han, kana or
    Hangul character and 0.07 s per other character at espeak-ng's default speed."""
    wide = sum(1 for ch in sentence if ord(ch) >= 0x2E80)
    return 0.27 * wide + 0.07 * (len(sentence) - wide)
