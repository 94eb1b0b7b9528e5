"""Admission: who is calling, may they, and what they used.

``Accounts`` authenticates a request's bearer key, reserves its estimated tokens against the
key's limits before any work starts (``admit``), grows the reservation once the media are
counted (``Ticket.fit``), and when the stream ends, however it ends, settles the reservation
with the actual usage and puts the request on the ledger (``Ticket.meter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import anyio
from anyio.to_thread import run_sync

from omniserve.accounts.database import database_url, open_database
from omniserve.accounts.keys import ApiKey, KeyRing, KeyStore
from omniserve.accounts.ledger import (
    RUNNING,
    LedgerWriter,
    Outcome,
    Started,
    close_running,
    running_owners,
    sweep,
)
from omniserve.accounts.limits import InProcessLimiter, Limiter, Limits, Refused, Reservation
from omniserve.accounts.owners import Presence, new_owner
from omniserve.accounts.pricing import cost
from omniserve.accounts.watch import KeyWatch, watch_for
from omniserve.config import AccountsSettings
from omniserve.engines.base import (
    AudioDelta,
    CompletionTokens,
    EngineEvent,
    Finished,
    GenerationJob,
    PromptTokens,
    ReasoningDelta,
    TextDelta,
    Usage,
)
from omniserve.errors import (
    AccessDenied,
    ApiError,
    FreeQuotaExhausted,
    InvalidApiKey,
    MalformedApiKey,
    MissingApiKey,
    ModelNotFound,
    RateLimited,
    ServiceUnavailable,
    TokenRateLimited,
)
from omniserve.logs import log_request
from omniserve.metrics import Metrics
from omniserve.protocol.tokens import QwenTokenizer

log = logging.getLogger("omniserve.accounts")

AuthLevel = Literal["public", "key", "admin"]
SWEEP_EVERY_S = 3600.0
# How often a server looks for running rows of servers that died (it also does at start-up).
REAP_EVERY_S = 60.0
# How often a running request's usage so far is written to its ledger row.
PROGRESS_EVERY_S = 5.0
PCM_BYTES_PER_SECOND = 24_000 * 2


@dataclass(frozen=True)
class Caller:
    """The authenticated caller; ``key`` is None on a server without keys."""

    key: ApiKey | None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None

    def may_use(self, model: str) -> bool:
        return self.key is None or self.key.allows_model(model)


def make_limiter(settings: AccountsSettings) -> Limiter:
    if settings.redis_url:
        from omniserve.accounts.redis_limits import RedisLimiter

        return RedisLimiter.from_url(settings.redis_url)
    return InProcessLimiter()


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


class Accounts:
    """Keys, limits and the ledger of one server."""

    def __init__(
        self,
        settings: AccountsSettings,
        tokenizer: QwenTokenizer,
        *,
        limiter: Limiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tokenizer = tokenizer
        self.url = database_url(settings.database_url, settings.data_dir.expanduser())
        self._limiter = limiter
        self.limiter: Limiter = limiter or InProcessLimiter()
        self.store: KeyStore | None = None
        self.ring: KeyRing | None = None
        self.watch: KeyWatch | None = None
        self.writer: LedgerWriter | None = None
        self.presence: Presence | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._warned: dict[str, float] = {}
        self.pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        engine = await run_sync(open_database, self.url)
        self.store = KeyStore(engine)
        self.ring = KeyRing(self.store)
        self.watch = watch_for(self.ring)
        await self.watch.start()
        if self._limiter is None:
            self.limiter = make_limiter(self.settings)
        if self.settings.ledger:
            self.presence = Presence(engine, new_owner())
            try:
                held = await run_sync(self.presence.hold)
            except OSError as exc:
                log.warning("ledger: cannot mark this server as running (%s)", exc)
                held = False
            self.writer = LedgerWriter(engine, owner=self.presence.owner if held else None)
            if self.metrics is not None:
                self.writer.on_drop = self.metrics.ledger_dropped.inc
            # Before serving: close what a server that died left running.
            with contextlib.suppress(Exception):
                await self.reap()
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.watch is not None:
            await self.watch.close()
        if self.writer is not None:
            await run_sync(self.writer.close)
        if self.presence is not None:
            self.presence.release()
        await self.limiter.close()
        if self.store is not None:
            self.store.engine.dispose()

    async def reap(self) -> int:
        """Closes as interrupted the running rows of server processes that are gone, with the
        usage they had reached; returns how many."""
        presence, store = self.presence, self.store
        if presence is None or store is None or not presence.tells:
            return 0

        def reap() -> int:
            presence.hold()  # taken again if its database session was lost
            dead = presence.gone(running_owners(store.engine))
            if not dead:
                return 0
            closed = close_running(store.engine, owners=dead)
            for owner in dead:
                presence.forget(owner)
            return closed

        try:
            closed = await run_sync(reap)
        except Exception:
            log.exception("ledger: looking for requests of stopped servers failed")
            raise
        if closed:
            log.warning(
                "ledger: %d requests of a server that stopped without ending them are closed "
                "as interrupted, with the usage they had reached",
                closed,
            )
        return closed

    async def _sweep_forever(self) -> None:
        assert self.store is not None
        swept = -SWEEP_EVERY_S
        while True:
            if time.monotonic() - swept >= SWEEP_EVERY_S:
                swept = time.monotonic()
                try:
                    interrupted, deleted = await run_sync(
                        lambda: sweep(
                            self.store.engine,  # type: ignore[union-attr]
                            retention_days=self.settings.retention_days,
                            stale_after_s=self.settings.stale_after_s,
                        )
                    )
                    if interrupted or deleted:
                        log.info("ledger: %d rows interrupted, %d expired", interrupted, deleted)
                except Exception:
                    log.exception("ledger sweep failed")
            await asyncio.sleep(REAP_EVERY_S)
            with contextlib.suppress(Exception):  # logged by reap
                await self.reap()

    async def _current_keys(self) -> KeyRing:
        assert self.watch is not None, "Accounts.start() was not awaited"
        try:
            return await self.watch.current()
        except Exception as exc:  # the database's driver errors, OSError, timeouts
            self._unavailable("database", exc)
            assert self.ring is not None
            return self.ring  # fail open: the keys as last read

    def _unavailable(self, what: Literal["database", "limits"], exc: BaseException) -> None:
        """A dependency failed while serving: raises the API's 503, or with ``fail_open``
        logs it (at most every 10 s) and returns so that the caller carries on without it."""
        now = time.monotonic()
        if now - self._warned.get(what, -60.0) >= 10.0:
            self._warned[what] = now
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning(
                "%s unavailable (%s): %s",
                "the accounts database" if what == "database" else "the rate limiter",
                reason,
                "serving anyway (fail_open)" if self.settings.fail_open else "answering 503",
            )
        if self.metrics is not None:
            self.metrics.degraded.labels(what).inc()
        if not self.settings.fail_open:
            if what == "database":
                raise ServiceUnavailable(
                    "The server cannot check API keys right now: its database is unavailable. "
                    "Try again shortly."
                ) from None
            raise ServiceUnavailable(
                "The server cannot check rate limits right now: its limiter is unavailable. "
                "Try again shortly."
            ) from None

    async def check_database(self, timeout_s: float = 2.0) -> str | None:
        """None when the database answers a trivial query in time, else what is wrong."""
        store = self.store
        if store is None:
            return "not opened"

        def ping() -> None:
            with store.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")

        try:
            with anyio.fail_after(timeout_s):
                await run_sync(ping, abandon_on_cancel=True)
        except TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except Exception as exc:  # the driver's errors vary; one line of what it said
            text = str(getattr(exc, "orig", None) or exc).strip()
            return text.splitlines()[0] if text else type(exc).__name__
        return None

    async def check_limiter(self, timeout_s: float = 2.0) -> str | None:
        """None when the shared limiter (Redis) answers in time, or there is none."""
        ping = getattr(self.limiter, "ping", None)
        if ping is None:
            return None
        try:
            with anyio.fail_after(timeout_s):
                await ping()
        except TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except Exception as exc:
            text = str(exc).strip()
            return text.splitlines()[0] if text else type(exc).__name__
        return None

    async def keys_required(self) -> bool:
        return (await self._current_keys()).required

    async def authenticate(self, authorization: str | None, level: AuthLevel) -> Caller:
        """The caller of a route at ``level``; raises the 401/403 errors of the API."""
        if level == "public":
            return Caller(None)
        ring = await self._current_keys()
        if not ring.required:
            return Caller(None)
        if authorization is None or not authorization.strip():
            raise MissingApiKey()
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise MalformedApiKey()
        key = ring.find(token)
        if key is None:
            raise InvalidApiKey()
        if level == "admin" and not key.admin:
            raise AccessDenied()
        return Caller(key)

    async def admit(self, caller: Caller, job: GenerationJob) -> Ticket:
        """Reserves the request's estimated tokens, or raises the vendor's 403/404/429."""
        started = time.monotonic()
        key = caller.key
        reservation: Reservation | None = None
        if key is not None:
            if not key.allows_model(job.model_name):
                raise ModelNotFound(job.model_name)
            try:
                reservation = await self.limiter.reserve(
                    job.request_id,
                    key.id,
                    limits_for(key, job),
                    estimate_tokens(job),
                    key.used_tokens,
                )
            except Refused as exc:
                if self.metrics is not None:
                    self.metrics.refusals.labels(exc.kind).inc()
                raise refusal(exc) from None
            except Exception as exc:  # Redis gone: connection errors, timeouts
                self._unavailable("limits", exc)  # fail open: admitted without limits
        if self.writer is not None:
            self.writer.started(
                Started(job.request_id, caller.key_id, job.model_name, int(time.time() * 1000))
            )
        return Ticket(self, caller, job, reservation, started)


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
        self.reservation = reservation
        self.started = started
        self.closed = False
        self.interrupted_by: str | None = None  # the error code when the server ended it
        # Reply tokens counted for the ledger's usage so far: of the first N pieces of text
        # and of reasoning.
        self._counted = [0, 0]
        self._pieces = [0, 0]
        metrics = accounts.metrics
        self.model_label = metrics.model(job.model_name) if metrics else ""
        if metrics is not None:
            metrics.active.inc()

    def interrupt(self, reason: ApiError) -> None:
        """The server is ending this stream (shutdown): the ledger says so, not "disconnected"."""
        self.interrupted_by = reason.code

    def abandon(self) -> None:
        """The response is over: a ticket whose stream never ran is settled as disconnected."""
        if not self.closed:
            task = asyncio.get_running_loop().create_task(self.close("disconnected"))
            self.accounts.pending.add(task)
            task.add_done_callback(self.accounts.pending.discard)

    async def fit(self, job: GenerationJob) -> None:
        """The job with its media counted: reserve what the media added to the estimate."""
        extra = job.prompt_tokens.total - self.prompt.total
        self.prompt = job.prompt_tokens
        if extra > 0 and self.reservation is not None:
            try:
                await self.accounts.limiter.extend(self.reservation, extra)
            except Refused as exc:
                if self.accounts.metrics is not None:
                    self.accounts.metrics.refusals.labels(exc.kind).inc()
                raise refusal(exc) from None
            except Exception as exc:
                self.accounts._unavailable("limits", exc)

    async def meter(self, events: AsyncIterator[EngineEvent]) -> AsyncIterator[EngineEvent]:
        """The events, passed through, observed for the ledger; settles when they end."""
        status, usage, reason = "error", None, None
        code: str | None = "InternalError"
        text: list[str] = []
        reasoning: list[str] = []
        audio_bytes = 0
        ttft: float | None = None
        ttfa: float | None = None
        produced = False
        metrics = self.accounts.metrics
        gaps = metrics.gap.labels(self.model_label) if metrics is not None else None
        last: float | None = None
        told = time.monotonic()
        try:
            async for event in events:
                produced = True
                if time.monotonic() - told >= PROGRESS_EVERY_S:
                    told = time.monotonic()
                    self._progress(text, reasoning, audio_bytes, ttft, ttfa)
                content = False
                if isinstance(event, TextDelta | ReasoningDelta):
                    content = bool(event.text)
                    (text if isinstance(event, TextDelta) else reasoning).append(event.text)
                elif isinstance(event, AudioDelta):
                    content = bool(event.pcm)
                    audio_bytes += len(event.pcm)
                elif isinstance(event, Finished):
                    status, code, usage, reason = "ok", None, event.usage, event.reason
                if content:  # a chunk the client sees: first-token times and the gap
                    now = time.monotonic()
                    if isinstance(event, AudioDelta):
                        ttfa = ttfa or now
                    else:
                        ttft = ttft or now
                    if gaps is not None and last is not None:
                        gaps.observe(now - last)
                    last = now
                yield event
        except ApiError as exc:
            status, code = "error", exc.code
            raise
        except (GeneratorExit, asyncio.CancelledError):
            if status != "ok":
                if self.interrupted_by is not None:  # ended by the server (shutting down)
                    status, code = "error", self.interrupted_by
                else:
                    status, code = "disconnected", None
            raise
        finally:
            if usage is None and produced:
                usage = self._partial_usage("".join(text), "".join(reasoning), audio_bytes)
            with anyio.CancelScope(shield=True):
                # The engine's stream ends here, not whenever it is garbage-collected.
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
                await self.close(
                    status,
                    code=code,
                    usage=usage or Usage(),
                    finish_reason=reason,
                    audio_seconds=audio_bytes / PCM_BYTES_PER_SECOND,
                    ttft=ttft,
                    ttfa=ttfa,
                )

    def _progress(
        self,
        text: list[str],
        reasoning: list[str],
        audio_bytes: int,
        ttft: float | None,
        ttfa: float | None,
    ) -> None:
        """Writes the usage so far to the ledger's running row, counting only the pieces of
        reply that arrived since the last time (so a long reply costs no more each time)."""
        writer = self.accounts.writer
        if writer is None:
            return
        for i, pieces in enumerate((text, reasoning)):
            new = "".join(pieces[self._pieces[i] :])
            self._pieces[i] = len(pieces)
            if new:
                self._counted[i] += self.accounts.tokenizer.count(new)
        rate = self.job.model.tokens.output_audio_tokens_per_second
        usage = Usage(
            prompt=self.prompt,
            completion=CompletionTokens(
                text=self._counted[0],
                audio=round(audio_bytes / PCM_BYTES_PER_SECOND * rate),
                reasoning=self._counted[1],
            ),
        )
        seconds = audio_bytes / PCM_BYTES_PER_SECOND
        writer.progress(self._outcome(RUNNING, None, usage, None, seconds, ttft, ttfa))

    def _outcome(
        self,
        status: str,
        code: str | None,
        usage: Usage,
        finish_reason: str | None,
        audio_seconds: float,
        ttft: float | None,
        ttfa: float | None,
    ) -> Outcome:
        """The ledger's row for this request as of now."""

        def ms(t: float | None) -> int | None:
            return None if t is None else round((t - self.started) * 1000)

        p, c = usage.prompt, usage.completion
        return Outcome(
            request_id=self.job.request_id,
            key_id=self.caller.key_id,
            status=status,
            error_code=code,
            finish_reason=finish_reason,
            prompt_text=p.text,
            prompt_image=p.image,
            prompt_audio=p.audio,
            prompt_video=p.video,
            completion_text=c.text,
            completion_audio=c.audio,
            completion_reasoning=c.reasoning,
            audio_seconds=round(audio_seconds, 3),
            ttft_ms=ms(ttft),
            ttfa_ms=ms(ttfa),
            duration_ms=ms(time.monotonic()),
            cost=cost(self.job.model, usage, self.accounts.settings.price_region),
        )

    def _partial_usage(self, text: str, reasoning: str, audio_bytes: int) -> Usage:
        """What a stream that ended early used, counted from what it delivered."""
        count = self.accounts.tokenizer.count
        rate = self.job.model.tokens.output_audio_tokens_per_second
        return Usage(
            prompt=self.prompt,
            completion=CompletionTokens(
                text=count(text) if text else 0,
                audio=round(audio_bytes / PCM_BYTES_PER_SECOND * rate),
                reasoning=count(reasoning) if reasoning else 0,
            ),
        )

    async def close(
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
        """Settles the reservation and completes the ledger row; only the first call counts."""
        if self.closed:
            return
        self.closed = True
        usage = usage or Usage()
        actual = usage.prompt.total + usage.completion.total
        if self.reservation is not None:
            try:
                await self.accounts.limiter.settle(self.reservation, actual)
            except Exception:
                log.exception("settling request %s failed", self.job.request_id)
        ended = time.monotonic()

        def ms(t: float | None) -> int | None:
            return None if t is None else round((t - self.started) * 1000)

        p, c = usage.prompt, usage.completion
        tokens = {
            "prompt_text": p.text,
            "prompt_image": p.image,
            "prompt_audio": p.audio,
            "prompt_video": p.video,
            "completion_text": c.text,
            "completion_audio": c.audio,
            "completion_reasoning": c.reasoning,
        }
        metrics = self.accounts.metrics
        if metrics is not None:
            model = self.model_label
            metrics.active.dec()
            metrics.requests.labels(model, status).inc()
            if code is not None:
                metrics.error(code)
            metrics.duration.labels(model).observe(ended - self.started)
            if ttft is not None:
                metrics.ttft.labels(model).observe(ttft - self.started)
            if ttfa is not None:
                metrics.ttfa.labels(model).observe(ttfa - self.started)
            for kind, n in tokens.items():
                if n:
                    metrics.tokens.labels(model, kind).inc(n)
            if audio_seconds:
                metrics.audio_seconds.labels(model).inc(audio_seconds)
        log_request(
            {
                "request_id": self.job.request_id,
                "key_id": self.caller.key_id,
                "model": self.job.model_name,
                "status": status,
                "error_code": code,
                "finish_reason": finish_reason,
                "tokens": {k: v for k, v in tokens.items() if v},
                "audio_seconds": round(audio_seconds, 3),
                "ttft_ms": ms(ttft),
                "ttfa_ms": ms(ttfa),
                "duration_ms": ms(ended),
            }
        )
        writer = self.accounts.writer
        if writer is None:
            return
        writer.finished(
            self._outcome(status, code, usage, finish_reason, audio_seconds, ttft, ttfa)
        )
