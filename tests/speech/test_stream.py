"""speak_along: text passes straight through, audio follows by sentence, closing stops it all."""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from omniserve.catalog import TEN_LANGUAGES, ZH_EN, Language, build_models
from omniserve.config import SpeechSettings
from omniserve.events import AudioDelta, EngineEvent, Finished, ReasoningDelta, TextDelta
from omniserve.job import CompletionTokens, PromptTokens, Usage
from omniserve.speech.pcm import chunk_bytes_for, duration_seconds
from omniserve.speech.stream import speak_along
from omniserve.speech.synth import (
    EspeakSynthesizer,
    Rescue,
    SpeechError,
    Synthesizer,
    tone_pcm,
)
from omniserve.speech.voices import EspeakVoice

FLASH = build_models()[0]
CHERRY = next(voice for voice in FLASH.voices if voice.name == "Cherry")
USAGE = Usage(PromptTokens(text=12), CompletionTokens(text=30))
CHUNK = chunk_bytes_for(100)


@dataclass
class Source:
    """A real engine-like event stream that remembers whether it was closed."""

    deltas: Sequence[EngineEvent]
    delay: float = 0.0
    closed: float | None = None  # perf_counter time its finally ran
    finished: bool = True

    async def events(self) -> AsyncIterator[EngineEvent]:
        try:
            for delta in self.deltas:
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield delta
            if self.finished:
                yield Finished("stop", USAGE)
        finally:
            self.closed = time.perf_counter()


@dataclass
class ToneRecorder:
    """A Synthesizer that makes tones and records what it was asked, in order."""

    delay: float = 0.0
    rescue: Rescue | None = None
    variant: str | None = None  # tones in this espeak-ng variant, whatever the voice asked
    done: list[str] = field(default_factory=list)
    calls: list[tuple[str, EspeakVoice, float | None]] = field(default_factory=list)
    playing: list[bool] = field(default_factory=list)
    running: int = 0
    peak: int = 0

    async def synthesize(
        self,
        text: str,
        voice: EspeakVoice,
        *,
        deadline: float | None = None,
        playing: bool = True,
    ) -> bytes:
        self.calls.append((text, voice, deadline))
        self.playing.append(playing)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
            self.done.append(text)
            return tone_pcm(text, self.sound(voice))
        finally:
            self.running -= 1

    def sound(self, voice: EspeakVoice) -> EspeakVoice:
        """The voice this recorder's tones are made in (its own variant, when it has one)."""
        return voice if self.variant is None else replace(voice, variant=self.variant)

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


def espeak_children() -> set[int]:
    """espeak-ng processes (live or zombie) whose parent is this test process."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        head, _, tail = text.rpartition(")")
        name, ppid = head.partition("(")[2], int(tail.split()[1])
        if name.startswith("espeak") and ppid == os.getpid():
            found.add(int(stat.parent.name))
    return found


def texts(*parts: str) -> list[EngineEvent]:
    return [TextDelta(p) for p in parts]


async def collect(
    source: Source, synth: Synthesizer, languages: Sequence[Language] = TEN_LANGUAGES
) -> list[tuple[float, EngineEvent]]:
    out = []
    stream = speak_along(
        source.events(),
        synth,
        CHERRY,
        languages=languages,
        chunk_bytes=CHUNK,
        tokens_per_second=12.5,
    )
    async for event in stream:
        out.append((time.perf_counter(), event))
    return out


SENTENCES = (
    "The weather is lovely today. ",
    "Let us take a walk in the park, ",
    "and then have some tea. ",
    "今天天气很好。",
    "我们一起去公园散步吧！",
)


def word_deltas() -> list[EngineEvent]:
    return [TextDelta(word) for sentence in SENTENCES for word in re.findall(r"\S+\s*", sentence)]


@pytest.mark.timeout(30)
def test_espeak_audio_interleaves_with_slow_text() -> None:
    deltas = word_deltas()
    source = Source(deltas, delay=0.03)
    synth = EspeakSynthesizer(SpeechSettings())
    events = [e for _, e in asyncio.run(collect(source, synth))]

    text = [e for e in events if isinstance(e, TextDelta)]
    assert text == deltas
    audio = [e for e in events if isinstance(e, AudioDelta)]
    assert audio
    first_audio = events.index(audio[0])
    assert first_audio < events.index(text[-1])
    assert isinstance(events[-1], Finished)
    assert all(len(a.pcm) % 6 == 0 and len(a.pcm) <= CHUNK for a in audio[:-1])
    assert len(audio[-1].pcm) % 2 == 0
    pcm = b"".join(a.pcm for a in audio)
    assert 4.0 < duration_seconds(pcm) < 30.0
    finished = events[-1]
    assert finished.usage.completion.audio == math.ceil(duration_seconds(pcm) * 12.5)
    assert finished.usage.completion.text == 30
    assert finished.usage.prompt == USAGE.prompt
    assert source.closed is not None


def test_sentences_are_spoken_in_order_with_their_language() -> None:
    source = Source(word_deltas())
    synth = ToneRecorder(delay=0.01)
    events = [e for _, e in asyncio.run(collect(source, synth))]

    spoken = [text for text, _, _ in synth.calls]
    assert spoken == [
        "The weather is lovely today.",
        "Let us take a walk in the park, and then have some tea.",
        "今天天气很好。",
        "我们一起去公园散步吧！",
    ]
    deadlines = [d for _, _, d in synth.calls]
    assert all(d is not None for d in deadlines)
    # The first sentence is due at once; later ones when the audio before them has played.
    assert deadlines[0] == min(deadlines) and deadlines[0] < deadlines[-1]
    assert [voice.language for _, voice, _ in synth.calls] == ["en-us"] * 2 + [
        "cmn-latn-pinyin"
    ] * 2
    # The synthesizer is told when the reply's audio has started (its deadlines are real then).
    assert synth.playing[0] is False and synth.playing[-1] is True
    expected = b"".join(tone_pcm(text, voice) for text, voice, _ in synth.calls)
    assert b"".join(e.pcm for e in events if isinstance(e, AudioDelta)) == expected


def test_languages_limit_the_voice() -> None:
    source = Source(texts("Il fait très beau aujourd'hui. ", "Nous allons au parc."))
    synth = ToneRecorder()
    asyncio.run(collect(source, synth, languages=ZH_EN))
    assert [voice.language for _, voice, _ in synth.calls] == ["en-us", "en-us"]


def test_text_is_never_held_back_by_synthesis() -> None:
    source = Source(texts("One. ", "Two. ", "Three. ", "Four."), delay=0.02)
    synth = ToneRecorder(delay=0.3)
    start = time.perf_counter()
    timed = asyncio.run(collect(source, synth))
    text_times = [t - start for t, e in timed if isinstance(e, TextDelta)]
    assert text_times[-1] < 0.25  # the source takes about 0.08 s; synthesis 0.3 s a sentence
    audio_times = [t - start for t, e in timed if isinstance(e, AudioDelta)]
    assert min(audio_times) > text_times[-1]


def test_next_sentence_synthesizes_while_one_plays_out() -> None:
    source = Source(texts(*(f"Sentence {i}. " for i in range(6))))
    synth = ToneRecorder(delay=0.02)
    asyncio.run(collect(source, synth))
    assert synth.peak == 2


def audio_of(events: list[tuple[float, EngineEvent]]) -> bytes:
    return b"".join(e.pcm for _, e in events if isinstance(e, AudioDelta))


def test_sentences_a_slow_synthesizer_is_late_with_are_rescued() -> None:
    """A voice that takes 3 s a sentence and a quick one as its rescue: each sentence is read
    by the quick one shortly before playback would run dry, in order, and nothing waits for
    the slow voice."""
    quick = ToneRecorder(variant="m1")
    slow = ToneRecorder(delay=3.0, rescue=Rescue(quick, first_audio_s=0.3, margin_s=0.1))
    source = Source(texts(*(f"Sentence number {i}. " for i in range(5))))
    start = time.perf_counter()
    events = asyncio.run(collect(source, slow))

    said = [f"Sentence number {i}." for i in range(5)]
    assert [text for text, _, _ in quick.calls] == said
    assert quick.done == said and slow.done == []  # every slow reading was given up
    assert audio_of(events) == b"".join(tone_pcm(t, quick.sound(v)) for t, v, _ in quick.calls)
    # About 0.2 s to the first rescue and 0.4 s of tone a sentence; the slow voice would
    # have taken 15 s.
    assert time.perf_counter() - start < 6.0
    first_audio = next(t for t, e in events if isinstance(e, AudioDelta))
    assert first_audio - start < 1.5


def test_sentences_ready_in_time_are_not_rescued() -> None:
    quick = ToneRecorder(variant="m1")
    slow = ToneRecorder(delay=0.01, rescue=Rescue(quick, first_audio_s=1.0, margin_s=0.1))
    source = Source(texts(*(f"Sentence number {i}. " for i in range(4))))
    events = asyncio.run(collect(source, slow))
    assert quick.calls == []
    assert audio_of(events) == b"".join(tone_pcm(t, v) for t, v, _ in slow.calls)


def test_a_rescue_that_fails_is_an_error_after_the_text() -> None:
    class Broken(ToneRecorder):
        async def synthesize(
            self,
            text: str,
            voice: EspeakVoice,
            *,
            deadline: float | None = None,
            playing: bool = True,
        ) -> bytes:
            raise SpeechError("espeak-ng is gone")

    slow = ToneRecorder(delay=3.0, rescue=Rescue(Broken(), first_audio_s=0.2, margin_s=0.1))
    source = Source(texts("One sentence."))

    async def main() -> list[EngineEvent]:
        out: list[EngineEvent] = []
        with pytest.raises(SpeechError, match="gone"):
            async for event in speak_along(
                source.events(),
                slow,
                CHERRY,
                languages=TEN_LANGUAGES,
                chunk_bytes=CHUNK,
                tokens_per_second=12.5,
            ):
                out.append(event)
        return out

    events = asyncio.run(asyncio.wait_for(main(), 10))
    assert events == [TextDelta("One sentence.")]


def test_reasoning_passes_through_unspoken() -> None:
    source = Source([ReasoningDelta("Let me think. "), ReasoningDelta("Done thinking.")])
    synth = ToneRecorder()
    events = [e for _, e in asyncio.run(collect(source, synth))]
    assert events[:2] == list(source.deltas)
    assert synth.calls == []
    assert events[-1] == Finished("stop", USAGE.with_audio_tokens(0))


def test_no_text_no_audio() -> None:
    source = Source([])
    events = [e for _, e in asyncio.run(collect(source, ToneRecorder()))]
    assert events == [Finished("stop", USAGE.with_audio_tokens(0))]


def test_short_audio_bills_at_least_one_token() -> None:
    source = Source(texts("Hi"))
    events = [e for _, e in asyncio.run(collect(source, ToneRecorder()))]
    finished = events[-1]
    assert isinstance(finished, Finished)
    pcm = b"".join(e.pcm for e in events if isinstance(e, AudioDelta))
    assert finished.usage.completion.audio == max(1, math.ceil(duration_seconds(pcm) * 12.5))


def test_stream_without_finished_still_speaks_the_rest() -> None:
    source = Source(texts("No full stop at the end"), finished=False)
    events = [e for _, e in asyncio.run(collect(source, ToneRecorder()))]
    assert isinstance(events[0], TextDelta)
    assert any(isinstance(e, AudioDelta) for e in events)
    assert not any(isinstance(e, Finished) for e in events)


def test_synthesis_errors_reach_the_consumer_after_the_text() -> None:
    source = Source(texts("First sentence. ", "Second sentence. "), delay=0.01)
    synth = EspeakSynthesizer(SpeechSettings(espeak_path="/nonexistent/espeak-ng"))
    seen: list[EngineEvent] = []

    async def main() -> None:
        stream = speak_along(
            source.events(),
            synth,
            CHERRY,
            languages=TEN_LANGUAGES,
            chunk_bytes=CHUNK,
            tokens_per_second=12.5,
        )
        async for event in stream:
            seen.append(event)

    with pytest.raises(SpeechError, match="cannot run"):
        asyncio.run(main())
    assert seen[0] == TextDelta("First sentence. ")
    assert source.closed is not None


def test_engine_errors_reach_the_consumer_after_the_text() -> None:
    async def broken() -> AsyncIterator[EngineEvent]:
        yield TextDelta("Before the failure. ")
        await asyncio.sleep(0.01)
        raise RuntimeError("engine fell over")

    seen: list[EngineEvent] = []

    async def main() -> None:
        stream = speak_along(
            broken(),
            ToneRecorder(),
            CHERRY,
            languages=TEN_LANGUAGES,
            chunk_bytes=CHUNK,
            tokens_per_second=12.5,
        )
        async for event in stream:
            seen.append(event)

    with pytest.raises(RuntimeError, match="engine fell over"):
        asyncio.run(main())
    assert seen[0] == TextDelta("Before the failure. ")


@pytest.mark.timeout(30)
def test_aclose_mid_stream_closes_the_source_promptly() -> None:
    many = texts(*(f"This is sentence number {i} of a long answer. " for i in range(200)))
    source = Source(many, delay=0.005)

    async def main() -> float:
        stream = speak_along(
            source.events(),
            EspeakSynthesizer(SpeechSettings()),
            CHERRY,
            languages=TEN_LANGUAGES,
            chunk_bytes=CHUNK,
            tokens_per_second=12.5,
        )
        audio = 0
        async for event in stream:
            audio += isinstance(event, AudioDelta)
            if audio == 2:
                break
        start = time.perf_counter()
        await stream.aclose()
        assert source.closed is not None
        assert espeak_children() == set()
        return source.closed - start

    assert asyncio.run(main()) < 0.1


@pytest.mark.timeout(30)
def test_cancelling_the_consumer_closes_everything() -> None:
    source = Source(texts(*(f"Sentence {i} goes on. " for i in range(200))), delay=0.005)
    synth = ToneRecorder(delay=0.05)

    async def main() -> None:
        consumer = asyncio.create_task(collect(source, synth))
        await asyncio.sleep(0.2)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert source.closed is not None
        assert synth.running == 0
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert pending == []

    asyncio.run(main())


def test_bad_arguments() -> None:
    async def drain(chunk_bytes: int, languages: Sequence[Language]) -> None:
        stream = speak_along(
            Source([]).events(),
            ToneRecorder(),
            CHERRY,
            languages=languages,
            chunk_bytes=chunk_bytes,
            tokens_per_second=12.5,
        )
        async for _ in stream:
            pass

    with pytest.raises(ValueError, match="multiple of 6"):
        asyncio.run(drain(100, TEN_LANGUAGES))
    with pytest.raises(ValueError, match="language"):
        asyncio.run(drain(CHUNK, ()))
