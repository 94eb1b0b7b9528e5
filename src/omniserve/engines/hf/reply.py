"""A request's generated text tokens -> streamed reasoning and answer text.

Token ids arrive one at a time from the thinker. They are decoded without ever splitting a
character, split into reasoning and answer at ``</think>``, cut at a stop sequence, and counted
by kind. The reply also says when the thinker should stop (a stop sequence, the answer's own
``max_tokens``) and when the reasoning has used its budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omniserve.events import EngineEvent, FinishReason, ReasoningDelta, TextDelta

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class Detokenizer:
    """Token ids -> text deltas that never split a character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def add(self, ids: list[int]) -> str:
        self.ids.extend(ids)

        def decode(ids: list[int], *, skip_special_tokens: bool) -> str:
            return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


class ThinkSplitter:
    """Splits streamed text into reasoning (inside <think>…</think>) and answer.

    The newlines that follow each tag belong to neither; they may arrive as pieces of their own.
    """

    def __init__(self, thinks: bool) -> None:
        self.reasoning = thinks
        self.buffer = ""
        self.started = False
        self.skip_newlines = False  # a tag just ended: drop the newlines that follow it

    def feed(self, text: str) -> list[tuple[bool, str]]:
        if self.skip_newlines:
            text = text.lstrip("\n")
            if not text:
                return []
            self.skip_newlines = False
        if not self.reasoning:
            return [(False, text)] if text else []
        self.buffer += text
        out: list[tuple[bool, str]] = []
        if not self.started:
            stripped = self.buffer.lstrip()
            if THINK_OPEN.startswith(stripped) and len(stripped) < len(THINK_OPEN):
                return out  # maybe the opening tag, still arriving
            self.started = True
            if stripped.startswith(THINK_OPEN):
                self.buffer = ""
                return self.feed_after_tag(stripped[len(THINK_OPEN) :], out)
        end = self.buffer.find(THINK_CLOSE)
        if end >= 0:
            if end:
                out.append((True, self.buffer[:end]))
            rest = self.buffer[end + len(THINK_CLOSE) :]
            self.reasoning, self.buffer = False, ""
            return self.feed_after_tag(rest, out)
        keep = partial_suffix(self.buffer, THINK_CLOSE)
        cut = len(self.buffer) - keep
        ready, self.buffer = self.buffer[:cut], self.buffer[cut:]
        if ready:
            out.append((True, ready))
        return out

    def feed_after_tag(self, rest: str, out: list[tuple[bool, str]]) -> list[tuple[bool, str]]:
        self.skip_newlines = True
        return out + self.feed(rest) if rest else out

    def flush(self) -> list[tuple[bool, str]]:
        text, self.buffer = self.buffer, ""
        return [(self.reasoning, text)] if text else []


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that begins ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReplyText:
    """One request's text: counts, streams and decides when the text is over."""

    def __init__(
        self,
        tokenizer: Any,
        emit: Callable[[EngineEvent], None],
        *,
        thinks: bool,
        reasoning_visible: bool,
        stops: tuple[str, ...],
        max_answer_tokens: int | None,
        reasoning_budget: int | None,
        eos: frozenset[int],
        script: tuple[int, ...] | None = None,
    ) -> None:
        self.emit = emit
        self.script = script
        self.detok = Detokenizer(tokenizer)
        self.splitter = ThinkSplitter(thinks)
        self.reasoning_visible = reasoning_visible
        self.stops = stops
        self.max_answer_tokens = max_answer_tokens
        self.reasoning_budget = reasoning_budget
        self.eos = eos
        self.think_end = _token_id(tokenizer, THINK_CLOSE)
        self.answer = ""
        self.held = ""  # answer text that may begin a stop sequence
        self.text_tokens = 0
        self.reasoning_tokens = 0
        self.generated = 0
        self.eos_seen = False
        self.stopped_by: FinishReason | None = None

    def add(self, token: int) -> None:
        """One generated token (any token, end tokens included)."""
        self.generated += 1
        if token in self.eos:
            self.eos_seen = True
            return
        if token != self.think_end:  # the tag between reasoning and answer is neither
            if self.splitter.reasoning:
                self.reasoning_tokens += 1
            else:
                self.text_tokens += 1
        for reasoning, piece in self.splitter.feed(self.detok.add([token])):
            self._text(reasoning, piece)
        cap = self.max_answer_tokens
        if cap is not None and self.text_tokens >= cap:
            self.stopped_by = self.stopped_by or "length"
        if self.over_budget() and self.think_end is None:
            # No </think> token to end the reasoning with: end the reply here.
            self.stopped_by = self.stopped_by or "length"

    @property
    def done(self) -> bool:
        """The text is over: an end token, a stop sequence or the answer's own limit."""
        return self.eos_seen or self.stopped_by is not None

    def over_budget(self) -> bool:
        budget = self.reasoning_budget
        return budget is not None and self.splitter.reasoning and self.reasoning_tokens >= budget

    def forced_token(self) -> int | None:
        """The token the next step must produce: the script's next one while it lasts (a
        script ends with an end token); ``</think>`` once the reasoning budget is spent."""
        if self.script is not None and self.generated < len(self.script):
            return self.script[self.generated]
        return self.think_end if self.over_budget() else None

    def _text(self, reasoning: bool, piece: str) -> None:
        if not piece or self.stopped_by == "stop":
            return
        if reasoning:
            if self.reasoning_visible:
                self.emit(ReasoningDelta(piece))
            return
        if not self.stops:
            self._answer(piece)
            return
        # Text that may be the start of a stop sequence waits until the next piece decides.
        text = self.held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            self._answer(text[:cut])
            self.stopped_by = "stop"
            return
        keep = max(partial_suffix(text, s) for s in self.stops)
        self.held = text[len(text) - keep :] if keep else ""
        self._answer(text[: len(text) - keep])

    def _answer(self, piece: str) -> None:
        if piece:
            self.answer += piece
            self.emit(TextDelta(piece))

    def finish(self) -> None:
        """The thinker has stopped: send what was held back."""
        if self.stopped_by == "stop":
            return
        for reasoning, piece in self.splitter.flush():
            self._text(reasoning, piece)
        held, self.held = self.held, ""
        self._answer(held)


def _token_id(tokenizer: Any, token: str) -> int | None:
    found = tokenizer.convert_tokens_to_ids(token)
    unknown = tokenizer.unk_token_id
    return found if isinstance(found, int) and found >= 0 and found != unknown else None
