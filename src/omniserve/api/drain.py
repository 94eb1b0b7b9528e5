"""Graceful shutdown: stop admitting, let running streams finish, then end the rest cleanly.

On SIGTERM (or SIGINT) ``serve`` calls ``Drain.begin``: from then on new chat completions and
``/readyz`` answer 503 (a load balancer takes the replica out), running streams go on until
they end or ``drain_timeout_s`` passes, and those still running then are ended with an error
event and ``[DONE]`` (their ledger rows say so) before the server exits. A second signal exits
at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType
from typing import Any, Protocol

import uvicorn

from omniserve.errors import ServiceUnavailable

log = logging.getLogger("omniserve.drain")


class Interruptible(Protocol):
    def interrupt(self, reason: ServiceUnavailable) -> None: ...


def shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The server is shutting down and accepts no new requests. Retry on another replica or "
        "in a moment."
    )


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.streams: set[Interruptible] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, stream: Interruptible) -> None:
        self.streams.add(stream)
        self._idle.clear()

    def discard(self, stream: Interruptible) -> None:
        self.streams.discard(stream)
        if not self.streams:
            self._idle.set()

    def begin(self) -> None:
        if not self.draining:
            self.draining = True
            log.warning(
                "shutting down: no new requests; waiting for %d running streams",
                len(self.streams),
            )

    async def run(self, timeout_s: float, *, grace_s: float = 5.0) -> None:
        """Waits for the running streams up to ``timeout_s``, then interrupts the rest and
        waits up to ``grace_s`` for them to send their last event."""
        self.begin()
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            left = list(self.streams)
            log.warning(
                "drain timeout (%.0f s): ending %d streams with an error event",
                timeout_s,
                len(left),
            )
            for stream in left:
                stream.interrupt(shutting_down())
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
            except TimeoutError:
                log.error("%d streams did not end after being interrupted", len(self.streams))
        log.info("drained in %.1f s", time.monotonic() - started)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before its own shutdown (see the module doc)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, timeout_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None or not self.started:
            super().handle_exit(sig, frame)  # not serving yet: stop as uvicorn does
        elif self.drain.draining or self.should_exit:
            # A second signal: no more waiting.
            self._captured_signals.append(sig)
            self.should_exit = True
            self.force_exit = True
        else:
            self._captured_signals.append(sig)  # re-raised on exit, as uvicorn does
            self._loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        self.drain.begin()
        self._task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            await self.drain.run(self.timeout_s)
        finally:
            self.should_exit = True
