"""The emulator's phrases: every language says who answered, what arrived, and how many tokens."""

from __future__ import annotations

import string

import pytest

from omniserve.catalog import TEN_LANGUAGES, Language
from omniserve.engines.emulator_text import (
    EXCERPT_CHARS,
    PHRASES,
    Received,
    compose_answer,
    compose_reasoning,
    excerpt,
)
from omniserve.speech.language import detect_language


def received(**overrides: object) -> Received:
    fields: dict[str, object] = {
        "model": "qwen3-omni-flash",
        "messages": 3,
        "user": 2,
        "assistant": 1,
        "system": 0,
        "inputs": {},
        "prompt_tokens": 4321,
        "last_user_text": "What time is it?",
        "voice": None,
        "system_ignored": False,
    }
    fields.update(overrides)
    return Received(**fields)  # type: ignore[arg-type]


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_every_language_has_phrases() -> None:
    assert set(PHRASES) == set(TEN_LANGUAGES)


@pytest.mark.parametrize("language", TEN_LANGUAGES)
def test_phrase_placeholders(language: Language) -> None:
    p = PHRASES[language]
    assert placeholders(p.intro) == {"model"}
    assert placeholders(p.received) == {"messages", "user", "assistant", "system"}
    assert placeholders(p.inputs_text_only) == set()
    assert placeholders(p.inputs_media) == {"items"}
    assert set(p.media_names) == {"image", "audio", "video"}
    assert placeholders(p.tokens) == {"tokens"}
    assert placeholders(p.last) == {"excerpt"}
    assert placeholders(p.voice) == {"voice"}
    assert placeholders(p.system_ignored) == {"model"}
    assert len(p.closings) == 3
    assert all(placeholders(c) == set() for c in p.closings)
    assert all(placeholders(r) <= {"excerpt", "messages", "tokens"} for r in p.reasoning)


@pytest.mark.parametrize("language", TEN_LANGUAGES)
def test_answer_names_the_model_and_prompt_tokens(language: Language) -> None:
    answer = compose_answer(received(model="qwen-omni-turbo-latest"), language, closing=0)
    assert "qwen-omni-turbo-latest" in answer
    assert "4321" in answer
    assert answer.startswith(PHRASES[language].greeting)
    assert "What time is it?" in answer
    assert answer.endswith(PHRASES[language].closings[0])


@pytest.mark.parametrize("language", TEN_LANGUAGES)
def test_answer_is_in_its_language(language: Language) -> None:
    answer = compose_answer(received(last_user_text=""), language, closing=1)
    assert detect_language(answer) == language


@pytest.mark.parametrize("language", TEN_LANGUAGES)
def test_closing_is_picked_by_the_seeded_number(language: Language) -> None:
    closings = PHRASES[language].closings
    answers = [compose_answer(received(), language, closing=n) for n in range(6)]
    for n, answer in enumerate(answers):
        assert answer.endswith(closings[n % len(closings)])
    assert answers[0] == answers[3]
    assert len(set(answers)) == 3
    big = compose_answer(received(), language, closing=2**63 + 1)
    assert big.endswith(closings[(2**63 + 1) % 3])


@pytest.mark.parametrize("language", TEN_LANGUAGES)
def test_optional_sentences(language: Language) -> None:
    p = PHRASES[language]
    plain = compose_answer(received(), language, closing=0)
    assert p.inputs_text_only in plain
    assert p.voice.format(voice="Cherry") not in plain
    spoken = compose_answer(
        received(voice="Cherry", system_ignored=True, model="qwen-omni-turbo"),
        language,
        closing=0,
    )
    assert p.voice.format(voice="Cherry") in spoken
    assert p.system_ignored.format(model="qwen-omni-turbo") in spoken
    silent = compose_answer(received(last_user_text="   "), language, closing=0)
    assert p.last.split("{")[0] not in silent


@pytest.mark.parametrize("language", TEN_LANGUAGES)
def test_media_inputs_are_listed(language: Language) -> None:
    p = PHRASES[language]
    answer = compose_answer(received(inputs={"video": 1, "image": 2}), language, closing=0)
    assert p.inputs_text_only not in answer
    assert p.media_names["image"] in answer
    assert p.media_names["video"] in answer
    assert p.media_names["audio"] not in answer
    # Images are listed before video whatever order they arrived in.
    assert answer.index(p.media_names["image"]) < answer.index(p.media_names["video"])


def test_media_inputs_in_english_and_chinese() -> None:
    en = compose_answer(received(inputs={"image": 2, "audio": 1}), Language.EN, closing=0)
    assert "The input held 2 image(s), 1 audio clip(s) besides text." in en
    zh = compose_answer(received(inputs={"image": 2}), Language.ZH, closing=0)
    assert "除了文本，输入还包含2张图片。" in zh


def test_english_answer_in_full() -> None:
    answer = compose_answer(received(system=1, messages=4, voice="Ethan"), Language.EN, closing=2)
    assert answer == (
        "Hello! This is omniserve's offline emulator, answering as qwen3-omni-flash. "
        "I received 4 message(s): 2 from the user, 1 from the assistant and 1 system. "
        "The input was text only. That came to 4321 prompt tokens. "
        'Your last message was: "What time is it?". I am speaking with the voice Ethan. '
        "Everything here was generated offline, with no network and no model weights."
    )


def test_chinese_answer_has_no_spaces_between_sentences() -> None:
    answer = compose_answer(received(last_user_text="你是谁？"), Language.ZH, closing=0)
    assert answer.startswith(
        "你好！这里是 omniserve 的离线模拟引擎，正在代替 qwen3-omni-flash 回答。"
    )
    assert "你最后说的是：“你是谁？”。" in answer


@pytest.mark.parametrize("language", TEN_LANGUAGES)
def test_reasoning(language: Language) -> None:
    text = compose_reasoning(received(), language)
    assert "What time is it?" in text
    assert "4321" in text
    assert "3" in text


def test_excerpt_quotes_and_flattens() -> None:
    en = PHRASES[Language.EN]
    assert excerpt("  two\n\nlines\tand  spaces ", en) == '"two lines and spaces"'
    assert excerpt("x", PHRASES[Language.FR]) == "« x »"
    assert excerpt("x", PHRASES[Language.JA]) == "「x」"
    assert excerpt("x", PHRASES[Language.ZH]) == "\u201cx\u201d"


def test_excerpt_is_cut_with_an_ellipsis() -> None:
    en = PHRASES[Language.EN]
    exact = "a" * EXCERPT_CHARS
    assert excerpt(exact, en) == f'"{exact}"'
    long = "word " * 40
    cut = excerpt(long, en)[1:-1]
    assert cut.endswith("…")
    assert len(cut) <= EXCERPT_CHARS
    assert not cut[:-1].endswith(" ")
