"""The HTTP server omniserve runs: uvicorn with h11, bounded in connections and in how long a
connection may take to say what it wants.

uvicorn closes idle kept-alive connections, but a connection that trickles its headers a byte
at a time (slowloris), or opens and says nothing, is held for as long as the client likes. Here
every request's headers must be complete ``http.header_timeout_s`` after the connection opened
(or after the previous response); past that the connection is closed. The number of open
connections is capped (``http.max_connections``): requests beyond it are answered 503. The
body's own pace is checked by ``guard.py``.

A response sent before the client finished its body (413 for a body over the cap, 408 for one
that is too slow) is followed by a lingering close, as web servers do: the server half-closes,
reads and drops what the client still sends for up to ``LINGER_S``, and closes once the client
does. Closing at once with unread bytes makes the kernel send a reset, and a reset makes the
client's stack drop the answer it had not read yet: the client would see "connection reset"
instead of the error that says what was wrong.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from omniserve.config import Settings

LINGER_S = 2.0
"""How long a lingering close reads and drops what the client still sends."""


class Lingering(asyncio.Transport):
    """The connection's transport, except that ``close`` while the client is still sending its
    body half-closes and drains instead (see the module's docstring)."""

    def __init__(self, transport: asyncio.Transport, protocol: HeaderDeadline) -> None:
        super().__init__()
        self.inner = transport
        self.protocol = protocol
        self.lingering = False
        self._timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self.lingering or self.inner.is_closing():
            return
        if self.protocol.conn.their_state is not h11.SEND_BODY or not self.inner.can_write_eof():
            self.inner.close()
            return
        self.lingering = True
        self.inner.write_eof()  # after what is buffered: the answer goes out first
        self.inner.resume_reading()
        self._timer = self.protocol.loop.call_later(LINGER_S, self.finish)

    def finish(self) -> None:
        """Stop lingering: close for good."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.inner.close()

    def is_closing(self) -> bool:
        return self.lingering or self.inner.is_closing()

    def abort(self) -> None:
        self.finish()
        self.inner.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.lingering:
            self.inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        if not self.lingering:
            self.inner.writelines(list_of_data)

    def write_eof(self) -> None:
        self.inner.write_eof()

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def pause_reading(self) -> None:
        if not self.lingering:
            self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.inner.get_protocol()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()


class HeaderDeadline(H11Protocol):
    """h11, with a deadline for each request's headers and a lingering close."""

    header_timeout: float = 10.0
    _deadline: asyncio.TimerHandle | None = None
    _lingering: Lingering | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._lingering = Lingering(transport, self)
        super().connection_made(self._lingering)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        if self._lingering is not None:
            self._lingering.finish()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None and self._lingering.lingering:
            return  # the rest of a body already answered: dropped
        super().data_received(data)

    def eof_received(self) -> None:
        if self._lingering is not None and self._lingering.lingering:
            self._lingering.finish()  # the client is done too
        super().eof_received()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request's headers are complete
            self._stop_deadline()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The connection is a WebSocket's from here on: no more requests, no header deadline.
        self._stop_deadline()
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        # Armed first: a pipelined request that follows at once stops it again.
        self._await_headers()
        super().on_response_complete()

    def _await_headers(self) -> None:
        self._stop_deadline()
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` under ``settings`` (``overrides`` win)."""
    http = settings.http
    protocol = type("GuardedH11", (HeaderDeadline,), {"header_timeout": http.header_timeout_s})
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol,
        "ws": "wsproto",
        "limit_concurrency": http.max_connections,
        "timeout_keep_alive": http.keep_alive_s,
        "timeout_graceful_shutdown": 10,
        "log_level": settings.log_level,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
