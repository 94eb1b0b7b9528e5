"""The chat service: the one owner of a chat completion's life, from request bytes to its end.

``ChatService`` holds what serving needs for the server's lifetime (catalog, tokenizer,
validator, engine, synthesizer, media processor; the accounts and metrics it is attached to).
``open`` runs one request through its phases in order, each once:

    validate (protocol) -> admit (accounts) -> media (media) -> fit (protocol counts them,
    accounts reserves them) -> engine, with speech when it is silent -> watchdog

and returns a ``Completion``: the request's one stream of events, which the front door (the
SSE route today) plays to its client, plus ``interrupt`` and ``aclose``. The completion's
stream settles the request (limits, ledger, metrics, the log line) when it ends, however it
ends; ``aclose`` settles one that never ran. A refusal before admission is counted by the
meter and raised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from omniserve.accounts.admission import Ticket
from omniserve.accounts.auth import Caller
from omniserve.accounts.service import Accounts
from omniserve.audio_tasks import Transcriber, transcribe_by_chat, transcribe_by_recognizer
from omniserve.catalog import Catalog, ModelSpec, Voice
from omniserve.config import Settings
from omniserve.engines import make_engine
from omniserve.engines.base import Engine
from omniserve.errors import ApiError, StartupError
from omniserve.events import AudioDelta, EngineEvent, Finished
from omniserve.job import CompletionTokens, GenerationJob, PromptTokens, Usage
from omniserve.media.pipeline import MediaProcessor
from omniserve.media.policy import MediaPolicy, policy_for
from omniserve.media.resolve import Resolver
from omniserve.meter import RequestMeter
from omniserve.metrics import Metrics
from omniserve.protocol.request import parse_chat_request
from omniserve.protocol.validate import RequestValidator, ValidatedRequest
from omniserve.scenarios import InjectedError, RuleBook, script_for
from omniserve.speech import (
    Synthesizer,
    chunk_bytes_for,
    make_synthesizer,
    speak_along,
    voice_settings,
)
from omniserve.tokens import QwenTokenizer, get_tokenizer
from omniserve.watchdog import Watchdog

if TYPE_CHECKING:
    from omniserve.speech.recognizer import Recognizer

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
        catalog = self.engine.catalog() or catalog
        self.catalog = catalog.restricted_to(settings.models) if settings.models else catalog
        self.validator = RequestValidator(
            self.catalog, self.tokenizer, media_enabled=settings.media.enabled
        )
        self.media = MediaProcessor(settings.media, resolver=resolver)
        self.synthesizer = synthesizer or make_synthesizer(settings.speech)
        self.chunk_bytes = chunk_bytes_for(settings.speech.chunk_ms)
        self._speech_checked = False
        self.ready = False
        self._parse_limiter: anyio.CapacityLimiter | None = None
        self.accounts: Accounts | None = None
        self.metrics: Metrics | None = None
        # The offline speech recognizer (``[recognizer] enabled``), loaded by ``start``.
        self.recognizer: Recognizer | None = None
        # The emulator as a test double: its rules, and the scenario and fault headers.
        self.scripted = self.engine.name == "emulator"
        rules = settings.emulator.rules
        if rules is not None and not self.scripted:
            raise StartupError(
                f"emulator.rules scripts the emulator's replies; the {self.engine.name} engine "
                "answers for itself: leave the rules out, or serve with --engine emulator"
            )
        self.rules = RuleBook(rules.expanduser()) if rules else None

    def attach(self, accounts: Accounts, metrics: Metrics | None) -> None:
        """The server's accounts (keys, limits, ledger) and metrics, which every request is
        admitted by and counted in; the media processor and the engine's queue report to the
        metrics too."""
        self.accounts, self.metrics = accounts, metrics
        if metrics is not None:
            self.media.observe = metrics.observe_media
            metrics.watch_engine(self.engine.queue_depth)
            # A neural voice reports which engine read each sentence.
            if callable(sentences := getattr(self.synthesizer, "sentences", None)):
                metrics.watch_speech(sentences)

    def parse_limiter(self) -> anyio.CapacityLimiter:
        """How many requests are parsed at once (made on first use, in the event loop)."""
        if self._parse_limiter is None:
            self._parse_limiter = anyio.CapacityLimiter(self.settings.parse_workers)
        return self._parse_limiter

    async def check(self) -> None:
        """Raises ``SpeechError`` when built-in speech is needed and cannot work here."""
        if not self.engine.speaks:
            await self.synthesizer.check()
            self._speech_checked = True

    async def built_in_speech(self) -> Synthesizer:
        """The built-in synthesizer, checked (once) when it is first asked for: an engine with
        a voice of its own leaves it unchecked at start. Raises ``SpeechError``."""
        if not self._speech_checked:
            await self.synthesizer.check()
            self._speech_checked = True
        return self.synthesizer

    async def start(self) -> None:
        """Starts the engine and checks speech; once started, a second call does nothing."""
        if self.ready:
            return
        await self.check()  # before the weights load: a missing voice fails at once
        recognizer = self.settings.recognizer
        if recognizer.enabled and self.recognizer is None:
            from omniserve.speech.recognizer import Recognizer

            cache = self.settings.accounts.data_dir.expanduser() / "models"
            self.recognizer = await anyio.to_thread.run_sync(Recognizer.load, recognizer, cache)
            self.engine.use_recognizer(self.recognizer)
        await self.engine.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.engine.close()
        await self.synthesizer.close()
        await self.media.close()

    def models(self) -> list[ModelSpec]:
        return list(self.catalog)

    # -- the audio endpoints ----------------------------------------------------------------

    def transcriber_for(self, model: str) -> Transcriber | None:
        """Who writes down a recording for ``POST /v1/audio/transcriptions`` naming ``model``:
        the engine's own speech-to-text model (an upstream's); else a served model that hears,
        when ``model`` names one; else the offline recognizer; else the first served model that
        hears. None: nobody here can."""
        own = self.engine.transcriber(model)
        if own is not None:
            return own
        hearing = self.models() if self.engine.hears else []
        named = next((m for m in hearing if m.name == model), None)
        if named is None and self.recognizer is not None:
            return functools.partial(
                transcribe_by_recognizer, self.recognizer, tokenizer=self.tokenizer
            )
        chosen = named or (hearing[0] if hearing else None)
        if chosen is None:
            return None
        return functools.partial(
            transcribe_by_chat, self.engine, chosen, tokenizer=self.tokenizer
        )

    def limits_model(self, name: str) -> ModelSpec:
        """The served model whose rate limits an audio endpoint's request counts against: the
        one it names, else the first."""
        return self.catalog.get(name) if name in self.catalog else self.models()[0]

    async def book(
        self, caller: Caller, job: GenerationJob, *, input_audio_seconds: float = 0.0
    ) -> Booking:
        """An audio endpoint's request, admitted against its key's limits and opened in the
        ledger as a chat request is (raises the 403/404/429 that refuses it)."""
        assert self.accounts is not None, "ChatService.attach() was not called"
        meter = RequestMeter(self.metrics, self.tokenizer)
        try:
            ticket = await self.accounts.admit(caller, job)
        except ApiError as exc:
            meter.refused(json.dumps({"model": job.model_name}).encode(), exc)
            raise
        meter.admitted(job, caller.key_id, started=ticket.started)
        ticket.input_audio_seconds = input_audio_seconds
        return Booking(ticket, meter)

    def speech(self) -> dict[str, Any]:
        """Who speaks the answers (``GET /models``' ``speech``, the playground's voice line)."""
        if self.engine.speaks:
            return {
                "engine": self.engine.name,
                "description": "the model's own voice"
                if self.engine.name == "transformers"
                else "the upstream server's voice",
                "neural_languages": [],
            }
        backend = self.settings.speech.backend
        if backend == "kokoro":
            from omniserve.speech.phonemes import KOKORO_LANGUAGES

            return {
                "engine": "kokoro",
                "description": "Kokoro-82M, a neural voice; espeak-ng in other languages and "
                "for sentences it would deliver late",
                "neural_languages": sorted(set(KOKORO_LANGUAGES.values())),
            }
        if backend == "tone":
            return {
                "engine": "tone",
                "description": "a tone instead of speech",
                "neural_languages": [],
            }
        return {"engine": "espeak", "description": "espeak-ng", "neural_languages": []}

    def neural_voices(self, voice: Voice) -> dict[str, str]:
        """The neural voice reading ``voice`` in each language it speaks with one (empty
        without a neural voice, or before its model is loaded)."""
        if self.engine.speaks or self.settings.speech.backend != "kokoro":
            return {}
        from omniserve.speech.kokoro import KokoroSynthesizer
        from omniserve.speech.phonemes import KOKORO_LANGUAGES

        synth = self.synthesizer
        if not isinstance(synth, KokoroSynthesizer) or synth.model is None:
            return {}
        found = {}
        for language in voice.languages:
            settings = voice_settings(voice, language)
            if (code := KOKORO_LANGUAGES.get(settings.language)) is not None:
                found[str(language)] = synth.model.voice_for(settings, code)
        return found

    def prepare(
        self,
        body: bytes | bytearray,
        request_id: str,
        *,
        conversation: bool = False,
        scenario: str | None = None,
        fault: str | None = None,
        audio_history: Callable[[list[str]], dict[str, str]] | None = None,
        encoded_audio: bool = False,
    ) -> ValidatedRequest:
        """Parse and validate; raises ``ApiError`` with the vendor's status, code and message.
        On the emulator, the job gets the script of its rule, ``scenario`` and ``fault`` (the
        ``X-Omniserve-Scenario`` and ``X-Omniserve-Fault`` headers).

        Its work grows with the body: the API runs it on a worker thread, never on the event
        loop."""
        request = parse_chat_request(
            body,
            max_messages=self.settings.max_messages,
            max_parts=self.settings.max_content_parts,
        )
        validated = self.validator.validate(
            request,
            request_id,
            conversation=conversation,
            audio_history=audio_history,
            encoded_audio=encoded_audio,
        )
        if not self.scripted:
            return validated
        rules = self.rules.current() if self.rules is not None else None
        script = script_for(rules, validated.job, scenario, fault)
        if script is None:
            return validated
        return dataclasses.replace(validated, job=dataclasses.replace(validated.job, script=script))

    def media_policy(self, job: GenerationJob) -> MediaPolicy:
        """How this job's media are sized and counted: the vendor's billing formulas, or the
        open processors' when the engine runs open weights."""
        return policy_for(job.model, self.engine.media_accounting(job.model))

    def voiced(
        self, job: GenerationJob, events: AsyncGenerator[EngineEvent, None]
    ) -> AsyncGenerator[EngineEvent, None]:
        """The engine's events, with built-in speech when audio is asked of a silent engine
        (and a script's speech and usage, when it has them)."""
        reply = job.script.reply if job.script else None
        if reply is not None and reply.speech is False:
            events = _without_audio(events)
        else:
            events = self._voiced(job, events)
        if reply is not None and reply.usage:
            return _with_usage(events, reply.usage)
        return events

    def _voiced(
        self, job: GenerationJob, events: AsyncGenerator[EngineEvent, None]
    ) -> AsyncGenerator[EngineEvent, None]:
        if job.voice is None or self.engine.speaks_for(job):
            return events
        return speak_along(
            events,
            self.synthesizer,
            job.voice,
            languages=job.voice.languages,
            chunk_bytes=self.chunk_bytes,
            tokens_per_second=job.model.tokens.output_audio_tokens_per_second,
        )

    def client_left(self, body: bytes | bytearray) -> None:
        """The client left while sending its body: counted, nothing to answer."""
        RequestMeter(self.metrics, self.tokenizer).left(body)

    def refused(self, body: bytes | bytearray, exc: ApiError) -> None:
        """A request refused before it was opened (by the front door): counted."""
        RequestMeter(self.metrics, self.tokenizer).refused(body, exc)

    async def open(
        self,
        caller: Caller,
        body: bytes | bytearray,
        request_id: str,
        *,
        fetching_for: str | None = None,
        conversation: bool = False,
        scenario: str | None = None,
        fault: str | None = None,
        encoded_audio: bool = False,
    ) -> Completion:
        """Validates and admits one request; raises the ``ApiError`` that refuses it, or
        returns its ``Completion``. ``fetching_for`` names whose downloads its media URLs count
        against (the cap on one caller's downloads at once); ``conversation`` marks a realtime
        session's conversation (each user turn may carry its own audio); ``scenario`` and
        ``fault``: the test-double headers (``prepare``)."""
        assert self.accounts is not None, "ChatService.attach() was not called"
        meter = RequestMeter(self.metrics, self.tokenizer)
        try:
            # Parsing, validation and token counting grow with the body: off the event loop.
            validated = await anyio.to_thread.run_sync(
                functools.partial(
                    self.prepare,
                    body,
                    request_id,
                    conversation=conversation,
                    scenario=scenario,
                    fault=fault,
                    audio_history=functools.partial(
                        self.accounts.recall_audio, key_id=caller.key_id
                    ),
                    encoded_audio=encoded_audio,
                ),
                limiter=self.parse_limiter(),
            )
            ticket = await self.accounts.admit(caller, validated.job)
        except ApiError as exc:
            meter.refused(body, exc)
            raise
        meter.admitted(validated.job, caller.key_id, started=ticket.started)
        return Completion(self, validated, ticket, meter, fetching_for)


class Booking:
    """An audio endpoint's admitted request until it is settled: limits, ledger, metrics and the
    log line, as for a chat completion."""

    def __init__(self, ticket: Ticket, meter: RequestMeter) -> None:
        self.ticket, self.meter = ticket, meter

    def observe(self, event: EngineEvent) -> None:
        self.meter.observe(event)

    async def close(
        self,
        status: str,
        code: str | None = None,
        usage: Usage | None = None,
        reason: str | None = None,
    ) -> None:
        """Settles the request (only the first call counts)."""
        with anyio.CancelScope(shield=True):
            await self.meter.settle(self.ticket, status, code, usage or Usage(), reason)


class Completion:
    """One admitted chat completion: its events, once, and what ends it.

    ``events()`` runs the rest of the request's phases as it is read (media, fit, engine,
    speech, watchdog) and yields the engine's events; when it ends, however it ends (finished,
    failed, closed by a client that left, interrupted by a shutdown), the request is settled:
    the limiter and the ledger with the usage (from ``Finished``, or counted from what was
    delivered), the metrics and the log line. Each layer closes only the stream it wraps; the
    front door closes this one with ``aclose``.
    """

    def __init__(
        self,
        service: ChatService,
        validated: ValidatedRequest,
        ticket: Ticket,
        meter: RequestMeter,
        fetching_for: str | None,
    ) -> None:
        self.service = service
        self.job = validated.job
        self.include_usage = validated.include_usage
        self.ticket = ticket
        self.meter = meter
        self.fetching_for = fetching_for
        self.interrupted_by: str | None = None  # the error code when the server ended it
        self._started = self._ended = False
        self._events = self._run()

    @property
    def request_id(self) -> str:
        return self.job.request_id

    def events(self) -> AsyncGenerator[EngineEvent, None]:
        """The request's events (one stream: read it once)."""
        return self._events

    def interrupt(self, reason: ApiError) -> None:
        """The server is ending this request (shutdown, or an injected fault): it is settled
        with ``reason``'s code, not as disconnected."""
        self.interrupted_by = reason.code

    def injected(self, kind: str) -> None:
        """A fault of the script was injected into this request: counted and logged."""
        self.meter.injected = kind
        if self.service.metrics is not None:
            self.service.metrics.injected_faults.labels(kind).inc()

    async def aclose(self) -> None:
        """Ends the request: its stream stops (the engine's with it) and, if it never ran, it
        is settled as disconnected."""
        with anyio.CancelScope(shield=True):
            await self._events.aclose()
            if not self._started:
                await self._settle("disconnected", None, None, None)

    async def _run(self) -> AsyncGenerator[EngineEvent, None]:
        self._started = True
        service, meter, ticket = self.service, self.meter, self.ticket
        status, usage, reason = "error", None, None
        code: str | None = "InternalError"
        events: AsyncGenerator[EngineEvent, None] | None = None
        watchdog: Watchdog | None = None
        try:
            job = self.job = await self._with_media(self.job)
            events = service.voiced(job, service.engine.generate(job))
            timeouts = service.settings.timeouts
            watchdog = Watchdog(timeouts.first_event_s, timeouts.idle_s)
            while True:
                watchdog.waiting()
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if watchdog.expired():
                        raise watchdog.error() from None
                    raise
                watchdog.got()
                meter.observe(event)
                if isinstance(event, Finished):
                    status, code, usage, reason = "ok", None, event.usage, event.reason
                elif ticket.progress_due():
                    ticket.progress(
                        meter.delivered(job), meter.audio_seconds, meter.ttft, meter.ttfa
                    )
                yield event
        except ApiError as exc:
            status, code = "error", exc.code
            if isinstance(exc, InjectedError):
                self.injected("error")
            raise
        except (GeneratorExit, asyncio.CancelledError):
            if status != "ok":
                if self.interrupted_by is not None:  # ended by the server (shutting down)
                    status, code = "error", self.interrupted_by
                else:
                    status, code = "disconnected", None
            raise
        finally:
            with anyio.CancelScope(shield=True):
                if watchdog is not None:
                    watchdog.close()
                if events is not None:
                    # The engine's stream ends here, not whenever it is garbage-collected.
                    try:
                        await events.aclose()
                    except Exception:
                        log.exception("closing the engine's stream of %s failed", self.request_id)
                if usage is None and meter.produced:
                    usage = meter.delivered(self.job, final=True)
                await self._settle(status, code, usage, reason)

    async def _with_media(self, job: GenerationJob) -> GenerationJob:
        """The job with its media fetched, decoded and counted, within the input limit, and
        the reservation grown by what they added."""
        if not any(m.media for m in job.messages):
            return job
        service = self.service
        job = await service.media.process(
            job,
            service.media_policy(job),
            keep_bytes=service.engine.forwards_media,
            caller=self.fetching_for,
        )
        job = service.validator.count_media(job)
        await self.ticket.fit(job)
        return job

    async def _settle(
        self, status: str, code: str | None, usage: Usage | None, reason: str | None
    ) -> None:
        if self._ended:
            return
        self._ended = True
        meter, accounts = self.meter, self.service.accounts
        if self.job.audio_output and meter.audio_bytes and accounts is not None:
            # The answer's audio id stands for its text in later history.
            accounts.remember_audio(f"audio_{self.request_id}", meter.key_id, "".join(meter.text))
        await meter.settle(self.ticket, status, code, usage or Usage(), reason)


async def _without_audio(
    events: AsyncGenerator[EngineEvent, None],
) -> AsyncGenerator[EngineEvent, None]:
    """``events`` with no audio: a script's ``speech = false``."""
    try:
        async for event in events:
            if not isinstance(event, AudioDelta):
                yield event
    finally:
        await events.aclose()


async def _with_usage(
    events: AsyncGenerator[EngineEvent, None], counts: dict[str, int]
) -> AsyncGenerator[EngineEvent, None]:
    """``events`` with the usage's counts replaced by a script's."""
    try:
        async for event in events:
            if isinstance(event, Finished):
                event = Finished(event.reason, _override(event.usage, counts))
            yield event
    finally:
        await events.aclose()


def _override(usage: Usage, counts: dict[str, int]) -> Usage:
    kinds = {**usage.by_kind(), **counts}
    return Usage(
        prompt=PromptTokens(
            text=kinds["prompt_text"],
            image=kinds["prompt_image"],
            audio=kinds["prompt_audio"],
            video=kinds["prompt_video"],
        ),
        completion=CompletionTokens(
            text=kinds["completion_text"],
            audio=kinds["completion_audio"],
            reasoning=kinds["completion_reasoning"],
        ),
    )
