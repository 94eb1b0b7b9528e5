"""A semaphore that serves the most urgent waiter first: earliest deadline first.

Speech is real-time work: each sentence has a moment by which its audio must reach the client
or playback runs dry. Serving waiters by that deadline (the opening sentence of a reply is due
at once; later ones when the audio before them runs out) keeps every stream ahead of its
listener under load, where first-come-first-served starves long replies. Ties keep arrival
order, and a released slot passes straight to the next waiter, so nobody barges in.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PrioritySemaphore:
    """At most ``limit`` holders at once; waiters with the lowest ``deadline`` go first."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self._free = limit
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for _, _, f in self._heap)

    async def acquire(self, deadline: float = 0.0) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (deadline, next(self._order), waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived as we were cancelled: pass it on
            # A cancelled waiter left in the heap is skipped by release().
            raise

    def release(self) -> None:
        while self._heap:
            _, _, waiter = heapq.heappop(self._heap)
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    @asynccontextmanager
    async def slot(self, deadline: float = 0.0) -> AsyncIterator[None]:
        """Holds one slot for the ``async with`` body."""
        await self.acquire(deadline)
        try:
            yield
        finally:
            self.release()
