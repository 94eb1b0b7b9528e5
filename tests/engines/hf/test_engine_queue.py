"""The engine's request queue (one at a time, FIFO, bounded) and its error mapping."""

from __future__ import annotations

import asyncio
import logging

import pytest
import torch

from omniserve.catalog import Catalog
from omniserve.engines.base import GenerationJob, PromptTokens
from omniserve.engines.hf.engine import FifoQueue, _as_api_error
from omniserve.errors import EngineBusy, InternalError, InvalidParameter, ServiceUnavailable

FLASH = Catalog.default().get("qwen3-omni-flash")
JOB = GenerationJob(
    request_id="a68eca3b-c67e-4666-a72f-73c0b4919860",
    model_name=FLASH.name,
    model=FLASH,
    messages=(),
    prompt_tokens=PromptTokens(),
)


async def _settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- FifoQueue -------------------------------------------------------------------------------


def test_a_full_queue_refuses_with_429_and_retry_after() -> None:
    async def scenario() -> None:
        queue = FifoQueue(1)
        await queue.acquire()  # the running request
        waiter = asyncio.create_task(queue.acquire())
        await _settle()
        assert not waiter.done()
        assert queue.waiting == 1

        with pytest.raises(EngineBusy) as raised:
            await queue.acquire()
        error = raised.value
        assert error.status == 429
        assert error.code == "limit_requests"
        assert int(error.headers()["Retry-After"]) >= 1
        assert queue.waiting == 1  # the refused request took no place

        queue.release()
        await waiter  # the waiter runs next
        queue.release()
        assert queue.waiting == 0
        assert not queue.lock.locked()

    asyncio.run(scenario())


def test_a_queue_of_size_zero_runs_one_and_refuses_the_next() -> None:
    async def scenario() -> None:
        queue = FifoQueue(0)
        await queue.acquire()
        with pytest.raises(EngineBusy):
            await queue.acquire()
        queue.release()
        await queue.acquire()  # free again
        queue.release()

    asyncio.run(scenario())


def test_waiters_run_in_arrival_order() -> None:
    async def scenario() -> list[str]:
        queue = FifoQueue(8)
        order: list[str] = []

        async def request(name: str) -> None:
            await queue.acquire()
            try:
                order.append(name)
                await asyncio.sleep(0)
            finally:
                queue.release()

        await queue.acquire()  # the running request
        tasks = []
        for name in ("a", "b", "c", "d"):
            tasks.append(asyncio.create_task(request(name)))
            await _settle()  # each one waits before the next arrives
        assert queue.waiting == 4
        queue.release()
        # Arrives as the lock is handed on: it must not overtake the waiters.
        tasks.append(asyncio.create_task(request("late")))
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["a", "b", "c", "d", "late"]


def test_a_waiter_that_goes_away_frees_its_place() -> None:
    async def scenario() -> None:
        queue = FifoQueue(1)
        await queue.acquire()
        waiter = asyncio.create_task(queue.acquire())
        await _settle()
        waiter.cancel()
        await _settle()
        assert queue.waiting == 0
        second = asyncio.create_task(queue.acquire())  # not refused: the place is free
        await _settle()
        assert queue.waiting == 1
        queue.release()
        await second
        queue.release()

    asyncio.run(scenario())


# -- _as_api_error ---------------------------------------------------------------------------


def test_out_of_gpu_memory_is_a_503_that_says_so() -> None:
    error = _as_api_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"), JOB)
    assert isinstance(error, ServiceUnavailable)
    assert error.status == 503
    assert "GPU memory" in error.message
    assert "Tried to allocate" not in error.message


def test_any_other_failure_is_a_500_that_hides_the_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="omniserve.transformers"):
        error = _as_api_error(RuntimeError("shape mismatch in layer 7 at /secret/path"), JOB)
    assert isinstance(error, InternalError)
    assert error.status == 500
    assert error.code == "InternalError"
    assert "shape mismatch" not in error.message
    assert "/secret/path" not in error.message
    # The details go to the log, with the request id.
    assert JOB.request_id in caplog.text
    assert any(r.exc_info and "shape mismatch" in str(r.exc_info[1]) for r in caplog.records)


def test_api_errors_pass_through_unchanged() -> None:
    original = InvalidParameter("bad voice", param="audio.voice")
    assert _as_api_error(original, JOB) is original
