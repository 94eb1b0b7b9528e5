"""The request meter: what one chat completion did, for the metrics and the request log.

It observes; it never wraps the stream. The serving object (``service.py``) tells it that a
request was refused, admitted, sent an event, or ended, and it keeps the times (first token,
first audio, the gaps between chunks) and what was delivered, so that a stream that ends early
is counted from what the client really got. When the request ends it writes the metrics and the
one log line of the request.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from omniserve.errors import ApiError
from omniserve.events import (
    PCM_BYTES_PER_SECOND,
    AudioDelta,
    EngineEvent,
    ReasoningDelta,
    TextDelta,
)
from omniserve.job import CompletionTokens, GenerationJob, Usage
from omniserve.logs import log_request
from omniserve.metrics import Metrics
from omniserve.tokens import QwenTokenizer

if TYPE_CHECKING:
    from omniserve.accounts.admission import Ticket

# What an answer to a client that left is counted as (nginx's "client closed request").
CLIENT_CLOSED = 499
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,100})"')


def model_named(body: bytes | bytearray) -> str:
    """The model a (possibly invalid) body names, for the metrics' label; "" when none."""
    found = _MODEL.search(body, 0, 4096)
    return found.group(1).decode("utf-8", "replace") if found else ""


class RequestMeter:
    """One request's times and deliveries, and the metrics and log line they make."""

    def __init__(self, metrics: Metrics | None, tokenizer: QwenTokenizer) -> None:
        self.metrics = metrics
        self.tokenizer = tokenizer
        self.started = time.monotonic()
        self.job: GenerationJob | None = None
        self.key_id: str | None = None
        self.label = ""
        self.ttft: float | None = None  # time.monotonic() of the first text or reasoning
        self.ttfa: float | None = None  # … of the first audio
        self.last: float | None = None  # … of the latest chunk the client sees
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.audio_bytes = 0
        self.produced = False  # the engine sent at least one event
        self.ended = False
        self.injected: str | None = None  # the kind of fault a script injected, if any
        # Reply tokens counted so far: of the first N pieces of text, and of reasoning.
        self._counted = [0, 0]
        self._pieces = [0, 0]

    # -- before admission ------------------------------------------------------------------

    def refused(self, body: bytes | bytearray, exc: ApiError) -> None:
        """Refused before it was admitted (invalid, unauthorised, over a limit)."""
        if self.metrics is not None:
            self.metrics.requests.labels(self.metrics.model(model_named(body)), "refused").inc()
            self.metrics.error(exc.code)

    def left(self, body: bytes | bytearray) -> None:
        """The client left while sending its body."""
        if self.metrics is not None:
            self.metrics.requests.labels(
                self.metrics.model(model_named(body)), "disconnected"
            ).inc()

    # -- admitted --------------------------------------------------------------------------

    def admitted(self, job: GenerationJob, key_id: str | None, *, started: float) -> None:
        """Admitted (its admission began at ``started``, a ``time.monotonic()``): running
        from then until ``end``."""
        self.started = started
        self.job, self.key_id = job, key_id
        if self.metrics is not None:
            self.label = self.metrics.model(job.model_name)
            self.metrics.active.inc()

    def observe(self, event: EngineEvent) -> None:
        """An event on its way to the client."""
        self.produced = True
        content = False
        if isinstance(event, TextDelta):
            content = bool(event.text)
            self.text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            content = bool(event.text)
            self.reasoning.append(event.text)
        elif isinstance(event, AudioDelta):
            content = bool(event.pcm)
            self.audio_bytes += len(event.pcm)
        if not content:
            return
        now = time.monotonic()  # a chunk the client sees: first-chunk times and the gap
        if isinstance(event, AudioDelta):
            self.ttfa = self.ttfa or now
        else:
            self.ttft = self.ttft or now
        if self.metrics is not None and self.last is not None:
            self.metrics.gap.labels(self.label).observe(now - self.last)
        self.last = now

    @property
    def audio_seconds(self) -> float:
        return self.audio_bytes / PCM_BYTES_PER_SECOND

    def delivered(self, job: GenerationJob, *, final: bool = False) -> Usage:
        """The usage of what was delivered so far: the prompt as counted, and the reply's
        tokens counted from its text and audio.

        While the request runs each call counts only the pieces that arrived since the last
        one, so calling it every few seconds costs no more as a reply grows; ``final`` counts
        the whole reply at once (a count of pieces can differ from it by a token at a seam)."""
        counted = [0, 0]
        for i, pieces in enumerate((self.text, self.reasoning)):
            if final:
                whole = "".join(pieces)
                counted[i] = self.tokenizer.count(whole) if whole else 0
                continue
            new = "".join(pieces[self._pieces[i] :])
            self._pieces[i] = len(pieces)
            if new:
                self._counted[i] += self.tokenizer.count(new)
            counted[i] = self._counted[i]
        rate = job.model.tokens.output_audio_tokens_per_second
        return Usage(
            prompt=job.prompt_tokens,
            completion=CompletionTokens(
                text=counted[0],
                audio=round(self.audio_seconds * rate),
                reasoning=counted[1],
            ),
        )

    async def settle(
        self,
        ticket: Ticket,
        status: str,
        code: str | None,
        usage: Usage,
        finish_reason: str | None,
    ) -> None:
        """Settles the request's ``ticket`` (limits and ledger row) with what this meter saw,
        then ends the meter (metrics and the log line)."""
        await ticket.settle(
            status,
            code=code,
            usage=usage,
            finish_reason=finish_reason,
            audio_seconds=self.audio_seconds,
            ttft=self.ttft,
            ttfa=self.ttfa,
        )
        self.end(status, code, usage, finish_reason)

    def end(self, status: str, code: str | None, usage: Usage, finish_reason: str | None) -> None:
        """The request is over: its metrics and its log line (once)."""
        if self.ended or self.job is None:
            return
        self.ended = True
        ended = time.monotonic()
        tokens = usage.by_kind()
        metrics = self.metrics
        if metrics is not None:
            model = self.label
            metrics.active.dec()
            metrics.requests.labels(model, status).inc()
            if code is not None:
                metrics.error(code)
            metrics.duration.labels(model).observe(ended - self.started)
            if self.ttft is not None:
                metrics.ttft.labels(model).observe(self.ttft - self.started)
            if self.ttfa is not None:
                metrics.ttfa.labels(model).observe(self.ttfa - self.started)
            for kind, n in tokens.items():
                if n:
                    metrics.tokens.labels(model, kind).inc(n)
            if self.audio_bytes:
                metrics.audio_seconds.labels(model).inc(self.audio_seconds)

        def ms(t: float | None) -> int | None:
            return None if t is None else round((t - self.started) * 1000)

        fields: dict[str, object] = {}
        if self.injected is not None:
            fields["injected"] = self.injected
        if self.job.script is not None and self.job.script.rule is not None:
            fields["rule"] = self.job.script.rule
        log_request(
            {
                "request_id": self.job.request_id,
                "key_id": self.key_id,
                "model": self.job.model_name,
                "status": status,
                "error_code": code,
                "finish_reason": finish_reason,
                "tokens": {k: v for k, v in tokens.items() if v},
                "audio_seconds": round(self.audio_seconds, 3),
                "ttft_ms": ms(self.ttft),
                "ttfa_ms": ms(self.ttfa),
                "duration_ms": ms(ended),
                **fields,
            }
        )
