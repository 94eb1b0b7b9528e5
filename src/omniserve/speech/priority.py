"""A semaphore with a fast lane, so the first sentence of a reply never queues behind others.

Urgent waiters are served before normal ones, each lane first come first served. A released
slot passes straight to the next waiter, so a newcomer cannot barge past the queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PrioritySemaphore:
    """At most ``limit`` holders at once; ``urgent`` waiters go first."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self._free = limit
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._urgent) + sum(not f.done() for f in self._normal)

    async def acquire(self, urgent: bool = False) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        lane = self._urgent if urgent else self._normal
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived as we were cancelled: pass it on
            elif waiter in lane:  # release() drops cancelled waiters it meets
                lane.remove(waiter)
            raise

    def release(self) -> None:
        for lane in (self._urgent, self._normal):
            while lane:
                waiter = lane.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1

    @asynccontextmanager
    async def slot(self, urgent: bool = False) -> AsyncIterator[None]:
        """Holds one slot for the ``async with`` body."""
        await self.acquire(urgent)
        try:
            yield
        finally:
            self.release()
