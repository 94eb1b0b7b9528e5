"""The HTTP server omniserve runs: uvicorn with h11, bounded in connections and in how long a
connection may take to say what it wants.

uvicorn closes idle kept-alive connections, but a connection that trickles its headers a byte
at a time (slowloris), or opens and says nothing, is held for as long as the client likes. Here
every request's headers must be complete ``http.header_timeout_s`` after the connection opened
(or after the previous response); past that the connection is closed. The number of open
connections is capped (``http.max_connections``): requests beyond it are answered 503. The
body's own pace is checked by ``guard.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from omniserve.config import Settings


class HeaderDeadline(H11Protocol):
    """h11, with a deadline for each request's headers."""

    header_timeout: float = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request's headers are complete
            self._stop_deadline()

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
        "limit_concurrency": http.max_connections,
        "timeout_keep_alive": http.keep_alive_s,
        "timeout_graceful_shutdown": 10,
        "log_level": settings.log_level,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
