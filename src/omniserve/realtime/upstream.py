"""An upstream's own realtime endpoint: which upstream serves a realtime model there, the socket
to it, what its failures tell the client, and the books of each response it produces.

A relayed session is still omniserve's: its key was checked on the upgrade, and each response
the upstream produces is admitted against the key's limits, observed by the request meter and
settled on the ledger (one row per response), as a chat request is. The upstream is reached with
its own key, and a client only ever learns the upstream's configured name, never its key or URL.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from omniserve.accounts.admission import Ticket
from omniserve.accounts.auth import Caller
from omniserve.catalog import ModelSpec, RealtimeModel
from omniserve.config import UpstreamSpec
from omniserve.engines.base import Engine
from omniserve.engines.upstream.engine import UpstreamEngine
from omniserve.engines.upstream.errors import UpstreamError
from omniserve.errors import ApiError
from omniserve.events import EngineEvent
from omniserve.job import CompletionTokens, GenerationJob, PromptTokens, Usage, new_request_id
from omniserve.meter import RequestMeter
from omniserve.service import ChatService

log = logging.getLogger("omniserve.realtime")

# How a relay ends its session when the upstream goes away: the route sends the error event and
# closes the socket (``Connection.interrupt``).
End = Callable[[ApiError], None]

# Largest upstream event: a long answer's audio may come in one delta.
MAX_UPSTREAM_EVENT_BYTES = 16 * 1024 * 1024
CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class RelayTarget:
    """Where a realtime model's sessions are relayed: the upstream and its model id there."""

    spec: UpstreamSpec
    model: str

    @property
    def url(self) -> str:
        assert self.spec.realtime_url is not None
        return self.spec.realtime_url


def relay_target(engine: Engine, model: RealtimeModel) -> RelayTarget | None:
    """The upstream realtime endpoint for ``model``'s sessions, or None: they are served here."""
    if not isinstance(engine, UpstreamEngine):
        return None
    found = engine.realtime_upstream(model)
    return None if found is None else RelayTarget(*found)


def upstream_failure(spec: UpstreamSpec, detail: str) -> UpstreamError:
    """The client's error for an upstream that cannot be reached or went away."""
    log.warning("realtime upstream %s: %s", spec.name, detail)
    return UpstreamError(
        f"The realtime upstream {spec.name!r} is unavailable: {detail}.",
        status=503,
        code="upstream_error",
        type="server_error",
    )


def _with_model(url: str, model: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "model"] + [("model", model)]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def connect_upstream(target: RelayTarget, *, model_in_query: bool) -> ClientConnection:
    """The upstream's realtime socket, opened with the upstream's own key; raises the
    ``UpstreamError`` that names the upstream when it cannot be opened."""
    spec = target.spec
    try:
        key = spec.api_key()
    except ValueError:
        raise upstream_failure(spec, "its API key is not configured") from None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = _with_model(target.url, target.model) if model_in_query else target.url
    try:
        return await connect(
            url,
            additional_headers=headers,
            user_agent_header="omniserve",
            open_timeout=spec.connect_timeout_s,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=MAX_UPSTREAM_EVENT_BYTES,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise upstream_failure(spec, f"it refused the connection ({status})") from None
    except (OSError, TimeoutError, WebSocketException):
        raise upstream_failure(spec, "cannot connect") from None


def decode_event(message: str | bytes) -> dict[str, Any] | None:
    """An upstream's JSON text event, or None for anything else (skipped)."""
    if isinstance(message, bytes):
        return None
    try:
        event = json.loads(message)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None


def vendor_usage(usage: Any) -> Usage | None:
    """The vendor's realtime usage (``input_tokens_details`` / ``output_tokens_details``)."""
    if not isinstance(usage, dict):
        return None

    def count(details: Any, key: str) -> int:
        value = details.get(key) if isinstance(details, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    i, o = usage.get("input_tokens_details"), usage.get("output_tokens_details")
    text_in, audio_in, image_in = (
        count(i, k) for k in ("text_tokens", "audio_tokens", "image_tokens")
    )
    if not (text_in or audio_in or image_in):
        text_in = count(usage, "input_tokens")
    text_out, audio_out = count(o, "text_tokens"), count(o, "audio_tokens")
    if not (text_out or audio_out):
        text_out = count(usage, "output_tokens")
    return Usage(
        prompt=PromptTokens(text=text_in, image=image_in, audio=audio_in),
        completion=CompletionTokens(text=text_out, audio=audio_out),
    )


class RelayedResponse:
    """One response an upstream produces, on the books as a chat request of the realtime
    model's chat model: admitted (the key's limits reserved, its ledger row opened), its
    deliveries observed by the request meter, settled once."""

    def __init__(self, job: GenerationJob, ticket: Ticket, meter: RequestMeter) -> None:
        self.job, self.ticket, self.meter = job, ticket, meter

    @classmethod
    async def admit(
        cls,
        service: ChatService,
        caller: Caller,
        spec: ModelSpec,
        *,
        audio_seconds: float,
        voice: str | None,
        max_tokens: int | None,
    ) -> RelayedResponse:
        """Admits a response whose input is ``audio_seconds`` of user speech (its prompt
        estimated at the model's audio token rate); raises the ``ApiError`` that refuses it."""
        assert service.accounts is not None, "ChatService.attach() was not called"
        rate = spec.tokens.audio_tokens_per_second
        job = GenerationJob(
            request_id=new_request_id(),
            model_name=spec.name,
            model=spec,
            messages=(),
            prompt_tokens=PromptTokens(audio=math.ceil(audio_seconds * rate)),
            voice=spec.voice(voice) if voice is not None else None,
            max_tokens=max_tokens,
        )
        meter = RequestMeter(service.metrics, service.tokenizer)
        try:
            ticket = await service.accounts.admit(caller, job)
        except ApiError as exc:
            meter.refused(json.dumps({"model": spec.name}).encode(), exc)
            raise
        ticket.input_audio_seconds = audio_seconds
        meter.admitted(job, caller.key_id, started=ticket.started)
        return cls(job, ticket, meter)

    def observe(self, event: EngineEvent) -> None:
        """An event on its way to the client (first-token times, what was delivered)."""
        self.meter.observe(event)
        if self.ticket.progress_due():
            m = self.meter
            self.ticket.progress(m.delivered(self.job), m.audio_seconds, m.ttft, m.ttfa)

    async def settle(
        self,
        status: str,
        *,
        code: str | None = None,
        usage: Usage | None = None,
        reason: str | None = None,
    ) -> Usage:
        """Settles the response (``ok``, ``error`` or ``disconnected``) with the upstream's
        usage, or with what was delivered when it gave none; returns the usage booked."""
        meter = self.meter
        if usage is None:
            usage = meter.delivered(self.job, final=True) if meter.produced else Usage()
        await meter.settle(self.ticket, status, code, usage, reason)
        return usage
