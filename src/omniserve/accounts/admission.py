"""Admission: may this request run, and what did it use.

``admit`` reserves a request's estimated tokens against its key's limits before any work
starts and opens its ledger row. The ``Ticket`` it returns grows the reservation once the media
are counted (``fit``), keeps the ledger row's usage so far up to date (``progress``) and, when
the request ends however it ends, settles the reservation with the actual usage and completes
the row (``settle``). Metrics and the request log are the meter's (``omniserve.meter``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from omniserve.accounts.auth import Caller
from omniserve.accounts.keys import ApiKey
from omniserve.accounts.ledger import RUNNING, Outcome, Started
from omniserve.accounts.limits import Limits, Refused, Reservation
from omniserve.accounts.pricing import cost
from omniserve.errors import (
    ApiError,
    FreeQuotaExhausted,
    ModelNotFound,
    RateLimited,
    TokenRateLimited,
)
from omniserve.job import GenerationJob, PromptTokens, Usage

if TYPE_CHECKING:
    from omniserve.accounts.service import Accounts

log = logging.getLogger("omniserve.accounts")

# How often a running request's usage so far is written to its ledger row.
PROGRESS_EVERY_S = 5.0


def refusal(exc: Refused) -> ApiError:
    """A limiter's refusal as the vendor's error."""
    if exc.kind == "tpm":
        return TokenRateLimited(retry_after=exc.retry_after or 1.0)
    if exc.kind == "quota":
        return FreeQuotaExhausted()
    return RateLimited(retry_after=exc.retry_after or 1.0)


def limits_for(key: ApiKey, job: GenerationJob) -> Limits:
    """A key's own limits, with the model's catalog limits where the key sets none; 0: none."""

    def pick(own: int | None, default: int | None) -> int | None:
        value = default if own is None else own
        return value or None

    rates = job.model.rate_limits
    return Limits(
        rpm=pick(key.rpm, rates.requests_per_minute),
        tpm=pick(key.tpm, rates.tokens_per_minute),
        concurrency=pick(key.concurrency, None),
        quota_tokens=pick(key.quota_tokens, None),
    )


def estimate_tokens(job: GenerationJob) -> int:
    """What a request may use at most: its prompt, its reasoning budget and its answer."""
    limits = job.model.mode_limits(job.thinking)
    answer = job.max_tokens or limits.max_output
    reasoning = 0
    if job.thinking:
        reasoning = job.thinking_budget or limits.max_reasoning or 0
    return job.prompt_tokens.total + answer + reasoning


async def admit(accounts: Accounts, caller: Caller, job: GenerationJob) -> Ticket:
    """Reserves the request's estimated tokens and opens its ledger row, or raises the
    vendor's 403/404/429."""
    started = time.monotonic()
    key = caller.key
    reservation: Reservation | None = None
    if key is not None:
        if not key.allows_model(job.model_name):
            raise ModelNotFound(job.model_name)
        try:
            reservation = await accounts.limiter.reserve(
                job.request_id,
                key.id,
                limits_for(key, job),
                estimate_tokens(job),
                key.used_tokens,
            )
        except Refused as exc:
            if accounts.metrics is not None:
                accounts.metrics.refusals.labels(exc.kind).inc()
            raise refusal(exc) from None
        except Exception as exc:  # Redis gone: connection errors, timeouts
            accounts.unavailable("limits", exc)  # fail open: admitted without limits
    if accounts.writer is not None:
        accounts.writer.started(
            Started(job.request_id, caller.key_id, job.model_name, int(time.time() * 1000))
        )
    return Ticket(accounts, caller, job, reservation, started)


class Ticket:
    """One admitted request until it is settled and on the books."""

    def __init__(
        self,
        accounts: Accounts,
        caller: Caller,
        job: GenerationJob,
        reservation: Reservation | None,
        started: float,
    ) -> None:
        self.accounts = accounts
        self.caller = caller
        self.job = job
        self.prompt: PromptTokens = job.prompt_tokens
        self.input_audio_seconds = 0.0  # known once the media are decoded (``fit``)
        self.reservation = reservation
        self.started = started  # time.monotonic() when admission began
        self.settled = False
        self._told = started

    async def fit(self, job: GenerationJob) -> None:
        """The job with its media counted: reserve what the media added to the estimate."""
        extra = job.prompt_tokens.total - self.prompt.total
        self.prompt = job.prompt_tokens
        self.input_audio_seconds = job.input_audio_seconds
        if extra > 0 and self.reservation is not None:
            try:
                await self.accounts.limiter.extend(self.reservation, extra)
            except Refused as exc:
                if self.accounts.metrics is not None:
                    self.accounts.metrics.refusals.labels(exc.kind).inc()
                raise refusal(exc) from None
            except Exception as exc:
                self.accounts.unavailable("limits", exc)

    def progress_due(self) -> bool:
        """Whether the ledger row's usage so far is due for an update (every few seconds)."""
        if self.accounts.writer is None or self.settled:
            return False
        now = time.monotonic()
        if now - self._told < PROGRESS_EVERY_S:
            return False
        self._told = now
        return True

    def progress(
        self, usage: Usage, audio_seconds: float, ttft: float | None, ttfa: float | None
    ) -> None:
        """Writes the usage so far to the request's running ledger row."""
        writer = self.accounts.writer
        if writer is not None and not self.settled:
            writer.progress(self.outcome(RUNNING, None, usage, None, audio_seconds, ttft, ttfa))

    async def settle(
        self,
        status: str,
        *,
        code: str | None = None,
        usage: Usage | None = None,
        finish_reason: str | None = None,
        audio_seconds: float = 0.0,
        ttft: float | None = None,
        ttfa: float | None = None,
    ) -> None:
        """Settles the reservation with the actual usage and completes the ledger row; only
        the first call counts. Times are ``time.monotonic()`` values."""
        if self.settled:
            return
        self.settled = True
        usage = usage or Usage()
        if self.reservation is not None:
            try:
                await self.accounts.limiter.settle(self.reservation, usage.total)
            except Exception:
                log.exception("settling request %s failed", self.job.request_id)
        writer = self.accounts.writer
        if writer is not None:
            writer.finished(
                self.outcome(status, code, usage, finish_reason, audio_seconds, ttft, ttfa)
            )

    def outcome(
        self,
        status: str,
        code: str | None,
        usage: Usage,
        finish_reason: str | None,
        audio_seconds: float,
        ttft: float | None,
        ttfa: float | None,
    ) -> Outcome:
        """The request's ledger row as of now."""

        def ms(t: float | None) -> int | None:
            return None if t is None else round((t - self.started) * 1000)

        return Outcome(
            request_id=self.job.request_id,
            key_id=self.caller.key_id,
            status=status,
            error_code=code,
            finish_reason=finish_reason,
            usage=usage,
            audio_seconds=round(audio_seconds, 3),
            input_audio_seconds=round(self.input_audio_seconds, 3),
            ttft_ms=ms(ttft),
            ttfa_ms=ms(ttfa),
            duration_ms=ms(time.monotonic()),
            cost=cost(self.job.model, usage, self.accounts.settings.price_region),
        )
