"""The upstream engine: relays each request to vLLM-Omni, Model Studio or any OpenAI-compatible
server, and translates the answer into omniserve's events.

A request may move to another replica until its first event has been passed on (nothing has
reached the client yet); after that, a failure ends the stream with an error event. A client
that goes away closes the upstream stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from urllib.parse import urlsplit

import httpx

from omniserve.audio_tasks import SpeechTask, Transcriber
from omniserve.catalog import REALTIME_MODELS, Catalog, RealtimeModel
from omniserve.config import UpstreamSettings, UpstreamSpec
from omniserve.engines.base import Engine
from omniserve.engines.upstream import audio
from omniserve.engines.upstream.errors import (
    UpstreamBroken,
    UpstreamBusy,
    UpstreamError,
    describe,
    refusal,
)
from omniserve.engines.upstream.pool import ReplicaSet
from omniserve.engines.upstream.request import request_body
from omniserve.engines.upstream.stream import StreamTranslator
from omniserve.errors import StartupError
from omniserve.events import EngineEvent
from omniserve.job import GenerationJob
from omniserve.tokens import QwenTokenizer

log = logging.getLogger("omniserve.upstream")


class UpstreamConfigError(StartupError):
    """Upstreams configured in a way that cannot work; the message says what to change."""


def _check_realtime(spec: UpstreamSpec) -> None:
    """An upstream's realtime relay settings that cannot work (docs/realtime.md)."""
    if spec.realtime_url is None:
        if spec.realtime_models:
            raise UpstreamConfigError(f"upstream {spec.name}: realtime_models needs realtime_url")
        return
    if spec.kind == "openai":
        raise UpstreamConfigError(
            f"upstream {spec.name}: realtime_url is for Model Studio and vLLM-Omni upstreams; "
            "realtime sessions on an OpenAI-compatible upstream go through its chat endpoint"
        )
    if urlsplit(spec.realtime_url).scheme not in ("ws", "wss"):
        raise UpstreamConfigError(
            f"upstream {spec.name}: realtime_url must start with ws:// or wss://"
        )
    for served in spec.realtime_models:
        realtime = REALTIME_MODELS.get(served)
        if realtime is None or realtime.chat not in spec.models:
            raise UpstreamConfigError(
                f"upstream {spec.name}: realtime_models names {served!r}, which is not a "
                "realtime model whose chat model this upstream serves (see docs/realtime.md)"
            )


async def _drain(lines: AsyncIterator[str]) -> None:
    """Read the rest of a finished stream (its terminator) so the connection can be reused."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(1.0):
            async for _ in lines:
                pass


class UpstreamEngine(Engine):
    name = "upstream"
    speaks = True
    hears = True
    forwards_media = True  # media are forwarded as the bytes omniserve fetched

    def __init__(
        self,
        settings: UpstreamSettings,
        catalog: Catalog,
        tokenizer: QwenTokenizer,
        *,
        chunk_bytes: int,
    ) -> None:
        if not settings.upstreams:
            raise UpstreamConfigError(
                "the upstream engine needs [[upstream.upstreams]] in the config file "
                "(see docs/deploy.md)"
            )
        self.tokenizer = tokenizer
        self.chunk_bytes = chunk_bytes
        self.routes: dict[str, tuple[UpstreamSpec, str]] = {}
        self.sets: dict[str, ReplicaSet] = {}
        for spec in settings.upstreams:
            if spec.name in self.sets:
                raise UpstreamConfigError(f"two upstreams are named {spec.name!r}")
            for served, model in spec.models.items():
                if served not in catalog:
                    raise UpstreamConfigError(
                        f"upstream {spec.name}: {served!r} is not a model of the catalog "
                        "(see `omniserve models`)"
                    )
                if served in self.routes:
                    raise UpstreamConfigError(f"{served!r} is routed to two upstreams")
                self.routes[served] = (spec, model)
            _check_realtime(spec)
            try:
                self.sets[spec.name] = ReplicaSet(spec)
            except ValueError as exc:
                raise UpstreamConfigError(str(exc)) from None
        if not self.routes:
            raise UpstreamConfigError(
                "no upstream serves a chat model: give one of them models (see docs/deploy.md)"
            )
        # The first upstream with each: /v1/audio/speech and /v1/audio/transcriptions go there.
        self.speech = next((s for s in settings.upstreams if s.speech_model), None)
        self.transcription = next(
            (s for s in settings.upstreams if s.transcription_model), None
        )
        # An OpenAI-style upstream takes images and audio, never video.
        self._catalog = Catalog(
            replace(m, video_input=False) if self.routes[m.name][0].kind == "openai" else m
            for m in catalog.restricted_to(self.routes)
        )

    def catalog(self) -> Catalog:
        return self._catalog

    def realtime_upstream(self, realtime: RealtimeModel) -> tuple[UpstreamSpec, str] | None:
        """The upstream whose own realtime endpoint serves ``realtime``'s sessions and the
        model id to ask it for; None when they go turn by turn through the chat endpoint."""
        route = self.routes.get(realtime.chat)
        if route is None or route[0].realtime_url is None:
            return None
        spec, chat_model = route
        default = realtime.name if spec.kind == "dashscope" else chat_model
        return spec, spec.realtime_models.get(realtime.name, default)

    def read_aloud(self, task: SpeechTask) -> AsyncGenerator[EngineEvent, None] | None:
        """Forwarded to the speech model of the first upstream that has one."""
        if self.speech is None:
            return None
        rate = next(iter(self._catalog)).tokens.output_audio_tokens_per_second
        return audio.read_aloud(
            self.sets[self.speech.name],
            task,
            self.tokenizer,
            chunk_bytes=self.chunk_bytes,
            audio_tokens_per_second=rate,
        )

    def transcriber(self, model: str) -> Transcriber | None:
        """The transcription model of the first upstream that has one."""
        if self.transcription is None:
            return None
        replicas = self.sets[self.transcription.name]
        return functools.partial(audio.transcribe, replicas, tokenizer=self.tokenizer)

    def speaks_for(self, job: GenerationJob) -> bool:
        """An upstream that cannot speak gets omniserve's own speech."""
        return self.routes[job.model.name][0].audio_output

    async def start(self) -> None:
        for replicas in self.sets.values():
            replicas.start()

    async def close(self) -> None:
        for replicas in self.sets.values():
            await replicas.close()

    def queue_depth(self) -> int:
        """Streams waiting for a connection to their upstream."""
        return sum(replicas.waiting for replicas in self.sets.values())

    async def generate(self, job: GenerationJob) -> AsyncGenerator[EngineEvent, None]:
        spec, _ = self.routes[job.model.name]
        async with self.sets[spec.name].slot(), contextlib.aclosing(self._generate(job)) as events:
            async for event in events:
                yield event

    async def _generate(self, job: GenerationJob) -> AsyncGenerator[EngineEvent, None]:
        spec, model = self.routes[job.model.name]
        replicas = self.sets[spec.name]
        body = json.dumps(request_body(spec, job, model)).encode()
        tried: set[int] = set()
        last: UpstreamError | None = None
        while (index := replicas.pick(tried)) is not None:
            tried.add(index)
            replica = replicas.begin(index)
            ok: bool | None = None
            sent = False
            try:
                request = replicas.client.build_request(
                    "POST",
                    f"{replica.base_url}/chat/completions",
                    content=body,
                    headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
                )
                async with asyncio.timeout(spec.first_byte_timeout_s):
                    response = await replicas.client.send(request, stream=True)
                try:
                    if response.status_code != 200:
                        raise await refusal(response, dashscope=spec.kind == "dashscope")
                    translator = StreamTranslator(spec, job, self.chunk_bytes, self.tokenizer)
                    lines = response.aiter_lines()
                    async for line in lines:
                        if not line.startswith("data:"):
                            continue
                        for event in translator.feed(line[5:].strip()):
                            sent = True
                            yield event
                        if translator.done:
                            break
                    if not translator.done and translator.finish is None:
                        raise UpstreamBroken("the stream ended before it was complete")
                    await _drain(lines)
                finally:
                    await response.aclose()
                # The upstream did its part: whatever the client does now says nothing about it.
                ok = True
                for event in translator.close():
                    sent = True
                    yield event
                return
            except httpx.PoolTimeout:
                raise UpstreamBusy() from None
            except (httpx.TransportError, TimeoutError) as exc:
                ok = False
                last = UpstreamBroken(describe(exc))
                log.warning("upstream %s replica %s: %s", spec.name, replica.base_url, last.message)
                if sent:
                    raise last from None
            except UpstreamError as exc:
                ok = not exc.retryable
                if sent or not exc.retryable:
                    raise
                last = exc
                log.warning("upstream %s replica %s: %s", spec.name, replica.base_url, exc.message)
            except (GeneratorExit, asyncio.CancelledError):
                raise  # the client left: ``ok`` stays what the upstream earned so far
            finally:
                replicas.end(replica, ok=ok)
        raise last or UpstreamBroken(f"no replica of upstream {spec.name} is available")
