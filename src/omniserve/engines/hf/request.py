"""One request as the model's worker threads see it: its plan, its inputs, its way out.

Events leave through ``emit``, which any worker thread may call: they are handed to the request's
asyncio queue on the event loop. The request finishes when every part that produces output
(the text, and the speech when asked for) has said it is done; the last one sends ``Finished``.
The serving side reads ``backlog`` to let a slow reader hold back its own request only.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from omniserve.engines.hf.prompt import ModelInputs
from omniserve.engines.hf.sampling import Sampling
from omniserve.events import EngineEvent, Finished, FinishReason
from omniserve.job import CompletionTokens, GenerationJob, Usage


@dataclass(frozen=True)
class Plan:
    """What the engine decided for one request before it reaches the model."""

    thinker: Sampling
    talker: Sampling | None  # None: text only
    speaker: str | None
    thinks: bool  # the weights write a <think> section first
    reasoning_visible: bool
    reasoning_budget: int | None
    max_answer_tokens: int | None
    chunk_bytes: int
    # Text the thinker must write, token by token (a text read aloud): the talker speaks the
    # thinker's states for it as for an answer of its own.
    read: tuple[int, ...] | None = None

    @property
    def speaks(self) -> bool:
        return self.talker is not None


class Request:
    """A job on its way through the scheduler."""

    def __init__(
        self,
        job: GenerationJob,
        plan: Plan,
        inputs: ModelInputs,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.job, self.plan, self.inputs = job, plan, inputs
        self.loop = loop
        self.events: asyncio.Queue[EngineEvent | BaseException | None] = asyncio.Queue()
        self.cancel = threading.Event()  # the client left, or the request failed
        self._lock = threading.Lock()
        self._backlog = 0
        self._parts = {"text", "speech"} if plan.speaks else {"text"}
        self.finish_reason: FinishReason = "stop"
        self.completion = CompletionTokens()
        self.failed = False
        # What the model generated, for diagnostics and tests: text token ids (end token
        # included) and speech codes (one int per Qwen2.5 code, one list per Qwen3 frame).
        self.tokens: list[int] = []
        self.codes: list[Any] = []
        self.tokens_before_speech: int | None = None  # text tokens made when the first code was

    # -- out -----------------------------------------------------------------------------

    def emit(self, event: EngineEvent | BaseException | None) -> None:
        """Hand an event to the request's reader (any thread)."""
        with self._lock:
            self._backlog += 1
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody reads any more
            self.cancel.set()

    def consumed(self) -> None:
        """The reader took one event (event loop thread)."""
        with self._lock:
            self._backlog -= 1

    @property
    def backlog(self) -> int:
        with self._lock:
            return self._backlog

    def fail(self, error: BaseException) -> None:
        """Stop the request with ``error`` (once); its slot is released by the scheduler."""
        with self._lock:
            if self.failed or not self._parts:
                return
            self.failed = True
            self._parts.clear()
        self.cancel.set()
        self.emit(error)

    @property
    def gone(self) -> bool:
        return self.cancel.is_set()

    def done(self, part: str) -> None:
        """``part`` ("text" or "speech") has sent all it will; the last one finishes."""
        with self._lock:
            if part not in self._parts:
                return
            self._parts.discard(part)
            last = not self._parts
        if last:
            usage = Usage(prompt=self.inputs.prompt, completion=self.completion)
            self.emit(Finished(reason=self.finish_reason, usage=usage))
