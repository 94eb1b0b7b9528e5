"""An SSE response that answers early errors as HTTP errors and stops work on disconnect.

The body's first chunk is awaited before the status line is sent, so a failure before any output
is a proper 4xx/5xx. While streaming, a watcher reads ``http.disconnect`` and cancels the body at
once, so a client that goes away stops its engine within one event-loop turn rather than at the
next write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from omniserve.api.drain import Drain
from omniserve.errors import ApiError, InternalError

log = logging.getLogger("omniserve.stream")

ErrorRenderer = Callable[[ApiError], tuple[int, Mapping[str, str], bytes]]

SSE_HEADERS = {
    "content-type": "text/event-stream;charset=UTF-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


class EventStreamResponse(Response):
    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        render_error: ErrorRenderer,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], None] | None = None,
        drain: Drain | None = None,
        last_event: Callable[[ApiError], bytes] | None = None,
        on_interrupt: Callable[[ApiError], None] | None = None,
        send_timeout_s: float = 60.0,
    ) -> None:
        self.stream = body
        self.status_code = 200
        self.background = None
        self.render_error = render_error
        merged = {**SSE_HEADERS, **(headers or {})}
        self.raw_headers = [(k.encode(), v.encode()) for k, v in merged.items()]
        self.on_close = on_close
        self.disconnected = False
        self.drain = drain
        self.last_event = last_event
        self.on_interrupt = on_interrupt
        self._interrupted: ApiError | None = None
        self._body_scope: anyio.CancelScope | None = None
        # A client that stops reading: its socket buffer fills and ``send`` waits; after
        # send_timeout_s of one wait the stream is dropped as if the client had left.
        self.send_timeout_s = send_timeout_s
        self._sending_since: float | None = None
        self._stall: asyncio.TimerHandle | None = None
        self._scope: anyio.CancelScope | None = None
        self.stalled = False

    def interrupt(self, reason: ApiError) -> None:
        """Ends the stream now (the server is shutting down): the body stops, and the client
        gets ``last_event(reason)`` instead of the rest."""
        if self._interrupted is None:
            self._interrupted = reason
            if self.on_interrupt is not None:
                self.on_interrupt(reason)
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
                aclose = getattr(self.stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            if self.on_close is not None:
                self.on_close()
            if self.drain is not None:
                self.drain.discard(self)

    async def _stream(self, send: Send) -> None:
        try:
            first = await anext(self.stream)
        except StopAsyncIteration:
            first = b""
        except ApiError as exc:
            await self._send_error(send, exc)
            return
        except Exception:
            log.exception("stream failed before its first chunk")
            await self._send_error(send, InternalError())
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": self.raw_headers,
            }
        )
        if first:
            await self._send(send, first)
        with anyio.CancelScope() as self._body_scope:
            if self._interrupted is None:
                async for chunk in self.stream:
                    await self._send(send, chunk)
        if self._interrupted is not None and self.last_event is not None:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self.stream, "aclose", None)
                if aclose is not None:
                    await aclose()  # the engine stops and the ledger row is completed first
            last = self.last_event(self._interrupted)
            await send({"type": "http.response.body", "body": last, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

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
        status, headers, payload = self.render_error(exc)
        merged = {"content-type": "application/json", **headers}
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in merged.items()],
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})
