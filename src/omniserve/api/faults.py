"""Injected faults that happen on the wire: what a script's ``fault`` does to a stream's bytes.

An error before the first byte is the engine's to raise (it becomes an HTTP error like any
other); everything after it happens here, between the SSE encoder and the response: an error
event after N events, a stall, a dropped connection, a truncated last event, a slow trickle.
A dropped connection is ``DropConnection``: the response ends without the end of its chunked
body, as a connection cut by a proxy or a network does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

from omniserve.api.sse import DONE
from omniserve.errors import ApiError
from omniserve.scenarios import Fault


class DropConnection(Exception):
    """The connection is to be cut where it stands: no end of the body, no ``[DONE]``."""


class _QuietDrops(logging.Filter):
    """uvicorn logs every exception out of the app as an error; a drop asked for is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DropConnection))


_QUIET = _QuietDrops()


def quiet_drops() -> None:
    """Keeps injected drops out of uvicorn's error log (once per process)."""
    logger = logging.getLogger("uvicorn.error")
    if _QUIET not in logger.filters:
        logger.addFilter(_QUIET)


async def with_fault(
    stream: AsyncGenerator[bytes, None],
    fault: Fault,
    *,
    injected: Callable[[str], None],
    interrupt: Callable[[ApiError], None],
) -> AsyncGenerator[bytes, None]:
    """``stream`` (SSE events, one per item) with ``fault`` applied. ``injected(kind)`` is
    told when the fault happens; ``interrupt(error)`` before an error event ends the stream,
    so the request is settled with the error's code."""
    async with contextlib.aclosing(stream):
        if fault.truncate:
            async for chunk in _truncated(stream, injected):
                yield chunk
            return
        if fault.trickle_bytes is not None:
            injected(fault.kind)
            async for chunk in stream:
                for start in range(0, len(chunk), fault.trickle_bytes):
                    if start:
                        await asyncio.sleep(fault.trickle_ms / 1000)
                    yield chunk[start : start + fault.trickle_bytes]
                await asyncio.sleep(fault.trickle_ms / 1000)
            return
        sent = 0
        async for chunk in stream:
            if fault.stall_s is not None and sent == fault.after_chunks:
                injected(fault.kind)
                await asyncio.sleep(fault.stall_s)
            elif fault.error is not None and sent == fault.after_chunks:
                injected(fault.kind)
                error = fault.api_error(mid_stream=True)
                interrupt(error)
                raise error
            elif fault.drop_after_chunks is not None and sent == fault.drop_after_chunks:
                injected(fault.kind)
                raise DropConnection()
            yield chunk
            sent += 1


async def _truncated(
    stream: AsyncGenerator[bytes, None], injected: Callable[[str], None]
) -> AsyncGenerator[bytes, None]:
    """Every event but the last data event, then the first half of that one, then a drop."""
    held: bytes | None = None
    async for chunk in stream:
        if chunk == DONE:
            break
        if held is not None:
            yield held
        held = chunk
    if held is not None:
        yield held[: len(held) // 2]
    injected("truncate")
    raise DropConnection()
