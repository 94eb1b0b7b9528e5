"""``POST .../chat/completions``: read the body, let the service validate it, stream the answer."""

from __future__ import annotations

import re
import uuid

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from omniserve.accounts.admission import Accounts, Caller
from omniserve.api.auth import guard
from omniserve.api.drain import Drain, shutting_down
from omniserve.api.errors import error_response, render_error
from omniserve.api.sse import DONE, ChunkEncoder, encode_stream
from omniserve.api.streaming import EventStreamResponse
from omniserve.errors import ApiError, PayloadTooLarge
from omniserve.metrics import Metrics
from omniserve.service import ChatService

router = APIRouter()


async def read_body(request: Request, limit: int, into: bytearray | None = None) -> bytearray:
    """The body, refused as soon as it passes ``limit`` bytes (not after reading it all).
    ``into`` holds what arrived, also when the client leaves before the end.

    The buffer grows chunk by chunk (large blocks grow by remapping, see ``allocator.py``) and
    is handed on as it is: one copy of 64 MB at the end would hold the event loop for tens of
    milliseconds."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    received = into if into is not None else bytearray()
    async for chunk in request.stream():
        if len(received) + len(chunk) > limit:
            raise PayloadTooLarge(limit)
        received += chunk
    return received


KEY = Depends(guard("key"))
# What an answer to a client that left is counted as (nginx's "client closed request").
CLIENT_CLOSED = 499
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,100})"')


def model_named(body: bytes | bytearray) -> str:
    """The model a (possibly invalid) body names, for the metrics' label; "" when none."""
    found = _MODEL.search(body, 0, 4096)
    return found.group(1).decode("utf-8", "replace") if found else ""


def fetching_for(request: Request, caller: Caller) -> str:
    """Whose downloads a request's media URLs count against: its key, or on a server without
    keys its client's address."""
    if caller.key_id is not None:
        return f"key:{caller.key_id}"
    return f"address:{request.client.host if request.client else ''}"


async def chat_completions(request: Request, caller: Caller = KEY) -> Response:
    """Authenticated (the guard), read, validated, admitted against the key's limits, then
    streamed; the ticket settles the limits and writes the ledger when the stream ends."""
    service: ChatService = request.app.state.service
    accounts: Accounts = request.app.state.accounts
    drain: Drain = request.app.state.drain
    metrics: Metrics = request.app.state.metrics
    request_id = str(uuid.uuid4())
    received = bytearray()
    body = received
    try:
        if drain.draining:
            raise shutting_down()
        body = await read_body(request, service.settings.max_request_bytes, received)
        # Parsing, validation and token counting grow with the body: off the event loop.
        validated = await anyio.to_thread.run_sync(
            service.prepare, body, request_id, limiter=service.parse_limiter()
        )
        ticket = await accounts.admit(caller, validated.job)
    except ClientDisconnect:
        # The client left while sending its body (a flaky upload): nothing to answer.
        model = metrics.model(model_named(received))
        metrics.requests.labels(model, "disconnected").inc()
        return Response(status_code=CLIENT_CLOSED)
    except ApiError as exc:
        metrics.requests.labels(metrics.model(model_named(body)), "refused").inc()
        metrics.error(exc.code)
        return error_response(exc, request_id)
    job = validated.job
    stream = encode_stream(
        job,
        ticket.meter(service.events(job, counted=ticket.fit, caller=fetching_for(request, caller))),
        include_usage=validated.include_usage,
        transcript=service.settings.speech.transcript,
    )
    return EventStreamResponse(
        stream,
        render_error=lambda exc: render_error(exc, request_id),
        headers={"x-request-id": request_id},
        on_close=ticket.abandon,
        drain=drain,
        last_event=lambda exc: ChunkEncoder.error(exc) + DONE,
        on_interrupt=ticket.interrupt,
        send_timeout_s=service.settings.timeouts.client_s,
    )


for prefix in ("/compatible-mode/v1", "/v1"):
    router.add_api_route(
        f"{prefix}/chat/completions",
        chat_completions,
        methods=["POST"],
        include_in_schema=prefix == "/v1",
        response_model=None,
        summary="Create a streamed chat completion (text and speech)",
    )
