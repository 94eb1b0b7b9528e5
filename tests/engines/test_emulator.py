"""The emulator engine on jobs built by the real validator: determinism, order, limits, pacing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import fast_settings
from omniserve.catalog import Catalog, Language
from omniserve.config import EmulatorSettings
from omniserve.engines import make_engine
from omniserve.engines.base import Engine
from omniserve.engines.emulator import (
    EmulatorEngine,
    last_user_text,
    received_from,
    request_digest,
)
from omniserve.engines.emulator_text import PHRASES
from omniserve.events import EngineEvent, Finished, ReasoningDelta, TextDelta
from omniserve.job import CompletionTokens, GenerationJob
from omniserve.protocol.request import parse_chat_request
from omniserve.protocol.validate import RequestValidator
from omniserve.tokens import get_tokenizer

TOK = get_tokenizer()
VALIDATOR = RequestValidator(Catalog.default(), TOK)
FAST = EmulatorEngine(EmulatorSettings(tokens_per_second=0, first_token_ms=0), TOK)


def job(**fields: Any) -> GenerationJob:
    body: dict[str, Any] = {
        "model": "qwen3-omni-flash",
        "messages": [{"role": "user", "content": "你是谁？"}],
        "stream": True,
        **fields,
    }
    return VALIDATOR.validate(parse_chat_request(json.dumps(body).encode())).job


def run(j: GenerationJob, engine: EmulatorEngine = FAST) -> list[EngineEvent]:
    async def collect() -> list[EngineEvent]:
        return [event async for event in engine.generate(j)]

    return asyncio.run(collect())


def text_of(events: list[EngineEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def reasoning_of(events: list[EngineEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, ReasoningDelta))


def finished(events: list[EngineEvent]) -> Finished:
    last = events[-1]
    assert isinstance(last, Finished)
    assert sum(isinstance(e, Finished) for e in events) == 1
    return last


def test_is_an_engine() -> None:
    assert isinstance(FAST, Engine)
    assert FAST.name == "emulator"
    assert FAST.speaks is False
    assert isinstance(make_engine(fast_settings(), TOK, Catalog.default()), EmulatorEngine)


def test_start_and_close() -> None:
    async def lifecycle() -> None:
        await FAST.start()
        await FAST.close()

    asyncio.run(lifecycle())


def test_deterministic_for_the_same_request_and_seed() -> None:
    a = run(job(seed=7))
    b = run(job(seed=7))
    assert a == b
    assert text_of(a)
    # The request id is not part of the output.
    assert job(seed=7).request_id != job(seed=7).request_id


def test_seed_changes_the_reply() -> None:
    base = text_of(run(job(seed=0)))
    others = {text_of(run(job(seed=seed))) for seed in range(1, 8)}
    assert others - {base}


def test_request_digest_ignores_ids_but_not_content() -> None:
    assert request_digest(job(seed=1)) == request_digest(job(seed=1))
    assert request_digest(job(seed=1)) != request_digest(job(seed=2))
    other = job(seed=1, messages=[{"role": "user", "content": "你好"}])
    assert request_digest(other) != request_digest(job(seed=1))


def test_event_order_without_thinking() -> None:
    events = run(job())
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    assert all(e.text for e in events[:-1] if isinstance(e, TextDelta))
    assert finished(events).reason == "stop"


def test_event_order_with_thinking() -> None:
    events = run(job(enable_thinking=True))
    kinds = [type(e).__name__ for e in events]
    first_text = kinds.index("TextDelta")
    assert kinds[0] == "ReasoningDelta"
    assert set(kinds[:first_text]) == {"ReasoningDelta"}
    assert set(kinds[first_text:-1]) == {"TextDelta"}
    assert kinds[-1] == "Finished"
    assert reasoning_of(events)
    assert text_of(events)


def test_usage_matches_the_tokenizer() -> None:
    j = job(enable_thinking=True)
    events = run(j)
    usage = finished(events).usage
    assert usage.prompt == j.prompt_tokens
    assert usage.completion == CompletionTokens(
        text=TOK.count(text_of(events)), reasoning=TOK.count(reasoning_of(events))
    )
    assert usage.completion.reasoning > 0
    # Every delta is a whole number of tokens: the pieces re-encode to the same count.
    assert usage.completion.text == sum(
        TOK.count(e.text) for e in events if isinstance(e, TextDelta)
    )


def test_usage_with_audio_output_counts_the_hidden_prompt() -> None:
    j = job(modalities=["text", "audio"])
    usage = finished(run(j)).usage
    assert usage.prompt.total == 207
    assert usage.completion.audio == 0  # speech is added by omniserve.speech, not here


@pytest.mark.parametrize("max_tokens", [1, 5, 17])
def test_max_tokens_stops_with_length(max_tokens: int) -> None:
    events = run(job(max_tokens=max_tokens))
    done = finished(events)
    assert done.reason == "length"
    assert done.usage.completion.text == max_tokens
    assert TOK.count(text_of(events)) == max_tokens
    assert text_of(run(job())).startswith(text_of(events))


def test_max_tokens_larger_than_the_reply_stops_normally() -> None:
    full = finished(run(job())).usage.completion.text
    done = finished(run(job(max_tokens=full)))
    assert done.reason == "stop"
    assert done.usage.completion.text == full
    assert finished(run(job(max_tokens=full + 50))).reason == "stop"


def test_max_tokens_cut_inside_a_multi_token_character_is_still_length() -> None:
    """A character of two tokens that would cross the limit is held back; the reply was cut."""
    j = job(messages=[{"role": "user", "content": "Señor ñ ñ ñ"}])
    answer = text_of(run(j))
    before = 0
    for _piece, n in TOK.stream_pieces(answer):
        if n > 1:
            break
        before += n
    else:
        pytest.fail("the reply has no multi-token piece")
    events = run(job(messages=[{"role": "user", "content": "Señor ñ ñ ñ"}], max_tokens=before + 1))
    done = finished(events)
    assert done.reason == "length"
    assert done.usage.completion.text == before
    assert "\ufffd" not in text_of(events)


def test_max_tokens_does_not_limit_reasoning() -> None:
    events = run(job(enable_thinking=True, max_tokens=3))
    done = finished(events)
    assert done.reason == "length"
    assert done.usage.completion.text == 3
    assert done.usage.completion.reasoning > 3


@pytest.mark.parametrize("budget", [1, 4, 10])
def test_thinking_budget_caps_reasoning(budget: int) -> None:
    events = run(job(enable_thinking=True, thinking_budget=budget))
    done = finished(events)
    assert 0 < done.usage.completion.reasoning <= budget
    assert TOK.count(reasoning_of(events)) == done.usage.completion.reasoning
    full = reasoning_of(run(job(enable_thinking=True)))
    assert full.startswith(reasoning_of(events))
    assert text_of(events)  # the answer still follows
    assert done.reason == "stop"


def test_stop_sequence_cuts_the_reply() -> None:
    full = text_of(run(job()))
    assert "离线" in full
    events = run(job(stop=["离线"]))
    text = text_of(events)
    assert text == full[: full.index("离线")]
    done = finished(events)
    assert done.reason == "stop"
    assert done.usage.completion.text == TOK.count(text)


def test_earliest_stop_sequence_wins() -> None:
    full = text_of(run(job()))
    events = run(job(stop=["模拟", "！", "never-appears"]))
    assert text_of(events) == full[: full.index("！")]


def test_stop_sequence_that_never_appears() -> None:
    assert text_of(run(job(stop=["never-appears"]))) == text_of(run(job()))


def test_pacing() -> None:
    """tokens_per_second=200 and first_token_ms=50: about tokens/200 + 0.05 s, never less."""
    paced = EmulatorEngine(EmulatorSettings(tokens_per_second=200, first_token_ms=50), TOK)
    j = job(max_tokens=30)
    start = time.monotonic()
    events = run(j, paced)
    elapsed = time.monotonic() - start
    tokens = finished(events).usage.completion.text
    assert 25 <= tokens <= 30
    assert elapsed >= (tokens / 200 + 0.05) * 0.9
    assert events == run(j)  # pacing changes timing only


def test_first_token_delay() -> None:
    paced = EmulatorEngine(EmulatorSettings(tokens_per_second=0, first_token_ms=60), TOK)

    async def first_event_after() -> float:
        start = time.monotonic()
        stream = paced.generate(job())
        assert isinstance(stream, AsyncIterator)
        await anext(stream)
        elapsed = time.monotonic() - start
        await stream.aclose()  # type: ignore[attr-defined]
        return elapsed

    assert asyncio.run(first_event_after()) >= 0.05


def test_unpaced_streams_share_the_loop() -> None:
    """With no pacing, two streams still interleave instead of one running to the end."""

    async def both() -> list[int]:
        order: list[int] = []

        async def consume(tag: int) -> None:
            async for _ in FAST.generate(job(max_tokens=100)):
                order.append(tag)

        await asyncio.gather(consume(1), consume(2))
        return order

    order = asyncio.run(both())
    first_two = order.index(2)
    assert first_two < order.count(1)


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("你是谁？", Language.ZH),
        ("Hello, who are you today?", Language.EN),
        ("Bonjour, comment allez-vous aujourd'hui ?", Language.FR),
        ("Guten Morgen, wie geht es dir heute?", Language.DE),
        ("Привет, как у тебя дела?", Language.RU),
        ("Ciao, come stai oggi?", Language.IT),
        ("Hola, ¿cómo estás hoy?", Language.ES),
        ("Olá, como você está hoje?", Language.PT),
        ("こんにちは、お元気ですか？", Language.JA),
        ("안녕하세요, 잘 지내세요?", Language.KO),
    ],
)
def test_reply_language_follows_the_last_user_message(text: str, language: Language) -> None:
    messages = [
        {"role": "user", "content": "Please answer in English."},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": text},
    ]
    j = job(messages=messages)
    assert FAST.language_of(j) == language
    reply = text_of(run(j))
    assert reply.startswith(PHRASES[language].greeting)


def test_turbo_replies_in_chinese_or_english_only() -> None:
    j = job(model="qwen-omni-turbo", messages=[{"role": "user", "content": "こんにちは"}])
    assert FAST.language_of(j) in (Language.ZH, Language.EN)
    j = job(model="qwen-omni-turbo", messages=[{"role": "user", "content": "Hello, who are you?"}])
    assert FAST.language_of(j) == Language.EN


def test_reply_describes_the_request() -> None:
    j = job(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there, how are you?"},
        ],
        modalities=["text", "audio"],
        audio={"voice": "Ethan"},
    )
    reply = text_of(run(j))
    assert "qwen3-omni-flash" in reply
    assert f"{j.prompt_tokens.total} prompt tokens" in reply
    assert '"Hello there, how are you?"' in reply
    assert "voice Ethan" in reply
    assert "ignored" not in reply  # flash honours the system message


def test_turbo_with_audio_says_the_system_message_was_ignored() -> None:
    messages = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hello there, how are you?"},
    ]
    spoken = job(model="qwen-omni-turbo", messages=messages, modalities=["text", "audio"])
    assert received_from(spoken).system_ignored
    reply = text_of(run(spoken))
    assert "The system message was ignored, as qwen-omni-turbo does when it speaks." in reply
    # Text only, or no system message: nothing was ignored.
    assert "ignored" not in text_of(run(job(model="qwen-omni-turbo", messages=messages)))
    alone = job(
        model="qwen-omni-turbo",
        messages=messages[1:],
        modalities=["text", "audio"],
    )
    assert not received_from(alone).system_ignored


def test_received_from() -> None:
    j = job(
        messages=[
            {"role": "system", "content": "s"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "second"},
        ],
        modalities=["text", "audio"],
    )
    r = received_from(j)
    assert (r.model, r.messages, r.user, r.assistant, r.system) == ("qwen3-omni-flash", 4, 2, 1, 1)
    assert r.inputs == {}
    assert r.prompt_tokens == j.prompt_tokens.total
    assert r.last_user_text == "second" == last_user_text(j)
    assert r.voice == "Cherry"
    assert r.system_ignored is False


def test_closing_the_stream_early() -> None:
    async def take_two() -> list[EngineEvent]:
        stream = FAST.generate(job())
        events = [await anext(stream), await anext(stream)]
        await stream.aclose()  # type: ignore[attr-defined]
        return events

    events = asyncio.run(take_two())
    assert all(isinstance(e, TextDelta) for e in events)
