"""``wss://…/api-ws/v1/realtime?model=…``: the realtime API's WebSocket (docs/realtime.md),
and the same sessions in OpenAI's Realtime dialect at ``/v1/realtime`` (``realtime.dialect``).

The key is checked on the upgrade: a caller without a valid one gets the API's 401 (or 403,
404) as an HTTP answer and no socket. A server without keys answers only the names it serves
(as the HTTP guard does) and refuses pages of other sites (their ``Origin``). Then the socket
carries the vendor's JSON events; binary frames, malformed or oversize events are answered with
an ``error`` event and the session goes on. A session ends when its client says
``session.finish`` or leaves, after ``realtime.max_session_s``, after ``realtime.idle_s`` of
silence from the client, or when the server drains (an ``error`` event, then a clean close), and
when the upstream a relayed session runs on goes away (``realtime.relay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from omniserve.accounts.auth import Caller
from omniserve.accounts.service import Accounts
from omniserve.api.auth import KEY_PROTOCOL, guard, subprotocols
from omniserve.api.drain import Drain, shutting_down
from omniserve.api.errors import error_response
from omniserve.api.guard import answers_to, host_name
from omniserve.catalog import REALTIME_MODELS, RealtimeModel
from omniserve.errors import AccessDenied, ApiError, HostNotAllowed, InvalidParameter, ModelNotFound
from omniserve.metrics import Metrics
from omniserve.realtime.dialect import Dialect, OpenAIDialect, VendorDialect
from omniserve.realtime.protocol import RealtimeError
from omniserve.realtime.relay import Session, make_session
from omniserve.service import ChatService

log = logging.getLogger("omniserve.realtime")
router = APIRouter()


class Connection:
    """One open session's socket, as the drain sees it."""

    session: Session

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.ending: RealtimeError | None = None
        self.wake = asyncio.Event()

    def interrupt(self, reason: ApiError) -> None:
        if self.ending is None:
            self.ending = RealtimeError(reason.message, code=reason.code, type=reason.type)
            self.wake.set()

    async def send(self, event: dict[str, Any]) -> None:
        if self.websocket.application_state == WebSocketState.CONNECTED:
            await self.websocket.send_text(json.dumps(event, ensure_ascii=False))


async def _admit(websocket: WebSocket, caller: Caller) -> RealtimeModel:
    """The model asked for, with the chat model that answers it here; raises the API error
    that refuses the upgrade."""
    accounts: Accounts = websocket.app.state.accounts
    service: ChatService = websocket.app.state.service
    if not await accounts.keys_required():
        allowed = service.settings.http.allowed_hosts
        host = websocket.headers.get("host")
        if host is not None and not answers_to(host, allowed):
            raise HostNotAllowed(host_name(host))
        origin = websocket.headers.get("origin")
        if origin and not answers_to(urlsplit(origin).netloc or origin, allowed):
            raise AccessDenied(
                "This server has no API keys: it answers pages of its own address only."
            )
    model = websocket.query_params.get("model")
    if not model:
        raise InvalidParameter("The model query parameter is required: ?model=…", param="model")
    known = REALTIME_MODELS.get(model)
    realtime = known.served_by(service.catalog) if known else None
    if realtime is None or not caller.may_use(model):
        raise ModelNotFound(model)
    return realtime


KEY = Depends(guard("key"))


@router.websocket("/api-ws/v1/realtime")
async def realtime(websocket: WebSocket, caller: Caller = KEY) -> None:
    """The vendor's dialect. Authenticated on the upgrade (the guard: 401/403 before any
    socket), then served."""
    await _serve_session(websocket, caller, VendorDialect())


@router.websocket("/v1/realtime")
@router.websocket("/compatible-mode/v1/realtime")
async def openai_realtime(websocket: WebSocket, caller: Caller = KEY) -> None:
    """OpenAI's Realtime dialect: GA, or beta with the ``OpenAI-Beta: realtime=v1`` header."""
    beta = "realtime=v1" in websocket.headers.get("openai-beta", "")
    await _serve_session(websocket, caller, OpenAIDialect(beta=beta))


async def _serve_session(websocket: WebSocket, caller: Caller, dialect: Dialect) -> None:
    service: ChatService = websocket.app.state.service
    drain: Drain = websocket.app.state.drain
    metrics: Metrics = websocket.app.state.metrics
    settings = service.settings.realtime
    try:
        if drain.draining:
            raise shutting_down()
        model = await _admit(websocket, caller)
        accounts: Accounts = websocket.app.state.accounts
        slot = accounts.open_session(caller, settings.sessions_per_key)
    except ApiError as exc:
        await websocket.send_denial_response(error_response(exc))
        return
    try:
        await _run(websocket, service, drain, metrics, caller, model, dialect)
    finally:
        slot.release()


async def _run(
    websocket: WebSocket,
    service: ChatService,
    drain: Drain,
    metrics: Metrics,
    caller: Caller,
    model: RealtimeModel,
    dialect: Dialect,
) -> None:
    """One admitted session, from the accepted upgrade to the close."""
    offered = [p for p in subprotocols(websocket) if not p.startswith(KEY_PROTOCOL)]
    # A browser that offered subprotocols needs one chosen: "realtime" when offered.
    chosen = "realtime" if "realtime" in offered else (offered[0] if offered else None)
    await websocket.accept(subprotocol=chosen)
    settings = service.settings.realtime
    address = websocket.client.host if websocket.client else ""
    connection = Connection(websocket)
    session = connection.session = make_session(
        service,
        caller,
        model,
        settings,
        connection.send,
        fetching_for=f"key:{caller.key_id}" if caller.key_id else f"address:{address}",
        dialect=dialect,
        end=connection.interrupt,  # a relayed session whose upstream went away
    )
    drain.add(connection)
    metrics.realtime_sessions.inc()
    try:
        await session.open()
        await _serve(connection, settings.max_session_s, settings.idle_s, settings.max_event_bytes)
    except WebSocketDisconnect:
        pass
    finally:
        await session.close()
        metrics.realtime_sessions.dec()
        drain.discard(connection)
        if websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(1000)


async def _serve(connection: Connection, max_s: float, idle_s: float, max_bytes: int) -> None:
    """The session's events until it ends."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + max_s
    session, websocket = connection.session, connection.websocket
    wake = asyncio.ensure_future(connection.wake.wait())
    try:
        while not session.finished:
            left = ends - loop.time()
            receiving = asyncio.ensure_future(websocket.receive())
            done, _ = await asyncio.wait(
                {receiving, wake},
                timeout=min(idle_s, max(0.0, left)),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if receiving not in done:
                receiving.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await receiving
                if connection.ending is None:
                    connection.ending = (
                        RealtimeError(
                            f"The session reached its limit of {max_s / 60:g} minutes.",
                            code="session_expired",
                        )
                        if loop.time() >= ends
                        else RealtimeError(
                            f"The client sent nothing for {idle_s:g} seconds.", code="session_idle"
                        )
                    )
                await session.close()
                await connection.send(connection.ending.event())
                return
            message = receiving.result()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await session.error(
                    RealtimeError(
                        "Binary frames are not part of this API: send JSON text events.",
                        code="invalid_event",
                    )
                )
            elif len(text) > max_bytes:
                await session.error(
                    RealtimeError(
                        f"The event is {len(text)} bytes; at most {max_bytes} are allowed. "
                        "Send audio in smaller appends.",
                        code="event_too_large",
                    )
                )
            else:
                await session.receive(text)
    finally:
        wake.cancel()
