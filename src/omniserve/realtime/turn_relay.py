"""Realtime sessions relayed to vLLM-Omni's realtime endpoint (``/v1/realtime``).

vLLM-Omni's endpoint is turn based: a client names the model (``session.update`` with
``model``), starts a generation (``input_audio_buffer.commit`` with ``final: false``), appends
the turn's PCM16 16 kHz audio and ends it (``final: true``); the server streams the model's
answer as ``transcription.delta`` (the answer's text, not the user's words) and
``response.audio.delta`` (base64 PCM16 at ``sample_rate_hz``), then ``transcription.done`` with
the usage and ``response.audio.done``. It sends no turn detection events and has no cancel.

So omniserve keeps the session, as ``RealtimeSession`` does when it answers turns itself: its
settings, input buffer, turn detection, barge-in and the vendor's events to the client. Only the
answer changes hands: each response sends upstream the user audio committed since the last one
and plays back what comes, as ``response.audio_transcript.delta`` (``response.text.delta`` in a
text-only session) and 24 kHz ``response.audio.delta``, with the usage of ``transcription.done``.
vLLM-Omni keeps no conversation, so each turn is answered on its own; a barge-in or
``response.cancel`` stops the answer here at once and closes the upstream socket, which stops
its generation, and the next turn opens a new one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from omniserve.accounts.auth import Caller
from omniserve.catalog import RealtimeModel
from omniserve.config import RealtimeSettings, UpstreamSpec
from omniserve.engines.upstream.errors import UpstreamError
from omniserve.errors import ApiError
from omniserve.events import PCM_RATE, AudioDelta, EngineEvent, Finished, TextDelta
from omniserve.job import CompletionTokens, PromptTokens, Usage
from omniserve.realtime.dialect import Dialect
from omniserve.realtime.protocol import INPUT_RATE, RealtimeError
from omniserve.realtime.session import Answer, RealtimeSession, Send, Turn
from omniserve.realtime.upstream import (
    End,
    RelayedResponse,
    RelayTarget,
    connect_upstream,
    decode_event,
    upstream_failure,
)
from omniserve.service import ChatService
from omniserve.speech.pcm import PcmResampler

log = logging.getLogger("omniserve.realtime")

APPEND_BYTES = 2 * INPUT_RATE  # one second of the turn's audio per upstream append
# A response's status -> its ledger row's.
_BOOKED = {"completed": "ok", "cancelled": "disconnected"}


class TurnRelay(RealtimeSession):
    """A session whose answers come from vLLM-Omni's realtime endpoint (module docstring)."""

    def __init__(
        self,
        service: ChatService,
        caller: Caller,
        model: RealtimeModel,
        settings: RealtimeSettings,
        send: Send,
        *,
        target: RelayTarget,
        end: End,
        fetching_for: str | None = None,
        dialect: Dialect | None = None,
    ) -> None:
        super().__init__(
            service, caller, model, settings, send, fetching_for=fetching_for, dialect=dialect
        )
        self.target = target
        self._end = end
        self.upstream: ClientConnection | None = None
        self._sent: set[str] = set()  # user items whose audio went upstream
        self._closing: set[asyncio.Task[None]] = set()
        self._gone: UpstreamError | None = None  # the upstream went away: the session ends

    @property
    def _spec(self) -> UpstreamSpec:
        return self.target.spec

    # -- the session -------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.upstream = await self._connect()
        except UpstreamError as exc:
            self._lost(exc)
            return
        await super().open()

    async def receive(self, text: str) -> None:
        if self._gone is None:
            await super().receive(text)

    async def close(self) -> None:
        await super().close()
        self._discard()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _lost(self, error: UpstreamError) -> None:
        if self._gone is None:
            self._gone = error
            self._end(error)

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[None]]]:
        handlers = super()._handlers()
        handlers["input_image_buffer.append"] = self._hears_audio_only
        handlers["conversation.item.create"] = self._create_audio_item
        return handlers

    async def _hears_audio_only(self, event: dict[str, Any]) -> None:
        raise RealtimeError(
            f"The upstream {self._spec.name!r} answers spoken turns only: images are not relayed.",
            code="invalid_event",
            param="type",
        )

    async def _create_audio_item(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        content = item.get("content") if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or item.get("role") != "user"
            or not isinstance(content, list)
            or not all(isinstance(p, dict) and p.get("type") == "input_audio" for p in content)
        ):
            raise RealtimeError(
                f"The upstream {self._spec.name!r} answers spoken turns only and keeps no "
                "conversation: an item can only be a user's 'input_audio'.",
                param="item",
            )
        await self._create_item(event)

    def _pending(self) -> list[Turn]:
        """The user turns whose audio has not been sent upstream yet."""
        return [
            t for t in self.turns if t.role == "user" and t.audio and t.item_id not in self._sent
        ]

    async def _create_response(self, event: dict[str, Any]) -> None:
        if not self._responding() and not self._pending():
            raise RealtimeError(
                "There is nothing new to answer: commit audio first.",
                code="conversation_empty",
                param=None,
            )
        await super()._create_response(event)

    # -- the upstream socket -----------------------------------------------------------------

    async def _connect(self) -> ClientConnection:
        upstream = await connect_upstream(self.target, model_in_query=False)
        try:
            await upstream.send(json.dumps({"type": "session.update", "model": self.target.model}))
        except ConnectionClosed:
            raise upstream_failure(self._spec, "its connection closed") from None
        return upstream

    def _discard(self) -> None:
        """Closes the upstream socket in the background (a generation on it stops); the next
        turn opens another."""
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            task = asyncio.create_task(upstream.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    # -- a response --------------------------------------------------------------------------

    async def _open_answer(self, modalities: tuple[str, ...], instructions: str) -> Answer:
        """The user audio committed since the last response, answered upstream and booked as
        a request of the chat model (``instructions`` are not relayed: the endpoint takes
        none); raises the ``ApiError`` of a refused admission (that turn is dropped)."""
        audio_out = "audio" in modalities
        turns = self._pending()
        self._sent.update(t.item_id for t in turns)  # answered, or dropped when refused
        audio = b"".join(t.audio for t in turns)
        books = await RelayedResponse.admit(
            self.service,
            self.caller,
            self.spec,
            audio_seconds=len(audio) / (2 * INPUT_RATE),
            voice=self.config.voice if audio_out else None,
            max_tokens=self.config.max_tokens,
        )
        return RelayedAnswer(self._answer(audio, books.job.prompt_tokens), books, audio_out)

    def _reports(self, error: ApiError) -> bool:
        return error is not self._gone  # the session's own end says that one

    async def _responded(self) -> None:
        if self._gone is not None:
            self._end(self._gone)

    async def _answer(
        self, audio: bytes, prompt: PromptTokens
    ) -> AsyncGenerator[EngineEvent, None]:
        """One turn upstream: its audio sent, the answer's text and 24 kHz speech, then
        ``Finished`` with the usage when the upstream gave one. Raises ``UpstreamError``: the
        upstream's error event (the session goes on), or its socket gone (``_gone``: the
        session ends)."""
        spec = self._spec
        if self.upstream is None or self.upstream.state is not State.OPEN:
            self._discard()  # closed while idle (a restart, a proxy's timeout): open another
            try:
                self.upstream = await self._connect()
            except UpstreamError as exc:
                self._gone = exc
                raise
        upstream = self.upstream
        complete = False
        try:
            await upstream.send(json.dumps({"type": "input_audio_buffer.commit", "final": False}))
            for i in range(0, len(audio), APPEND_BYTES):
                chunk = base64.b64encode(audio[i : i + APPEND_BYTES]).decode("ascii")
                await upstream.send(
                    json.dumps({"type": "input_audio_buffer.append", "audio": chunk})
                )
            await upstream.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            speech = _Speech(spec.audio_rate)
            reported: Any = None
            waiting = spec.first_byte_timeout_s
            while True:
                async with asyncio.timeout(waiting):
                    event = decode_event(await upstream.recv())
                waiting = spec.idle_timeout_s
                kind = event["type"] if event is not None else None
                if event is None or kind == "session.created":
                    continue
                if kind == "transcription.delta":
                    delta = event.get("delta")
                    if isinstance(delta, str) and delta:
                        yield TextDelta(delta)
                elif kind == "response.audio.delta":
                    pcm = speech.feed(event)
                    if pcm:
                        yield AudioDelta(pcm)
                elif kind == "transcription.done":
                    reported = event.get("usage")
                elif kind == "response.audio.done":
                    break
                elif kind == "error":
                    raise self._refusal(event)
            tail = speech.flush()
            if tail:
                yield AudioDelta(tail)
            complete = True
            usage = self._usage(reported, prompt, speech.seconds)
            if usage is not None:  # without it, what was delivered is booked
                yield Finished("stop", usage)
        except TimeoutError:
            self._gone = upstream_failure(spec, "it stopped answering")
            raise self._gone from None
        except (ConnectionClosed, OSError):
            self._gone = upstream_failure(spec, "its connection closed")
            raise self._gone from None
        finally:
            if not complete:
                self._discard()  # a generation may still run on it: closing stops it

    def _refusal(self, event: dict[str, Any]) -> UpstreamError:
        """The upstream's ``error`` event (vLLM's: ``error`` a string and ``code``)."""
        error = event.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        detail = str(message or event.get("code") or "no message")[:300]
        log.warning("realtime upstream %s answered an error: %s", self._spec.name, detail)
        return UpstreamError(
            f"The realtime upstream {self._spec.name!r} answered with an error: {detail}",
            status=502,
            code="upstream_error",
            type="server_error",
        )

    def _usage(self, reported: Any, prompt: PromptTokens, seconds: float) -> Usage | None:
        """``transcription.done``'s usage (the thinker's prompt and text tokens) as omniserve's:
        the prompt's audio as estimated from the turn's length, the speech's tokens from its
        duration at the model's rate."""
        if not isinstance(reported, dict):
            return None
        total = _count(reported.get("prompt_tokens"))
        audio_in = min(total, prompt.audio)
        rate = self.spec.tokens.output_audio_tokens_per_second
        return Usage(
            prompt=PromptTokens(text=total - audio_in, audio=audio_in),
            completion=CompletionTokens(
                text=_count(reported.get("completion_tokens")),
                audio=math.ceil(seconds * rate) if seconds else 0,
            ),
        )


def _count(value: Any) -> int:
    return max(0, value) if isinstance(value, int) and not isinstance(value, bool) else 0


class _Speech:
    """The upstream's audio deltas (base64 PCM16 at ``sample_rate_hz``) as PCM16 at 24 kHz,
    seamless across deltas."""

    def __init__(self, default_rate: int) -> None:
        self.default_rate = default_rate
        self.resampler = PcmResampler(PCM_RATE)
        self.carry = b""  # an odd trailing byte
        self.samples = 0

    def feed(self, event: dict[str, Any]) -> bytes:
        data = event.get("audio", event.get("delta"))  # vLLM-Omni names it "audio"
        rate = event.get("sample_rate_hz")
        if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
            rate = self.default_rate
        try:
            raw = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
        except (binascii.Error, ValueError):
            raw = b""
        pcm = self.carry + raw
        cut = len(pcm) - len(pcm) % 2
        pcm, self.carry = pcm[:cut], pcm[cut:]
        out = self.resampler.feed(np.frombuffer(pcm, dtype="<i2"), rate)
        self.samples += len(out) // 2
        return out

    def flush(self) -> bytes:
        out = self.resampler.flush()
        self.samples += len(out) // 2
        return out

    @property
    def seconds(self) -> float:
        return self.samples / PCM_RATE


class RelayedAnswer:
    """One upstream answer: its events observed by the response's books, settled at the end."""

    def __init__(
        self, source: AsyncGenerator[EngineEvent, None], books: RelayedResponse, audio_out: bool
    ) -> None:
        self._source, self._books, self._audio_out = source, books, audio_out

    async def events(self) -> AsyncGenerator[EngineEvent, None]:
        async for event in self._source:
            if isinstance(event, AudioDelta) and not self._audio_out:
                continue  # a text-only session: the speech is not delivered
            if isinstance(event, Finished) and not self._audio_out:
                event = Finished(event.reason, event.usage.with_audio_tokens(0))
            self._books.observe(event)
            yield event

    async def close(self, status: str, code: str | None, usage: Usage | None) -> Usage | None:
        await self._source.aclose()
        booked = await self._books.settle(
            _BOOKED.get(status, "error"),
            code=None if status in _BOOKED else code,
            usage=usage,
            reason="stop" if status == "completed" else None,
        )
        return booked if status == "completed" else None
