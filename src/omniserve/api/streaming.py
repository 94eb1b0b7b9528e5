"""An SSE response that answers early errors as HTTP errors and stops work on disconnect.

The one place that decides what a failure becomes: the body's first chunk is awaited before
the status line is sent, so a failure before any output is a proper 4xx/5xx; after that it
becomes the stream's error event and ``[DONE]`` (details of an unexpected error are logged,
not sent). While streaming, a watcher reads ``http.disconnect`` and cancels the body at once,
so a client that goes away stops its engine within one event-loop turn rather than at the
next write. The response owns the body: it closes it when it ends, however it ends, and then
closes the request behind it (``owner``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Protocol

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from omniserve.api.drain import Drain
from omniserve.api.errors import render_error
from omniserve.api.faults import DropConnection
from omniserve.api.sse import error_event
from omniserve.errors import ApiError, InternalError

log = logging.getLogger("omniserve.stream")

SSE_HEADERS = {
    "content-type": "text/event-stream;charset=UTF-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


class StreamOwner(Protocol):
    """The request behind a stream (a ``Completion``)."""

    def interrupt(self, reason: ApiError) -> None: ...

    async def aclose(self) -> None: ...


class EventStreamResponse(Response):
    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        *,
        request_id: str,
        owner: StreamOwner | None = None,
        drain: Drain | None = None,
        send_timeout_s: float = 60.0,
        error_frame: Callable[[ApiError], bytes] = error_event,
    ) -> None:
        self.stream = body
        self.status_code = 200
        self.background = None
        self.request_id = request_id
        headers = {**SSE_HEADERS, "x-request-id": request_id}
        self.raw_headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        self.owner = owner
        self.disconnected = False
        self.drain = drain
        self.error_frame = error_frame
        self._interrupted: ApiError | None = None
        self._body_scope: anyio.CancelScope | None = None
        # A client that stops reading: its socket buffer fills and ``send`` waits; after
        # send_timeout_s of one wait the stream is dropped as if the client had left.
        self.send_timeout_s = send_timeout_s
        self._sending_since: float | None = None
        self._stall: asyncio.TimerHandle | None = None
        self._scope: anyio.CancelScope | None = None
        self.stalled = False
        self.dropped = False  # an injected fault cuts the connection (api/faults.py)

    def interrupt(self, reason: ApiError) -> None:
        """Ends the stream now (the server is shutting down): the body stops, and the client
        gets the error event of ``reason`` instead of the rest."""
        if self._interrupted is None:
            self._interrupted = reason
            if self.owner is not None:
                self.owner.interrupt(reason)
            if self._body_scope is not None:
                self._body_scope.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.drain is not None:
            self.drain.add(self)
        try:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            self.disconnected = True
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch)
                self._scope = tg.cancel_scope
                try:
                    await self._stream(send)
                finally:
                    tg.cancel_scope.cancel()
                    if self._stall is not None:
                        self._stall.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()
                if self.owner is not None:
                    await self.owner.aclose()
            if self.drain is not None:
                self.drain.discard(self)
        if self.dropped:
            raise DropConnection()  # uvicorn closes the connection without ending the body

    async def _stream(self, send: Send) -> None:
        try:
            first = await anext(self.stream)
        except StopAsyncIteration:
            first = b""
        except DropConnection:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            self.dropped = True
            return
        except Exception as exc:
            await self._send_error(send, self._as_api_error(exc, started=False))
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if first:
            await self._send(send, first)
        failed: ApiError | None = None
        with anyio.CancelScope() as self._body_scope:
            if self._interrupted is None:
                try:
                    async for chunk in self.stream:
                        await self._send(send, chunk)
                except DropConnection:
                    self.dropped = True
                    return
                except Exception as exc:
                    failed = self._as_api_error(exc, started=True)
        if self._interrupted is not None:
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()  # the engine stops and the request is settled first
            failed = self._interrupted
        if failed is not None:
            await send(
                {"type": "http.response.body", "body": self.error_frame(failed), "more_body": True}
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _as_api_error(self, exc: Exception, *, started: bool) -> ApiError:
        """What the client is told of a failure: an ``ApiError`` as it is (a refusal before
        the first chunk is the client's business, not the log's); anything else is a fault of
        ours, logged here and answered without its details."""
        if isinstance(exc, ApiError):
            if started:
                log.warning("stream %s failed: %r", self.request_id, exc)
            return exc
        when = "after its first chunk" if started else "before its first chunk"
        log.error("stream %s failed %s", self.request_id, when, exc_info=exc)
        return InternalError()

    async def _send(self, send: Send, chunk: bytes) -> None:
        loop = asyncio.get_running_loop()
        self._sending_since = loop.time()
        if self._stall is None:
            self._stall = loop.call_at(self._sending_since + self.send_timeout_s, self._check)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        self._sending_since = None

    def _check(self) -> None:
        self._stall = None
        since = self._sending_since
        if since is None:
            return  # not waiting on the client now; the next send arms the timer again
        loop = asyncio.get_running_loop()
        if loop.time() < since + self.send_timeout_s:
            self._stall = loop.call_at(since + self.send_timeout_s, self._check)
            return
        log.warning("client read nothing for %.0f s: ending its stream", self.send_timeout_s)
        self.stalled = self.disconnected = True
        if self._scope is not None:
            self._scope.cancel()

    async def _send_error(self, send: Send, exc: ApiError) -> None:
        status, headers, payload = render_error(exc, self.request_id)
        merged = {"content-type": "application/json", **headers}
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in merged.items()],
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})
