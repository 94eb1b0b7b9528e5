"""The chat service: request bytes in, engine events (with speech) out.

It owns the catalog, tokenizer, validator, engine and synthesizer for the server's lifetime, so
the HTTP layer only parses, calls it and encodes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from omniserve.catalog import Catalog, ModelSpec
from omniserve.config import Settings
from omniserve.engines import make_engine
from omniserve.engines.base import Engine, EngineEvent, GenerationJob
from omniserve.errors import RequestTimedOut
from omniserve.media.pipeline import MediaProcessor
from omniserve.media.policy import MediaPolicy, billing_policy
from omniserve.media.resolve import Resolver
from omniserve.protocol.request import parse_chat_request
from omniserve.protocol.tokens import QwenTokenizer, get_tokenizer
from omniserve.protocol.validate import RequestValidator, ValidatedRequest
from omniserve.speech import Synthesizer, chunk_bytes_for, make_synthesizer, speak_along

log = logging.getLogger("omniserve")


class ChatService:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        synthesizer: Synthesizer | None = None,
        tokenizer: QwenTokenizer | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        catalog = Catalog.default(settings.flash_alias)
        self.tokenizer = tokenizer or get_tokenizer(settings.tokenizer_file)
        self.engine = engine or make_engine(settings, self.tokenizer, catalog)
        # An engine that serves its own names (open weights) says what it serves and can do.
        served = getattr(self.engine, "catalog", None)
        if callable(served):
            catalog = served()
        self.catalog = catalog.restricted_to(settings.models) if settings.models else catalog
        self.validator = RequestValidator(
            self.catalog, self.tokenizer, media_enabled=settings.media.enabled
        )
        self.media = MediaProcessor(settings.media, resolver=resolver)
        self.synthesizer = synthesizer or make_synthesizer(settings.speech)
        self.chunk_bytes = chunk_bytes_for(settings.speech.chunk_ms)
        self.ready = False
        self._parse_limiter: anyio.CapacityLimiter | None = None

    def parse_limiter(self) -> anyio.CapacityLimiter:
        """How many requests are parsed at once (made on first use, in the event loop)."""
        if self._parse_limiter is None:
            self._parse_limiter = anyio.CapacityLimiter(self.settings.parse_workers)
        return self._parse_limiter

    async def check(self) -> None:
        """Raises ``SpeechError`` when built-in speech is needed and cannot work here."""
        if not self.engine.speaks:
            await self.synthesizer.check()

    async def start(self) -> None:
        await self.engine.start()
        await self.check()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.engine.close()
        await self.synthesizer.close()
        await self.media.close()

    def models(self) -> list[ModelSpec]:
        return list(self.catalog)

    def prepare(self, body: bytes | bytearray, request_id: str) -> ValidatedRequest:
        """Parse and validate; raises ``ApiError`` with the vendor's status, code and message.

        Its work grows with the body: the API runs it on a worker thread, never on the event
        loop."""
        request = parse_chat_request(
            body,
            max_messages=self.settings.max_messages,
            max_parts=self.settings.max_content_parts,
        )
        return self.validator.validate(request, request_id)

    def _speaks(self, job: GenerationJob) -> bool:
        """Whether the engine voices this job itself (an engine may decide per model)."""
        speaks_for = getattr(self.engine, "speaks_for", None)
        if callable(speaks_for):
            return bool(speaks_for(job))
        return self.engine.speaks

    def media_policy(self, job: GenerationJob) -> MediaPolicy:
        """How this job's media are sized and counted: the vendor's billing formulas, or the
        open processors' when the engine runs open weights."""
        engine_policy = getattr(self.engine, "media_policy", None)
        if callable(engine_policy):
            policy: MediaPolicy = engine_policy(job.model)
            return policy
        return billing_policy(job.model)

    async def events(
        self,
        job: GenerationJob,
        *,
        counted: Callable[[GenerationJob], Awaitable[None]] | None = None,
        caller: str | None = None,
    ) -> AsyncIterator[EngineEvent]:
        """Media decoded, then the engine's events, with built-in speech when audio is asked of
        a silent engine. Raises ``ApiError`` before the first event for refused media.

        ``counted`` sees the job once its media are counted, before the engine starts (the
        rate limiter reserves what the media added). ``caller`` names who asks, for the cap on
        one caller's downloads at once."""
        if any(m.media for m in job.messages):
            keep = bool(getattr(self.engine, "wants_media_bytes", False))
            job = await self.media.process(
                job, self.media_policy(job), keep_bytes=keep, caller=caller
            )
            job = self.validator.finalize(job)
            if counted is not None:
                await counted(job)
        events = self.engine.generate(job)
        if job.voice is not None and not self._speaks(job):
            events = speak_along(
                events,
                self.synthesizer,
                job.voice,
                languages=job.voice.languages,
                chunk_bytes=self.chunk_bytes,
                tokens_per_second=job.model.tokens.output_audio_tokens_per_second,
            )
        timeouts = self.settings.timeouts
        watchdog = Watchdog(timeouts.first_event_s, timeouts.idle_s)
        it = aiter(events)
        try:
            while True:
                watchdog.waiting()
                try:
                    event = await anext(it)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if watchdog.expired():
                        raise watchdog.error() from None
                    raise
                watchdog.got()
                yield event
        finally:
            watchdog.close()
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()


class Watchdog:
    """Ends a stream whose engine stays silent too long: ``first_s`` for the first event,
    ``idle_s`` for each next one, counting only time spent waiting on the engine.

    One timer per stream, armed when a wait starts and none is pending, instead of a timeout
    context per event (which costs more than the event itself); when it fires during a wait it
    cancels the stream's task, and ``expired`` turns that cancellation into the timeout."""

    __slots__ = ("_handle", "_limit", "_loop", "_since", "_task", "fired", "first_s", "idle_s")

    def __init__(self, first_s: float, idle_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self.first_s, self.idle_s = first_s, idle_s
        self._limit = first_s
        self._since: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.fired = False

    def waiting(self) -> None:
        self._since = self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(self._since + self._limit, self._check)

    def got(self) -> None:
        self._since = None
        self._limit = self.idle_s

    def _check(self) -> None:
        self._handle = None
        if self._since is None:
            return  # not waiting on the engine now; the next wait arms the timer again
        due = self._since + self._limit
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._check)
        elif self._task is not None:
            self.fired = True
            self._task.cancel()

    def expired(self) -> bool:
        """Whether the cancellation being handled is this watchdog's (then it is undone)."""
        if not self.fired or self._task is None:
            return False
        self.fired = False
        return self._task.uncancel() == 0

    def error(self) -> RequestTimedOut:
        if self._limit == self.first_s:
            return RequestTimedOut(
                f"The model did not start answering within {self.first_s:g} seconds."
            )
        return RequestTimedOut(f"The model stopped answering for {self.idle_s:g} seconds.")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
