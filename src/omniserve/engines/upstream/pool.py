"""Replicas of one upstream: pooled connections, health checks, balancing, circuit breakers.

A request goes to the replica with the fewest requests in flight among those whose circuit is
closed (or half-open: one trial after the cool-down) and that passed their last health check.
``failure_threshold`` failures in a row open a replica's circuit for ``cooldown_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from omniserve.config import UpstreamSpec
from omniserve.engines.upstream.errors import UpstreamBusy

log = logging.getLogger("omniserve.upstream")


@dataclass
class Replica:
    base_url: str
    outstanding: int = 0
    failures: int = 0  # in a row
    open_until: float = 0.0  # circuit open until this monotonic time
    healthy: bool = True
    trial: bool = False  # a half-open trial request is in flight
    served: int = field(default=0)

    @property
    def origin(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    def available(self, now: float) -> bool:
        if not self.healthy:
            return False
        if self.open_until > now:
            return False
        return not (self.failures and self.trial)  # half-open: one trial at a time


class ReplicaSet:
    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self.replicas = [Replica(url.rstrip("/")) for url in spec.base_urls]
        limits = httpx.Limits(
            max_connections=spec.max_connections, max_keepalive_connections=spec.max_connections
        )
        timeout = httpx.Timeout(
            connect=spec.connect_timeout_s,
            read=spec.idle_timeout_s,
            write=spec.idle_timeout_s,
            pool=spec.connect_timeout_s,
        )
        headers = {"User-Agent": "omniserve"}
        key = spec.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers)
        self._health: asyncio.Task[None] | None = None
        # One slot per pooled connection, so that overload is decided here, at once, rather
        # than by every request waiting out httpx's pool timeout.
        self._slots = asyncio.Semaphore(spec.max_connections)
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A connection's worth of capacity for one stream, held while it lasts. Raises
        ``UpstreamBusy`` at once when ``max_waiting`` already wait, or after
        ``connect_timeout_s`` of waiting."""
        if self._slots.locked():
            if self.waiting >= self.spec.max_waiting:
                raise UpstreamBusy()
            self.waiting += 1
            try:
                async with asyncio.timeout(self.spec.connect_timeout_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise UpstreamBusy() from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()

    def pick(self, exclude: set[int]) -> int | None:
        """The index of the least busy available replica, not among ``exclude``."""
        now = time.monotonic()
        candidates = [
            i for i, r in enumerate(self.replicas) if i not in exclude and r.available(now)
        ]
        if not candidates:
            return None
        return min(
            candidates, key=lambda i: (self.replicas[i].outstanding, self.replicas[i].served)
        )

    def begin(self, index: int) -> Replica:
        replica = self.replicas[index]
        replica.outstanding += 1
        replica.served += 1
        if replica.failures:
            replica.trial = True
        return replica

    def end(self, replica: Replica, *, ok: bool | None) -> None:
        """``ok`` None: the outcome says nothing about the replica (the client left)."""
        replica.outstanding -= 1
        replica.trial = False
        if ok is True:
            replica.failures = 0
            replica.open_until = 0.0
        elif ok is False:
            replica.failures += 1
            if replica.failures >= self.spec.failure_threshold:
                replica.open_until = time.monotonic() + self.spec.cooldown_s
                log.warning(
                    "upstream %s replica %s: circuit open for %.0f s after %d failures",
                    self.spec.name,
                    replica.base_url,
                    self.spec.cooldown_s,
                    replica.failures,
                )

    # -- health ------------------------------------------------------------------------------

    def start(self) -> None:
        if self.spec.health_path and self._health is None:
            self._health = asyncio.create_task(self._health_loop())

    async def check(self) -> None:
        """One health check of every replica."""
        path = self.spec.health_path
        if not path:
            return

        async def one(replica: Replica) -> None:
            try:
                r = await self.client.get(
                    replica.origin + path, timeout=self.spec.connect_timeout_s
                )
                ok = r.status_code < 500
            except httpx.HTTPError:
                ok = False
            if ok != replica.healthy:
                log.warning(
                    "upstream %s replica %s is %s",
                    self.spec.name,
                    replica.base_url,
                    "healthy" if ok else "unhealthy",
                )
            replica.healthy = ok

        await asyncio.gather(*(one(r) for r in self.replicas))

    async def _health_loop(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.spec.health_interval_s)

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        await self.client.aclose()
