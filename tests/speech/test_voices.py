"""Every catalog voice maps to its own espeak-ng settings."""

from __future__ import annotations

import subprocess

import pytest

from omniserve.catalog import FLASH_1201, Language, ModelSpec, Voice, build_models
from omniserve.speech.voices import (
    ESPEAK_LANGUAGES,
    EspeakVoice,
    espeak_voice_table,
    known_voice_names,
    voice_settings,
)

MODELS = build_models() + build_models(FLASH_1201)
ALL_VOICES = {voice.name: voice for model in MODELS for voice in model.voices}


def test_every_catalog_voice_has_its_own_row() -> None:
    assert set(ALL_VOICES) <= known_voice_names()


@pytest.mark.parametrize("voice", ALL_VOICES.values(), ids=lambda v: v.name)
def test_gender_decides_the_variant_family(voice: Voice) -> None:
    for language in voice.languages:
        settings = voice_settings(voice, language)
        assert settings.variant[0] == voice.gender[0]
        assert settings.variant[1:].isdigit()


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_no_two_voices_of_a_model_sound_alike(model: ModelSpec) -> None:
    voices = model.voices
    for language in (Language.ZH, Language.EN):
        settings = [voice_settings(v, language) for v in voices]
        assert len(set(settings)) == len(settings)
        assert len({(s.variant, s.pitch, s.speed) for s in settings}) == len(settings)


def test_language_picks_the_espeak_language() -> None:
    cherry = ALL_VOICES["Cherry"]
    assert {lang: voice_settings(cherry, lang).language for lang in Language} == {
        Language.ZH: "cmn-latn-pinyin",
        Language.EN: "en-us",
        Language.FR: "fr-fr",
        Language.DE: "de",
        Language.RU: "ru",
        Language.IT: "it",
        Language.ES: "es",
        Language.PT: "pt-br",
        Language.JA: "ja",
        Language.KO: "ko",
    }


def test_cantonese_voices_speak_cantonese_chinese() -> None:
    for name in ("Rocky", "Kiki"):
        voice = ALL_VOICES[name]
        assert voice_settings(voice, Language.ZH).language == "yue"
        assert voice_settings(voice, Language.EN).language == "en-us"


def test_other_dialects_read_mandarin_with_their_own_character() -> None:
    dialect_voices = [v for v in ALL_VOICES.values() if v.dialect not in (None, "Cantonese")]
    assert {v.name for v in dialect_voices} >= {"Jada", "Dylan", "Sunny", "Roy", "Marcus"}
    standard = voice_settings(ALL_VOICES["Cherry"], Language.ZH)
    for voice in dialect_voices:
        settings = voice_settings(voice, Language.ZH)
        assert settings.language == "cmn-latn-pinyin"  # never "hak": Minnan is not Hakka
        assert (settings.pitch, settings.speed) != (standard.pitch, standard.speed)


def phonemes(text: str, voice: EspeakVoice) -> str:
    return subprocess.run(
        ["espeak-ng", "-q", "-x", *voice.args(), "--", text],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_mandarin_reads_tones_not_english_digits() -> None:
    # espeak-ng 1.51's plain "cmn" says "jin one tian one": every tone digit in English.
    mandarin = voice_settings(ALL_VOICES["Cherry"], Language.ZH)
    assert "(en)" not in phonemes("今天天气很好，我们一起去公园散步吧。", mandarin)
    assert "(en)" in phonemes("今天天气很好", EspeakVoice("cmn", "f3"))


def test_cantonese_reads_cantonese() -> None:
    cantonese = voice_settings(ALL_VOICES["Kiki"], Language.ZH)
    assert "(en)" not in phonemes("今日天氣好好，我哋去公園行下啦。", cantonese)


def test_same_name_same_settings_across_models() -> None:
    by_name: dict[str, set[EspeakVoice]] = {}
    for model in MODELS:
        for voice in model.voices:
            by_name.setdefault(voice.name, set()).add(voice_settings(voice, Language.ZH))
    assert all(len(settings) == 1 for settings in by_name.values())


def test_unknown_voice_falls_back_by_gender() -> None:
    stranger = Voice("Zed", "Zed", "A voice from the future.", "male", (Language.EN,))
    assert voice_settings(stranger, Language.EN).variant.startswith("m")


def test_args() -> None:
    voice = EspeakVoice("cmn", "f3", pitch=60, speed=170, amplitude=120)
    assert voice.args() == ["-v", "cmn+f3", "-p", "60", "-s", "170", "-a", "120"]


@pytest.mark.parametrize(
    "kwargs", [{"pitch": 100}, {"pitch": -1}, {"speed": 10}, {"amplitude": 201}]
)
def test_settings_are_range_checked(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        EspeakVoice("en-us", "m1", **kwargs)


def test_every_espeak_language_and_variant_is_installed() -> None:
    listed = subprocess.run(
        ["espeak-ng", "--voices"], capture_output=True, text=True, check=True
    ).stdout.split()
    for language in {*ESPEAK_LANGUAGES.values(), "yue"}:
        assert language in listed
    variants = subprocess.run(
        ["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True
    ).stdout
    for voice in ALL_VOICES.values():
        assert f"!v/{voice_settings(voice, Language.EN).variant} " in variants


def test_voice_table_lists_each_name_once() -> None:
    rows = espeak_voice_table()
    assert sorted(r.name for r in rows) == sorted(ALL_VOICES)
    rocky = next(r for r in rows if r.name == "Rocky")
    assert rocky.chinese.startswith("yue+m")
    assert rocky.dialect == "Cantonese"
    assert "qwen3-omni-flash" in rocky.models
    ethan = next(r for r in rows if r.name == "Ethan")
    assert "qwen2.5-omni-7b" in ethan.models
    assert ethan.dialect == ""
