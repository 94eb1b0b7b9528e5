"""PrioritySemaphore: earliest deadline first, arrival order among equals."""

from __future__ import annotations

import asyncio

import pytest

from omniserve.speech.priority import PrioritySemaphore


async def _order(limit: int, lanes: list[tuple[str, float]]) -> list[str]:
    sem = PrioritySemaphore(limit)
    for _ in range(limit):
        await sem.acquire()
    order: list[str] = []

    async def waiter(name: str, deadline: float) -> None:
        async with sem.slot(deadline):
            order.append(name)
            await asyncio.sleep(0)

    tasks = []
    for name, deadline in lanes:
        tasks.append(asyncio.create_task(waiter(name, deadline)))
        await asyncio.sleep(0)  # queue them in this order
    for _ in range(limit):
        sem.release()
    await asyncio.gather(*tasks)
    return order


def test_earliest_deadline_first_then_arrival_order() -> None:
    lanes = [
        ("a", 5.0),
        ("b", 5.0),
        ("U1", 1.0),
        ("c", 5.0),
        ("U2", 1.0),
        ("late", 9.0),
        ("mid", 3.0),
    ]
    assert asyncio.run(_order(1, lanes)) == ["U1", "U2", "mid", "a", "b", "c", "late"]


def test_limit_is_respected() -> None:
    async def main() -> int:
        sem = PrioritySemaphore(3)
        running = peak = 0

        async def job(deadline: float) -> None:
            nonlocal running, peak
            async with sem.slot(deadline):
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.001)
                running -= 1

        await asyncio.gather(*(job(float(i % 4)) for i in range(20)))
        return peak

    assert asyncio.run(main()) == 3


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    async def main() -> list[str]:
        sem = PrioritySemaphore(1)
        await sem.acquire()
        order: list[str] = []

        async def waiter(name: str) -> None:
            async with sem.slot():
                order.append(name)

        gone = asyncio.create_task(waiter("gone"))
        kept = asyncio.create_task(waiter("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        sem.release()
        await kept
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert sem.waiting == 0
        await asyncio.wait_for(sem.acquire(), 1)  # the slot came back
        return order

    assert asyncio.run(main()) == ["kept"]


def test_a_waiter_cancelled_as_its_slot_arrives_passes_it_on() -> None:
    async def main() -> None:
        sem = PrioritySemaphore(1)
        await sem.acquire()
        first = asyncio.create_task(sem.acquire())
        await asyncio.sleep(0)
        sem.release()  # hands the slot to `first`...
        first.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(sem.acquire(), 1)

    asyncio.run(main())


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PrioritySemaphore(0)
