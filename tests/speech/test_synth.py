"""Synthesizers against the real espeak-ng binary, and the tone fallback."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from helpers import dominant_frequency, median_pitch, rms
from omniserve.catalog import Language, build_models
from omniserve.config import SpeechSettings
from omniserve.speech.pcm import duration_seconds
from omniserve.speech.synth import (
    EspeakSynthesizer,
    SpeechError,
    ToneSynthesizer,
    espeak_text,
    make_synthesizer,
    tone_pcm,
)
from omniserve.speech.voices import EspeakVoice, voice_settings

FLASH = build_models()[0]
VOICES = {voice.name: voice for voice in FLASH.voices}
ZH = "今天天气很好，我们一起去公园散步吧。"
EN = "The weather is lovely today, so let us take a walk in the park."
LONG = " ".join(f"This is sentence number {i} of a very long text." for i in range(400))


def settings(**overrides: object) -> SpeechSettings:
    return SpeechSettings.model_validate({"max_concurrency": 2, **overrides})


def speak(text: str, voice: EspeakVoice) -> bytes:
    async def main() -> bytes:
        synth = EspeakSynthesizer(settings())
        try:
            return await synth.synthesize(text, voice)
        finally:
            await synth.close()

    return asyncio.run(main())


def espeak_children() -> set[int]:
    """Live or zombie espeak-ng processes whose parent is this test process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm_end = stat.rindex(")")
        comm = stat[stat.index("(") + 1 : comm_end]
        ppid = int(stat[comm_end + 2 :].split()[1])
        if ppid == os.getpid() and comm.startswith("espeak"):
            found.add(int(entry.name))
    return found


async def started_children(before: set[int]) -> set[int]:
    """The espeak-ng children that appeared since `before` was taken: other tests' servers
    may still be speaking on their own threads of this process."""
    for _ in range(2_000):
        if children := espeak_children() - before:
            return children
        await asyncio.sleep(0.005)
    raise AssertionError("espeak-ng never started")


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


def test_chinese_sentence_is_24khz_speech_of_plausible_length() -> None:
    pcm = speak(ZH, voice_settings(VOICES["Cherry"], Language.ZH))
    assert len(pcm) % 2 == 0
    assert 1.5 < duration_seconds(pcm) < 8.0
    assert rms(pcm) > 500


def test_english_sentence_is_speech_of_plausible_length() -> None:
    pcm = speak(EN, voice_settings(VOICES["Ethan"], Language.EN))
    assert 2.0 < duration_seconds(pcm) < 8.0
    assert rms(pcm) > 500


def test_two_voices_of_a_model_sound_different() -> None:
    cherry = speak(EN, voice_settings(VOICES["Cherry"], Language.EN))
    ethan = speak(EN, voice_settings(VOICES["Ethan"], Language.EN))
    assert cherry != ethan
    assert median_pitch(cherry) > 1.5 * median_pitch(ethan)


def test_female_voices_are_higher_than_male_voices() -> None:
    pitches: dict[str, list[float]] = {"female": [], "male": []}
    for voice in FLASH.voices:
        pcm = speak(EN, voice_settings(voice, Language.EN))
        pitches[voice.gender].append(median_pitch(pcm))
    assert min(pitches["female"]) > max(pitches["male"])


def test_rocky_reads_chinese_in_cantonese() -> None:
    rocky = voice_settings(VOICES["Rocky"], Language.ZH)
    assert rocky.language == "yue"
    cantonese = speak("今日天氣好好，我哋去公園行下啦。", rocky)
    mandarin = speak(
        "今日天氣好好，我哋去公園行下啦。", EspeakVoice("cmn-latn-pinyin", rocky.variant)
    )
    assert rms(cantonese) > 500
    assert cantonese != mandarin


def test_japanese_is_read_from_its_kana() -> None:
    # espeak-ng has no kanji readings: it would say "Chinese letter" for each one.
    japanese = voice_settings(VOICES["Cherry"], Language.JA)
    text = espeak_text("今日はとても良い天気ですね。", japanese)
    assert text == "はとてもいですね。"
    assert espeak_text("今日は良い天気", EspeakVoice("cmn-latn-pinyin", "f1")) == "今日は良い天気"
    pcm = speak("東京はとても大きい町です。", japanese)
    assert duration_seconds(pcm) > 0.5 and rms(pcm) > 500


def test_text_that_looks_like_a_flag_is_spoken() -> None:
    pcm = speak("-v nosuch --help", EspeakVoice("en-us", "m1"))
    assert duration_seconds(pcm) > 0.5


def test_blank_text_is_no_audio() -> None:
    assert speak("  \n ", EspeakVoice("en-us", "m1")) == b""


def test_unknown_espeak_voice_is_a_speech_error() -> None:
    with pytest.raises(SpeechError, match="exited with status"):
        speak("hello", EspeakVoice("xx", "m1"))


def test_missing_binary_is_a_speech_error() -> None:
    async def main() -> None:
        synth = EspeakSynthesizer(settings(espeak_path="/nonexistent/espeak-ng"))
        with pytest.raises(SpeechError, match="cannot run"):
            await synth.check()
        with pytest.raises(SpeechError, match="cannot run"):
            await synth.synthesize("hello", EspeakVoice("en-us", "m1"))

    asyncio.run(main())


def test_check_passes_with_the_installed_binary() -> None:
    asyncio.run(EspeakSynthesizer(settings()).check())


@pytest.mark.timeout(20)
def test_cancelled_synthesis_leaves_no_child_process() -> None:
    async def main() -> None:
        synth = EspeakSynthesizer(settings(max_concurrency=1))
        before = espeak_children()
        task = asyncio.create_task(synth.synthesize(LONG, EspeakVoice("en-us", "m1")))
        children = await started_children(before)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Neither running nor a zombie: /proc keeps an entry until the child is reaped.
        assert alive(children) == set()
        assert espeak_children() - before == set()
        # The slot came back: a short sentence still gets through.
        pcm = await asyncio.wait_for(synth.synthesize("hi", EspeakVoice("en-us", "m1")), 5)
        assert pcm

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_cancelling_while_espeak_starts_leaves_no_child_process() -> None:
    """Cancelled after 0 to 11 turns of the event loop, so before, while and after the child
    starts: nothing is left running or unreaped."""

    async def main() -> None:
        synth = EspeakSynthesizer(settings(max_concurrency=1))
        before = espeak_children()
        for steps in range(12):
            task = asyncio.create_task(synth.synthesize(LONG, EspeakVoice("en-us", "m1")))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            left = espeak_children() - before
            assert left == set(), f"a child is left when cancelled after {steps} steps"

    asyncio.run(main())


@pytest.mark.timeout(20)
def test_close_stops_running_synthesis() -> None:
    async def main() -> None:
        synth = EspeakSynthesizer(settings())
        before = espeak_children()
        task = asyncio.create_task(synth.synthesize(LONG, EspeakVoice("en-us", "m1")))
        children = await started_children(before)
        await synth.close()
        with pytest.raises(SpeechError):
            await task
        assert alive(children) == set()
        assert espeak_children() - before == set()

    asyncio.run(main())


def test_tone_follows_text_length() -> None:
    voice = EspeakVoice("cmn", "f3")
    assert duration_seconds(tone_pcm("一二三四五六七八九十", voice)) == pytest.approx(0.6, abs=0.01)
    words = "one two three four five six seven eight nine ten"
    assert duration_seconds(tone_pcm(words, voice)) == pytest.approx(0.7, abs=0.01)
    assert duration_seconds(tone_pcm("Hi.", voice)) == pytest.approx(0.3, abs=0.01)
    assert tone_pcm("...", voice) == b""


def test_tone_is_deterministic_audible_and_pitched_by_voice() -> None:
    async def main() -> tuple[bytes, bytes, bytes]:
        synth = make_synthesizer(settings(backend="tone"))
        assert isinstance(synth, ToneSynthesizer)
        await synth.check()
        text = "一个简单的句子，用来测试音调。"
        high = await synth.synthesize(text, EspeakVoice("cmn", "f3", pitch=70))
        again = await synth.synthesize(text, EspeakVoice("cmn", "f3", pitch=70))
        low = await synth.synthesize(text, EspeakVoice("cmn", "m3", pitch=40))
        await synth.close()
        assert high == again
        return high, again, low

    high, _, low = asyncio.run(main())
    assert rms(high) > 500
    assert dominant_frequency(high) > 1.5 * dominant_frequency(low)


def test_make_synthesizer_defaults_to_espeak() -> None:
    assert isinstance(make_synthesizer(settings()), EspeakSynthesizer)
