"""``POST .../chat/completions``: read the body, open the completion, stream it.

Everything between the bytes and the stream (validation, admission, media, the engine, the
settling of the request) is the chat service's (``service.py``); encoding is ``sse.py``'s and
what a failure becomes is the response's (``streaming.py``).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from omniserve.accounts.auth import Caller
from omniserve.api.auth import guard
from omniserve.api.drain import Drain, shutting_down
from omniserve.api.errors import error_response
from omniserve.api.faults import with_fault
from omniserve.api.sse import AUDIO_DELTA_HEADER, AudioShape, encode_stream
from omniserve.api.streaming import EventStreamResponse
from omniserve.cassettes import Recorder, Replayer
from omniserve.errors import ApiError, InvalidParameter, PayloadTooLarge
from omniserve.job import new_request_id
from omniserve.meter import CLIENT_CLOSED
from omniserve.scenarios import FAULT_HEADER, SCENARIO_HEADER
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


def audio_shape(request: Request, default: AudioShape) -> AudioShape:
    """The shape of the audio deltas this request gets: ``X-Omniserve-Audio-Delta``, or the
    server's ``speech.audio_delta``."""
    asked = request.headers.get(AUDIO_DELTA_HEADER)
    if asked is None:
        return default
    shape = asked.strip().lower()
    if shape == "openai":
        return "openai"
    if shape == "dashscope":
        return "dashscope"
    raise InvalidParameter(
        f"X-Omniserve-Audio-Delta should be 'dashscope' or 'openai', not {asked!r}.",
        param="X-Omniserve-Audio-Delta",
    )


def fetching_for(request: Request, caller: Caller) -> str:
    """Whose downloads a request's media URLs count against: its key, or on a server without
    keys its client's address."""
    if caller.key_id is not None:
        return f"key:{caller.key_id}"
    return f"address:{request.client.host if request.client else ''}"


async def chat_completions(request: Request, caller: Caller = KEY) -> Response:
    """Authenticated (the guard), read, then opened and streamed by the chat service; with
    cassettes (``cassettes.py``), answered from them or recorded into them."""
    arrived = time.monotonic()
    received = bytearray()
    response = await _complete(request, caller, received, arrived)
    recorder: Recorder | None = request.app.state.recorder
    if recorder is None:
        return response
    return recorder.wrap(response, request, received, arrived)


async def _complete(
    request: Request, caller: Caller, received: bytearray, arrived: float
) -> Response:
    service: ChatService = request.app.state.service
    drain: Drain = request.app.state.drain
    request_id = new_request_id()
    try:
        if drain.draining:
            raise shutting_down()
        body = await read_body(request, service.settings.max_request_bytes, received)
        audio_delta = audio_shape(request, service.settings.speech.audio_delta)
    except ClientDisconnect:
        # The client left while sending its body (a flaky upload): nothing to answer.
        service.client_left(received)
        return Response(status_code=CLIENT_CLOSED)
    except ApiError as exc:  # refused at the door: counted like the service's refusals
        service.refused(received, exc)
        return error_response(exc, request_id)
    replayer: Replayer | None = request.app.state.replayer
    if replayer is not None:
        try:
            path, limiter = request.url.path, service.parse_limiter()
            return await replayer.answer(path, body, arrived, limiter=limiter)
        except ApiError as exc:
            return error_response(exc, request_id)
    try:
        completion = await service.open(
            caller,
            body,
            request_id,
            fetching_for=fetching_for(request, caller),
            scenario=request.headers.get(SCENARIO_HEADER),
            fault=request.headers.get(FAULT_HEADER),
            encoded_audio=audio_delta == "openai",
        )
    except ApiError as exc:
        return error_response(exc, request_id)
    stream = encode_stream(
        completion.job,
        completion.events(),
        include_usage=completion.include_usage,
        transcript=service.settings.speech.transcript,
        audio_delta=audio_delta,
        audio_lifetime_s=service.settings.accounts.audio_history_s,
    )
    script = completion.job.script
    if script is not None and script.fault is not None:
        stream = with_fault(
            stream, script.fault, injected=completion.injected, interrupt=completion.interrupt
        )
    return EventStreamResponse(
        stream,
        request_id=request_id,
        owner=completion,
        drain=drain,
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
