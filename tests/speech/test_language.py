"""detect_language on ordinary sentences in each of the ten output languages."""

from __future__ import annotations

import time

import pytest

from omniserve.catalog import ZH_EN, Language
from omniserve.speech.language import detect_language

SENTENCES: dict[Language, tuple[str, ...]] = {
    Language.ZH: (
        "今天天气很好，我们一起去公园散步吧。",
        "我们使用 Python 和 JavaScript 开发网站。",
        "这是迈克尔・杰克逊最有名的一首歌。",
        "請問最近的地鐵站在哪裡？",
    ),
    Language.EN: (
        "The weather is lovely today, so let us take a walk in the park.",
        "I think this is a great idea!",
        "Paris is the capital of France.",
        "OK.",
    ),
    Language.FR: (
        "Il fait très beau aujourd'hui, allons nous promener dans le parc.",
        "Je ne sais pas ce que tu veux dire.",
        "Où est la gare ?",
        "C'est la vie.",
    ),
    Language.DE: (
        "Das Wetter ist heute sehr schön, lass uns im Park spazieren gehen.",
        "Ich weiß nicht, was du meinst.",
        "Guten Morgen, wie geht es dir?",
        "Die Straße ist gesperrt.",
    ),
    Language.RU: (
        "Сегодня прекрасная погода, давайте прогуляемся в парке.",
        "Я не понимаю, что ты имеешь в виду.",
    ),
    Language.IT: (
        "Oggi il tempo è bellissimo, andiamo a fare una passeggiata nel parco.",
        "Non so cosa vuoi dire.",
        "Perché no? È una buona idea.",
        "Grazie mille, ci vediamo domani.",
    ),
    Language.ES: (
        "Hoy hace muy buen tiempo, vamos a dar un paseo por el parque.",
        "No sé lo que quieres decir.",
        "¿Dónde está la estación?",
        "Muchas gracias por tu ayuda.",
    ),
    Language.PT: (
        "Hoje o tempo está muito bom, vamos dar um passeio no parque.",
        "Não sei o que você quer dizer.",
        "Onde fica a estação de trem?",
        "Muito obrigado pela ajuda.",
    ),
    Language.JA: (
        "今日はとても良い天気ですね。公園を散歩しましょう。",
        "東京は日本の首都です。",
        "コーヒーを一杯ください。",
    ),
    Language.KO: (
        "오늘 날씨가 정말 좋네요. 공원에서 산책해요.",
        "한국어를 조금 할 수 있어요.",
    ),
}

CASES = [(language, text) for language, texts in SENTENCES.items() for text in texts]


@pytest.mark.parametrize(("expected", "text"), CASES)
def test_detects_each_language(expected: Language, text: str) -> None:
    assert detect_language(text) is expected


def test_chinese_with_a_few_english_words_is_chinese() -> None:
    assert detect_language("请帮我打开 Visual Studio Code 的设置。") is Language.ZH


def test_english_quoting_a_chinese_word_is_english() -> None:
    assert detect_language("The word 你好 simply means hello in Mandarin.") is Language.EN


def test_no_letters_gives_the_default() -> None:
    assert detect_language("12345 !!!") is Language.EN
    assert detect_language("", default=Language.ZH) is Language.ZH


def test_japanese_falls_back_to_chinese_when_only_zh_and_en_are_allowed() -> None:
    assert detect_language("東京は日本の首都です。", allowed=ZH_EN) is Language.ZH


def test_disallowed_latin_falls_back_to_the_default() -> None:
    text = "Il fait très beau aujourd'hui."
    assert detect_language(text, allowed=ZH_EN) is Language.EN
    assert detect_language(text, allowed=ZH_EN, default=Language.ZH) is Language.ZH


def test_falls_back_to_the_first_allowed_when_the_default_is_not_allowed() -> None:
    text = "Сегодня прекрасная погода."
    assert detect_language(text, allowed=(Language.DE, Language.FR)) is Language.DE


def test_korean_without_korean_allowed_does_not_become_chinese() -> None:
    assert detect_language("오늘 날씨가 좋네요.", allowed=ZH_EN) is Language.EN


def test_allowed_language_is_kept() -> None:
    assert detect_language("Das ist gut.", allowed=(Language.DE,)) is Language.DE


def test_empty_allowed_is_an_error() -> None:
    with pytest.raises(ValueError, match="allowed"):
        detect_language("Hola, ¿qué tal?", allowed=())


def test_fast_enough_to_run_per_sentence() -> None:
    text = "Hoy hace muy buen tiempo, vamos a dar un paseo por el parque. " * 4
    start = time.perf_counter()
    for _ in range(200):
        detect_language(text)
    assert (time.perf_counter() - start) / 200 < 0.002
