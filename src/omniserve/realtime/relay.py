"""Realtime sessions relayed to an upstream's own realtime endpoint (docs/realtime.md).

``make_session`` picks what serves a session. With the upstream engine, when the upstream that
serves the realtime model's chat model has a ``realtime_url``, the session is relayed there;
otherwise it is a ``RealtimeSession``, which answers each turn with a chat completion.

- Model Studio (``kind = "dashscope"``) speaks the vendor's events, as omniserve does:
  ``UpstreamRelay`` forwards the client's events upstream and the upstream's to the client,
  nearly untouched. omniserve keeps what is its own: the session's settings are checked here
  (a bad ``session.update`` is refused as a session served here refuses it, and never goes
  upstream), audio may not run ahead of the session's clock, the served model's name stands in
  for the upstream's, each response the upstream creates is admitted and booked (a refused one
  is cancelled upstream, and the client gets the refusal's ``error`` event instead of it), and
  the client's dialect (``Dialect``) is translated both ways.
- vLLM-Omni (``kind = "vllm-omni"``) speaks a turn-based protocol of its own: ``TurnRelay``
  (``turn_relay.py``).

An upstream that cannot be reached or goes away ends the session: any response in progress
ends ``failed``, and the route sends the ``upstream_error`` event and closes the socket.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from omniserve.accounts.auth import Caller
from omniserve.catalog import ModelSpec, RealtimeModel
from omniserve.config import RealtimeSettings
from omniserve.engines.upstream.errors import UpstreamError
from omniserve.errors import ApiError
from omniserve.events import AudioDelta, TextDelta
from omniserve.realtime.dialect import Dialect, SessionView, VendorDialect
from omniserve.realtime.protocol import (
    INPUT_RATE,
    RealtimeError,
    SessionConfig,
    apply_update,
    initial_config,
    new_id,
    parse_event,
)
from omniserve.realtime.session import RealtimeSession, Send, _base64, _usage
from omniserve.realtime.turn_relay import TurnRelay
from omniserve.realtime.upstream import (
    CLOSE_TIMEOUT_S,
    End,
    RelayedResponse,
    RelayTarget,
    connect_upstream,
    decode_event,
    relay_target,
    upstream_failure,
    vendor_usage,
)
from omniserve.service import ChatService

log = logging.getLogger("omniserve.realtime")

# How long ``session.finish`` waits for the upstream's ``session.finished``.
FINISH_TIMEOUT_S = 5.0


class Session(Protocol):
    """What the route drives: a session served here, or one relayed upstream."""

    finished: bool

    async def open(self) -> None: ...

    async def receive(self, text: str) -> None: ...

    async def error(self, error: RealtimeError) -> None: ...

    async def close(self) -> None: ...


def make_session(
    service: ChatService,
    caller: Caller,
    model: RealtimeModel,
    settings: RealtimeSettings,
    send: Send,
    *,
    fetching_for: str | None,
    dialect: Dialect,
    end: End,
) -> Session:
    """The session for ``model``: relayed to the upstream's realtime endpoint when one is
    configured for it, else served here. ``end`` ends the session from the relay's side."""
    target = relay_target(service.engine, model)
    if target is None:
        return RealtimeSession(
            service, caller, model, settings, send, fetching_for=fetching_for, dialect=dialect
        )
    if target.spec.kind == "dashscope":
        return UpstreamRelay(
            service, caller, model, settings, send, target=target, dialect=dialect, end=end
        )
    return TurnRelay(
        service,
        caller,
        model,
        settings,
        send,
        target=target,
        end=end,
        fetching_for=fetching_for,
        dialect=dialect,
    )


# The vendor's statuses of a response -> the ledger's status and finish reason.
_BOOKED = {
    "completed": ("ok", "stop"),
    "incomplete": ("ok", "length"),
    "cancelled": ("disconnected", None),
}


class UpstreamRelay:
    """A session relayed to Model Studio's realtime endpoint (module docstring)."""

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
        dialect: Dialect | None = None,
    ) -> None:
        self.service = service
        self.caller = caller
        self.model = model
        self.spec: ModelSpec = service.catalog.get(model.chat)
        self.settings = settings
        self.target = target
        self._send = send
        self._end = end
        self.config: SessionConfig = initial_config(model)
        self.conversation_id = new_id("conv")
        self.cancel_reason: str | None = None
        self.finished = False
        self.dialect: Dialect = dialect or VendorDialect()
        self.view = SessionView(
            id=new_id("sess"),
            model=model.name,
            config=lambda: self.config,
            expires_at=int(time.time() + settings.max_session_s),
            cancel_reason=lambda: self.cancel_reason,
        )
        self.dialect.bind(self.view)
        self.upstream: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.response: RelayedResponse | None = None  # the upstream's response in progress
        self.shown: dict[str, Any] = {}  # ... as its response.created showed it
        self.refused: str | None = None  # the id of a response refused admission
        # The audio clock (samples appended) and what is known of the turns' length, for
        # the flood check and each response's estimate.
        self.opened_at = time.monotonic()
        self.clock = 0
        self.unheard_s = 0.0  # appended since the last committed turn
        self.speech_ms: int | None = None  # where the upstream heard speech start
        self.turn_s: float | None = None  # the turn it heard, with its prefix padding
        self.committed_s = 0.0  # committed since the last response
        self.heard_at: float | None = None  # when the upstream heard the last turn end
        self._closing = False  # the relay is ending the upstream socket itself
        self._failed = False
        self._closed = False
        self._finished_upstream = asyncio.Event()  # its session.finished was relayed

    # -- the client's side -------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.upstream = await connect_upstream(self.target, model_in_query=True)
        except UpstreamError as exc:
            self._failed = True
            self._end(exc)
            return
        # The upstream's session.created is the first event the client gets.
        self.reader = asyncio.create_task(self._read())

    async def error(self, error: RealtimeError) -> None:
        await self._send(error.event())

    async def receive(self, text: str) -> None:
        """One client event: checked, translated, sent upstream; a bad one is answered with
        an ``error`` event here."""
        if self.upstream is None or self._failed or self._closing:
            return
        try:
            event = self.dialect.inbound(parse_event(text))
            self._check(event)
        except RealtimeError as exc:
            await self.error(exc)
            return
        if event["type"] == "session.finish":
            await self._finish(event)
            return
        if event["type"] == "response.cancel":
            self.cancel_reason = "client_cancelled"
        await self._forward(event)

    def _check(self, event: dict[str, Any]) -> None:
        """What omniserve checks itself before an event goes upstream."""
        kind = event["type"]
        if kind == "session.update":
            self.config = apply_update(self.config, event.get("session"), self.spec)
        elif kind == "input_audio_buffer.append":
            pcm = _base64(event.get("audio"), "audio")
            if len(pcm) % 2:
                raise RealtimeError(
                    "The audio is not whole PCM16 samples (an odd number of bytes).",
                    param="audio",
                )
            samples = len(pcm) // 2
            lead = (self.clock + samples) / INPUT_RATE - (time.monotonic() - self.opened_at)
            if lead > self.settings.max_audio_lead_s:
                raise RealtimeError(
                    "Audio is arriving faster than real time: at most "
                    f"{self.settings.max_audio_lead_s:g} seconds ahead of the session's clock "
                    "are accepted. Send it as it is recorded.",
                    code="input_audio_too_fast",
                    param="audio",
                )
            self.clock += samples
            self.unheard_s += samples / INPUT_RATE

    async def _forward(self, event: dict[str, Any]) -> None:
        assert self.upstream is not None
        try:
            await self.upstream.send(json.dumps(event, ensure_ascii=False))
        except ConnectionClosed:
            await self._lost("its connection closed")

    async def _finish(self, event: dict[str, Any]) -> None:
        """``session.finish``: the upstream finishes its session (its last events still reach
        the client), then this one is finished."""
        self._closing = True
        assert self.upstream is not None
        with contextlib.suppress(ConnectionClosed):
            await self.upstream.send(json.dumps(event))
            if self.reader is not None:
                said = asyncio.ensure_future(self._finished_upstream.wait())
                await asyncio.wait({self.reader, said}, timeout=FINISH_TIMEOUT_S)
                said.cancel()
        if not self._finished_upstream.is_set():
            await self._deliver({"event_id": new_id("event"), "type": "session.finished"})
        self.finished = True

    async def close(self) -> None:
        """Ends the upstream session; a response still in progress is booked as cancelled."""
        if self._closed:
            return
        self._closed = self._closing = True
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                await self.upstream.close()
        if self.reader is not None:
            # The reader ends with the socket; it finishes the event in hand first.
            try:
                await asyncio.wait_for(asyncio.shield(self.reader), CLOSE_TIMEOUT_S)
            except TimeoutError:
                self.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.reader
        await self._abandon("cancelled")

    async def _lost(self, detail: str) -> None:
        """The upstream went away: the response in progress fails, and the session ends."""
        if self._closing or self._failed:
            return
        self._failed = True
        error = upstream_failure(self.target.spec, detail)
        await self._abandon("failed", error.code)
        self._end(error)

    async def _abandon(self, status: str, code: str | None = None) -> None:
        """Books the response in progress, if any, and tells the client it ended."""
        books, self.response = self.response, None
        if books is None:
            return
        await books.settle("error" if status == "failed" else "disconnected", code=code)
        response = {**self.shown, "status": status, "usage": None}
        with contextlib.suppress(Exception):  # the client may be gone
            await self._deliver(
                {"event_id": new_id("event"), "type": "response.done", "response": response}
            )

    # -- the upstream's side -----------------------------------------------------------------

    async def _read(self) -> None:
        assert self.upstream is not None
        detail = "its connection closed"
        try:
            async for message in self.upstream:
                event = decode_event(message)
                if event is not None:
                    await self._relay(event)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("relaying realtime session %s failed", self.view.id)
            detail = "the relay failed"
        await self._lost(detail)

    async def _relay(self, event: dict[str, Any]) -> None:
        """One upstream event, on its way to the client."""
        kind = event["type"]
        if self.refused is not None:
            if kind == "response.created":
                self.refused = None  # the refused one ended without a word
            elif _of_response(event):
                if kind == "response.done":
                    self.refused = None
                return
        if kind in ("session.created", "session.updated"):
            event = self._session_event(event)
        elif kind == "session.finished":
            await self._deliver(event)
            self._finished_upstream.set()
            return
        elif kind.startswith("input_audio_buffer."):
            self._heard(event)
        elif kind == "response.created" and not await self._admit(event):
            return
        elif kind in (
            "response.audio.delta",
            "response.audio_transcript.delta",
            "response.text.delta",
        ):
            self._observe(event)
        elif kind == "response.done":
            event = await self._settle(event)
        await self._deliver(event)

    def _session_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """The upstream's session under the served model's name."""
        session = event.get("session")
        if not isinstance(session, dict):
            return event
        if event["type"] == "session.created" and isinstance(session.get("id"), str):
            self.view.id = session["id"]
        return {**event, "session": {**session, "model": self.model.name}}

    def _heard(self, event: dict[str, Any]) -> None:
        """The upstream's turn detection: how long each committed turn is, and when the user
        stopped (the turn latency's start)."""
        kind = event["type"]
        if kind == "input_audio_buffer.speech_started":
            start = event.get("audio_start_ms")
            self.speech_ms = start if isinstance(start, int) else None
            if self.response is not None:
                self.cancel_reason = "turn_detected"  # a barge-in, if the upstream stops
        elif kind == "input_audio_buffer.speech_stopped":
            self.heard_at = time.monotonic()
            end = event.get("audio_end_ms")
            t = self.config.turn_detection
            if isinstance(end, int) and self.speech_ms is not None:
                padding = t.prefix_padding_ms if t is not None else 0
                self.turn_s = max(0, end - self.speech_ms + padding) / 1000
        elif kind == "input_audio_buffer.committed":
            self.committed_s += self.turn_s if self.turn_s is not None else self.unheard_s
            self.unheard_s, self.turn_s, self.speech_ms = 0.0, None, None
        elif kind == "input_audio_buffer.cleared":
            self.unheard_s, self.turn_s, self.speech_ms = 0.0, None, None

    async def _admit(self, event: dict[str, Any]) -> bool:
        """Admits the response the upstream created, or cancels it there and tells the client
        why; whether it goes on."""
        response = event.get("response")
        response = response if isinstance(response, dict) else {}
        modalities = response.get("modalities")
        if not isinstance(modalities, list):
            modalities = list(self.config.modalities)
        seconds, self.committed_s = self.committed_s, 0.0
        try:
            self.response = await RelayedResponse.admit(
                self.service,
                self.caller,
                self.spec,
                audio_seconds=seconds,
                voice=self.config.voice if "audio" in modalities else None,
                max_tokens=self.config.max_tokens,
            )
        except ApiError as exc:
            self.refused = str(response.get("id"))
            await self._forward({"event_id": new_id("event"), "type": "response.cancel"})
            await self.error(
                RealtimeError(exc.message, code=exc.code, param=exc.param, type=exc.type)
            )
            return False
        self.cancel_reason = None
        self.shown = {
            "id": new_id("resp"),
            "object": "realtime.response",
            "conversation_id": self.conversation_id,
            "modalities": modalities,
            "voice": self.config.voice,
            "output_audio_format": self.config.output_audio_format,
            "output": [],
            **response,
        }
        event["response"] = {**self.shown, "status": "in_progress"}
        return True

    def _observe(self, event: dict[str, Any]) -> None:
        """A delta on its way to the client: the request meter sees it, and the first one
        the client hears ends the turn's latency."""
        books = self.response
        if books is None:
            return
        delta = event.get("delta")
        if not isinstance(delta, str) or not delta:
            return
        chunk: AudioDelta | TextDelta
        if event["type"] == "response.audio.delta":
            try:
                chunk = AudioDelta(base64.b64decode(delta, validate=True))
            except (binascii.Error, ValueError):
                return
        else:
            chunk = TextDelta(delta)
        books.observe(chunk)
        speaks = "audio" in self.shown.get("modalities", ())
        if self.heard_at is not None and isinstance(chunk, AudioDelta if speaks else TextDelta):
            if self.service.metrics is not None:
                self.service.metrics.turn_latency.observe(time.monotonic() - self.heard_at)
            self.heard_at = None

    async def _settle(self, event: dict[str, Any]) -> dict[str, Any]:
        """The response ended upstream: booked with its usage, shown with what was booked."""
        response = event.get("response")
        response = response if isinstance(response, dict) else {}
        books, self.response = self.response, None
        shown = {**self.shown, "output": [], **response}
        if books is not None:
            status = str(response.get("status"))
            booked, reason = _BOOKED.get(status, ("error", None))
            code = None if booked != "error" else _error_code(response)
            usage = await books.settle(
                booked, code=code, usage=vendor_usage(response.get("usage")), reason=reason
            )
            if response.get("usage") is not None:
                shown["usage"] = _usage(usage)
        shown.setdefault("usage", None)
        return {**event, "response": shown}

    async def _deliver(self, event: dict[str, Any]) -> None:
        """An event to the client, in its dialect."""
        try:
            events = self.dialect.outbound(event)
        except (KeyError, TypeError, AttributeError, ValueError):
            log.warning("an upstream %s event could not be translated; dropped", event["type"])
            return
        for out in events:
            await self._send(out)


def _of_response(event: dict[str, Any]) -> bool:
    """Whether an upstream event belongs to a response (and goes when the response does)."""
    if event["type"].startswith("response."):
        return True
    item = event.get("item")
    return (
        event["type"] == "conversation.item.created"
        and isinstance(item, dict)
        and item.get("role") == "assistant"
    )


def _error_code(response: dict[str, Any]) -> str:
    details = response.get("status_details")
    error = details.get("error") if isinstance(details, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return str(code)[:64] if code else "upstream_error"
