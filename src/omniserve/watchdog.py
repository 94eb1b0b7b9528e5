"""The watchdog of one stream: an engine that stays silent too long ends it with a timeout."""

from __future__ import annotations

import asyncio

from omniserve.errors import RequestTimedOut


class Watchdog:
    """Ends a stream whose engine stays silent too long: ``first_s`` for the first event,
    ``idle_s`` for each next one, counting only time spent waiting on the engine.

    One timer per stream, armed when a wait starts and none is pending, instead of a timeout
    context per event (which costs more than the event itself); when it fires during a wait it
    cancels the stream's task, and ``expired`` turns that cancellation into the timeout."""

    __slots__ = ("_handle", "_limit", "_loop", "_since", "_task", "fired", "first_s", "idle_s")

    def __init__(self, first_s: float, idle_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self.first_s, self.idle_s = first_s, idle_s
        self._limit = first_s
        self._since: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.fired = False

    def waiting(self) -> None:
        self._since = self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(self._since + self._limit, self._check)

    def got(self) -> None:
        self._since = None
        self._limit = self.idle_s

    def _check(self) -> None:
        self._handle = None
        if self._since is None:
            return  # not waiting on the engine now; the next wait arms the timer again
        due = self._since + self._limit
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._check)
        elif self._task is not None:
            self.fired = True
            self._task.cancel()

    def expired(self) -> bool:
        """Whether the cancellation being handled is this watchdog's (then it is undone)."""
        if not self.fired or self._task is None:
            return False
        self.fired = False
        return self._task.uncancel() == 0

    def error(self) -> RequestTimedOut:
        if self._limit == self.first_s:
            return RequestTimedOut(
                f"The model did not start answering within {self.first_s:g} seconds."
            )
        return RequestTimedOut(f"The model stopped answering for {self.idle_s:g} seconds.")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
