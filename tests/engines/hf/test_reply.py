"""A reply's text: detokenizing, splitting <think>, stop sequences, counting."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from omniserve.engines.hf.reply import Detokenizer, ReplyText, ThinkSplitter, partial_suffix
from omniserve.events import EngineEvent, ReasoningDelta, TextDelta
from tiny_omni import QWEN3, TOKENS

# -- Detokenizer ---------------------------------------------------------------------------

TEXTS = ["héllo 你好", "The quick brown fox 🦊 jumps.", "Hello , world ! it 's"]


@pytest.mark.parametrize("text", TEXTS)
def test_detokenizer_one_id_at_a_time_reproduces_decode(processors: Any, text: str) -> None:
    tokenizer = processors[QWEN3].tokenizer
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = Detokenizer(tokenizer)
    deltas = [detok.add([i]) for i in ids]
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)


def test_detokenizer_waits_for_the_rest_of_a_character(processors: Any) -> None:
    tokenizer = processors[QWEN3].tokenizer
    ids = tokenizer.encode("你", add_special_tokens=False)
    assert len(ids) == 3  # one byte per token: this tiny BPE never saw Chinese
    detok = Detokenizer(tokenizer)
    assert [detok.add([i]) for i in ids] == ["", "", "你"]


@pytest.mark.parametrize("size", [2, 3, 5])
def test_detokenizer_in_batches_of_ids(processors: Any, size: int) -> None:
    tokenizer = processors[QWEN3].tokenizer
    text = "héllo 你好, the lazy dog 🦊!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = Detokenizer(tokenizer)
    assert "".join(detok.add(ids[i : i + size]) for i in range(0, len(ids), size)) == text


def test_detokenizer_skips_special_tokens(processors: Any) -> None:
    tokenizer = processors[QWEN3].tokenizer
    ids = tokenizer.encode("dog", add_special_tokens=False)
    detok = Detokenizer(tokenizer)
    text = "".join(detok.add([i]) for i in [TOKENS["im_start"], *ids, TOKENS["im_end"]])
    assert text == "dog"


# -- ThinkSplitter -------------------------------------------------------------------------


def splits(text: str) -> Iterator[list[str]]:
    """``text`` cut into pieces of 1 to 3 characters in many ways (every fixed size at every
    offset, every single cut, and seeded random mixes), as tokens may cut it."""
    for size in (1, 2, 3):
        for offset in range(size):
            head = [text[:offset]] if offset else []
            yield head + [text[i : i + size] for i in range(offset, len(text), size)]
    for cut in range(1, len(text)):
        yield [text[:cut], text[cut:]]
    rng = random.Random(0)
    for _ in range(300):
        pieces, i = [], 0
        while i < len(text):
            n = rng.randint(1, 3)
            pieces.append(text[i : i + n])
            i += n
        yield pieces


def split_run(pieces: list[str], *, thinks: bool = True) -> tuple[str, str]:
    splitter = ThinkSplitter(thinks)
    out: list[tuple[bool, str]] = []
    for piece in pieces:
        out += splitter.feed(piece)
    out += splitter.flush()
    assert all(text for _, text in out)
    reasoning = "".join(text for is_reasoning, text in out if is_reasoning)
    answer = "".join(text for is_reasoning, text in out if not is_reasoning)
    return reasoning, answer


@pytest.mark.parametrize(
    "text",
    [
        "<think>\nabc</think>\n\nanswer",
        "abc</think>\n\nanswer",  # the chat template already wrote the opening tag
    ],
)
def test_think_splitter_in_every_split(text: str) -> None:
    wrong = {}
    for pieces in splits(text):
        result = split_run(pieces)
        if result != ("abc", "answer"):
            wrong[tuple(pieces)] = result
    assert not wrong, f"{len(wrong)} splits go wrong, e.g. {next(iter(wrong.items()))}"


def test_think_splitter_token_by_token() -> None:
    """How a Qwen3 Thinking model streams: tags and newlines arrive as tokens of their own."""
    pieces = ["<think>", "\n", "abc", "</think>", "\n\n", "answer"]
    assert split_run(pieces) == ("abc", "answer")


def test_think_splitter_keeps_a_look_alike_tag_in_the_reasoning() -> None:
    assert split_run(["<think>a</th", "ink b</thin", "k>c"]) == ("a</think b", "c")
    assert split_run(["<think>a</t", "x</think>c"]) == ("a</tx", "c")


def test_think_splitter_unclosed_reasoning_is_flushed_as_reasoning() -> None:
    assert split_run(["<think>\nstill thin", "king"]) == ("still thinking", "")


def test_think_splitter_without_thinking_passes_everything_as_answer() -> None:
    text = "<think>\nabc</think>\n\nanswer"
    for pieces in splits(text):
        assert split_run(pieces, thinks=False) == ("", text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc</th", 4),
        ("abc<", 1),
        ("</think", 7),
        ("abc", 0),
        ("", 0),
        ("x<<", 1),
        ("</think>", 0),  # a whole tag is not a partial one
        ("</thinks", 0),
    ],
)
def testpartial_suffix(text: str, expected: int) -> None:
    assert partial_suffix(text, "</think>") == expected


# -- ReplyText -----------------------------------------------------------------------------


def _reply(processors: Any, **kwargs: Any) -> tuple[ReplyText, list[EngineEvent]]:
    events: list[EngineEvent] = []
    options: dict[str, Any] = dict(
        thinks=False,
        reasoning_visible=False,
        stops=(),
        max_answer_tokens=None,
        reasoning_budget=None,
        eos=frozenset({TOKENS["im_end"]}),
    )
    options.update(kwargs)
    return ReplyText(processors[QWEN3].tokenizer, events.append, **options), events


def _text(events: list[EngineEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_reply_streams_text_and_counts_until_the_end_token(processors: Any) -> None:
    tokenizer = processors[QWEN3].tokenizer
    reply, events = _reply(processors)
    for token in tokenizer.encode("the lazy dog", add_special_tokens=False):
        reply.add(token)
        assert not reply.done
    reply.add(TOKENS["im_end"])
    assert reply.done and reply.eos_seen and reply.stopped_by is None
    reply.finish()
    assert _text(events) == "the lazy dog"
    assert reply.text_tokens == reply.generated - 1


def test_reply_cuts_at_a_stop_sequence_across_tokens(processors: Any) -> None:
    tokenizer = processors[QWEN3].tokenizer
    reply, events = _reply(processors, stops=("lazy d",))
    for token in tokenizer.encode("the lazy dog barks", add_special_tokens=False):
        reply.add(token)
        if reply.done:
            break
    reply.finish()
    assert reply.stopped_by == "stop"
    assert _text(events) == "the "


def test_reply_held_text_is_sent_when_the_text_ends_without_the_stop(processors: Any) -> None:
    tokenizer = processors[QWEN3].tokenizer
    reply, events = _reply(processors, stops=("dogs",))
    for token in tokenizer.encode("the dog", add_special_tokens=False):
        reply.add(token)
    assert _text(events) == "the "  # "dog" may begin "dogs"
    reply.finish()
    assert _text(events) == "the dog"


def test_reply_budget_forces_the_closing_tag_then_caps_the_answer(processors: Any) -> None:
    tokenizer = processors[QWEN3].tokenizer
    think_end = tokenizer.convert_tokens_to_ids("</think>")
    reply, events = _reply(
        processors, thinks=True, reasoning_visible=True, reasoning_budget=2, max_answer_tokens=2
    )
    words = tokenizer.encode("a b c", add_special_tokens=False)
    reply.add(words[0])
    assert reply.forced_token() is None
    reply.add(words[1])
    assert reply.forced_token() == think_end
    reply.add(think_end)
    assert reply.forced_token() is None and not reply.done
    reply.add(words[0])
    reply.add(words[1])
    assert reply.done and reply.stopped_by == "length"
    assert reply.reasoning_tokens == 2 and reply.text_tokens == 2
    assert any(isinstance(e, ReasoningDelta) for e in events)
