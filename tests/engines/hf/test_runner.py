"""Streaming text out of generate: detokenizing, splitting <think>, and one whole run."""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from omniserve.catalog import Catalog
from omniserve.config import ServedCheckpoint, TransformersSettings
from omniserve.engines.base import (
    ChatMessage,
    EngineEvent,
    Finished,
    GenerationJob,
    PromptTokens,
    ReasoningDelta,
    SamplingParams,
    TextDelta,
)
from omniserve.engines.hf.checkpoint import inspect_checkpoint
from omniserve.engines.hf.loader import LoadedModel, load
from omniserve.engines.hf.prompt import build_inputs
from omniserve.engines.hf.runner import (
    Detokenizer,
    RequestRun,
    RunOptions,
    ThinkSplitter,
    _partial_suffix,
)
from tiny_omni import FAMILIES, QWEN3, TOKENS

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
def test_partial_suffix(text: str, expected: int) -> None:
    assert _partial_suffix(text, "</think>") == expected


# -- RequestRun: one text-only request through generate ------------------------------------

FLASH = Catalog.default().get("qwen3-omni-flash")


@pytest.fixture(scope="module")
def loaded(tiny: Any) -> Any:
    settings = TransformersSettings(device="cpu", dtype="float32", audio_output="off")
    console = Console(file=io.StringIO())
    cache: dict[str, LoadedModel] = {}

    def get(family: str) -> LoadedModel:
        if family not in cache:
            info = inspect_checkpoint(ServedCheckpoint(checkpoint=str(tiny[family])))
            cache[family] = load(info, settings, console=console)
        return cache[family]

    return get


def run_job(
    loaded: LoadedModel,
    *,
    max_new_tokens: int,
    stop: tuple[str, ...] = (),
    thinking: tuple[bool, int, int] | None = None,  # (visible, budget, answer cap)
) -> tuple[GenerationJob, list[EngineEvent]]:
    job = GenerationJob(
        request_id="00000000-0000-0000-0000-000000000000",
        model_name=FLASH.name,
        model=FLASH,
        messages=(ChatMessage("user", "Hello there! What do you hear?"),),
        prompt_tokens=PromptTokens(),
        sampling=SamplingParams(seed=0, stop=stop),
    )
    options = RunOptions(
        speaker=None,
        reasoning_visible=bool(thinking and thinking[0]),
        thinks=thinking is not None,
        max_new_tokens=max_new_tokens,
        reasoning_budget=thinking[1] if thinking else None,
        chunk_bytes=4096,
        max_answer_tokens=thinking[2] if thinking else None,
    )
    events: list[EngineEvent] = []
    RequestRun(loaded, job, options, events.append, threading.Event()).run()
    return job, events


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_run_streams_text_then_finishes(loaded: Any, family: str) -> None:
    model = loaded(family)
    job, events = run_job(model, max_new_tokens=12)
    assert isinstance(events[-1], Finished)
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    finished = events[-1]
    expected_prompt = build_inputs(
        job, model.processor, family, speaks=False, native_video=False
    ).prompt
    assert finished.usage.prompt == expected_prompt
    completion = finished.usage.completion
    assert 1 <= completion.text <= 12
    assert completion.audio == completion.reasoning == 0
    if finished.reason == "length":
        assert completion.text == 12
    # Same seed, same text.
    _, again = run_job(model, max_new_tokens=12)
    assert again == events


def test_stop_sequence_cuts_the_answer_before_it(loaded: Any) -> None:
    model = loaded(QWEN3)
    _, events = run_job(model, max_new_tokens=24)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert len(text) >= 6, text
    stop = text[3:5]
    _, stopped = run_job(model, max_new_tokens=24, stop=(stop,))
    assert "".join(e.text for e in stopped if isinstance(e, TextDelta)) == text[: text.find(stop)]
    assert isinstance(stopped[-1], Finished)
    assert stopped[-1].reason == "stop"


@pytest.mark.parametrize("visible", [True, False])
def test_the_thinking_budget_ends_reasoning_and_the_model_answers(
    loaded: Any, visible: bool
) -> None:
    """At the budget the next token is forced to </think>; the answer follows, capped on its own."""
    model = loaded(QWEN3)
    _, events = run_job(model, max_new_tokens=3 + 1 + 5, thinking=(visible, 3, 5))
    reasoning = [e for e in events if isinstance(e, ReasoningDelta)]
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert bool(reasoning) is visible
    assert answer and "</think>" not in answer
    assert finished.usage.completion.reasoning == 3
    assert 1 <= finished.usage.completion.text <= 5
    if finished.reason == "length":
        assert finished.usage.completion.text == 5
