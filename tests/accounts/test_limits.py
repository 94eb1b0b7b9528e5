"""Rate limits, in this process and in Redis: the same behaviour, and atomic admission."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio

from omniserve.accounts.limits import InProcessLimiter, Limiter, Limits, Refused, Reservation
from omniserve.accounts.redis_limits import RedisLimiter

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    """A limiter under test, and more sharing its state (a second replica, for Redis)."""

    kind: str
    redis_url: str
    prefix: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:10]}")
    clock: Clock = field(default_factory=Clock)
    made: list[Limiter] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.limiter = self.another()
        # Redis runs on its own clock: a few milliseconds pass between calls.
        self.slack = 1e-9 if self.kind == "memory" else 0.05

    def another(self, lease_s: float = 900.0) -> Limiter:
        if self.kind == "memory":
            if self.made:
                return self.made[0]  # one process, one limiter
            limiter: Limiter = InProcessLimiter(clock=self.clock)
        else:
            limiter = RedisLimiter.from_url(self.redis_url, prefix=self.prefix, lease_s=lease_s)
        self.made.append(limiter)
        return limiter

    async def wait(self, seconds: float) -> None:
        if self.kind == "memory":
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    def about(self, seconds: float) -> Any:
        return pytest.approx(seconds, abs=self.slack)


@pytest.fixture(params=["memory", "redis"])
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    s = Setup(request.param, url)
    yield s
    for limiter in {id(x): x for x in s.made}.values():
        await limiter.close()


async def refusal(call: Awaitable[object]) -> Refused:
    with pytest.raises(Refused) as info:
        await call
    return info.value


class Key:
    """One API key's calls, with fresh request ids."""

    def __init__(self, limiter: Limiter, limits: Limits, quota_used: int = 0) -> None:
        self.limiter = limiter
        self.id = f"key-{uuid.uuid4().hex[:8]}"
        self.limits = limits
        self.quota_used = quota_used

    async def reserve(self, tokens: int = 1, limits: Limits | None = None) -> Reservation:
        return await self.limiter.reserve(
            uuid.uuid4().hex, self.id, limits or self.limits, tokens, self.quota_used
        )

    async def refused(self, tokens: int = 1, limits: Limits | None = None) -> Refused:
        return await refusal(self.reserve(tokens, limits))


async def test_no_limits_admit_everything(setup: Setup) -> None:
    key = Key(setup.limiter, Limits())
    held = [await key.reserve(10**9) for _ in range(50)]
    for res in held:
        await setup.limiter.settle(res, 10**9)
    await key.reserve(10**9)


async def test_rpm_refuses_until_a_request_has_refilled(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(rpm=2))
    await key.reserve()
    await key.reserve()
    refused = await key.refused()
    assert refused.kind == "rpm"
    assert refused.retry_after == setup.about(30.0)  # 1 request at 2/60 per second
    # Settling never gives a request back.
    res = await Key(setup.limiter, Limits()).reserve()
    await setup.limiter.settle(res, 0)
    assert (await key.refused()).kind == "rpm"


async def test_waiting_the_retry_after_is_enough(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(rpm=600))  # 10 requests a second
    admitted = 0
    while True:
        try:
            await key.reserve()
        except Refused as exc:
            refused = exc
            break
        admitted += 1
    assert admitted == 600 if setup.kind == "memory" else 600 <= admitted <= 610
    assert refused.kind == "rpm"
    assert refused.retry_after is not None
    assert 0 < refused.retry_after <= 0.1
    await setup.wait(refused.retry_after)
    await key.reserve()

    key = Key(setup.limiter, Limits(tpm=60_000))  # 1000 tokens a second
    await key.reserve(60_000)
    refused = await key.refused(200)
    assert refused.kind == "tpm"
    assert refused.retry_after == setup.about(0.2)
    await setup.wait(refused.retry_after)
    await key.reserve(200)


async def test_tpm_refills_at_a_sixtieth_a_second(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(tpm=30_000))  # 500 tokens a second
    await key.reserve(30_000)
    refused = await key.refused(1000)
    assert refused.kind == "tpm"
    assert refused.retry_after == setup.about(2.0)
    await setup.wait(0.1)
    await key.reserve(40)  # about 50 refilled
    assert (await key.refused(40)).kind == "tpm"


async def test_an_estimate_above_the_bucket_needs_it_full_and_leaves_debt(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(tpm=600))  # 10 tokens a second
    await key.reserve(100)
    refused = await key.refused(5000)  # the bucket is not full
    assert (refused.kind, refused.retry_after) == ("tpm", setup.about(100 / 10))
    full = Key(setup.limiter, Limits(tpm=600))
    await full.reserve(5000)
    refused = await full.refused(1)
    assert refused.retry_after == setup.about((1 + 4400) / 10)


async def test_a_refusal_takes_nothing(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(rpm=2, concurrency=2, quota_tokens=1000, tpm=500))
    await key.reserve(100)
    assert (await key.refused(1000)).kind == "quota"
    assert (await key.refused(450)).kind == "tpm"
    await key.reserve(400)  # the last request, slot, quota and tokens: none were taken
    assert (await key.refused(1)).kind == "rpm"

    key = Key(setup.limiter, Limits(rpm=2, concurrency=1))
    first = await key.reserve()
    refused = await key.refused()
    assert (refused.kind, refused.retry_after) == ("concurrency", 1.0)
    await setup.limiter.settle(first, 1)
    await key.reserve()  # the concurrency refusal did not count a request
    assert (await key.refused()).kind == "rpm"


async def test_settle_refunds_what_was_not_used(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(tpm=1000))
    res = await key.reserve(800)
    await setup.limiter.settle(res, 300)
    await key.reserve(690)
    assert (await key.refused(50)).kind == "tpm"


async def test_settle_beyond_the_reservation_is_debt(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(tpm=1000))
    res = await key.reserve(100)
    await setup.limiter.settle(res, 600)
    assert (await key.refused(450)).kind == "tpm"
    await key.reserve(390)


async def test_a_refund_never_fills_the_bucket_above_its_capacity(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(tpm=600_000))  # 10,000 tokens a second
    res = await key.reserve(1000)
    await setup.wait(0.15)  # full again
    await setup.limiter.settle(res, 0)
    await key.reserve(600_000)
    assert (await key.refused(500)).kind == "tpm"


async def test_settle_is_idempotent(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(tpm=1000, concurrency=1, quota_tokens=2000))
    res = await key.reserve(800)
    # Settled twice here and once more elsewhere (another replica, another copy).
    twin = dataclasses.replace(res)
    await setup.limiter.settle(res, 0)
    await setup.limiter.settle(res, 0)
    assert res.settled
    await setup.another().settle(twin, 0)
    held = await key.reserve(1000)  # the one refund; the one slot freed
    assert (await key.refused(50)).kind == "concurrency"
    await setup.limiter.settle(held, 1000)
    assert (await key.refused(50)).kind == "tpm"
    await setup.limiter.settle(dataclasses.replace(held, settled=False), 1000)
    assert (await key.refused(50)).kind == "tpm"
    await key.reserve(1000, Limits(quota_tokens=2000))  # quota: 1000 used, once
    assert (await key.refused(1, Limits(quota_tokens=2000))).kind == "quota"


async def test_extend_checks_and_reserves_more(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(tpm=1000, quota_tokens=10_000))
    res = await key.reserve(500)
    await setup.limiter.extend(res, 300)
    assert res.tokens == 800
    refused = await refusal(setup.limiter.extend(res, 300))
    assert refused.kind == "tpm"
    assert refused.retry_after == setup.about(100 / (1000 / 60))
    assert res.tokens == 800
    await setup.limiter.settle(res, 800)  # nothing back
    assert (await key.refused(250)).kind == "tpm"
    await key.reserve(190)


async def test_extend_against_the_quota(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(quota_tokens=1000))
    res = await key.reserve(600)
    refused = await refusal(setup.limiter.extend(res, 500))
    assert (refused.kind, refused.retry_after) == ("quota", None)
    await setup.limiter.extend(res, 400)
    assert res.tokens == 1000
    assert (await key.refused(1)).kind == "quota"
    await setup.limiter.settle(res, 100)
    await key.reserve(900)
    assert (await key.refused(1)).kind == "quota"


async def test_concurrency_slots_are_freed_by_settle(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(concurrency=2))
    first = await key.reserve()
    await key.reserve()
    refused = await key.refused()
    assert (refused.kind, refused.retry_after) == ("concurrency", 1.0)
    await setup.limiter.settle(first, 1)
    await key.reserve()
    assert (await key.refused()).kind == "concurrency"


async def test_quota_is_seeded_once_then_counted_here(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(quota_tokens=1000), quota_used=900)
    refused = await key.refused(101)
    assert (refused.kind, refused.retry_after) == ("quota", None)
    res = await key.reserve(100)
    assert (await key.refused(1)).kind == "quota"  # reserved counts too
    await setup.limiter.settle(res, 50)
    key.quota_used = 0  # a stale ledger total: the seed is taken only the first time
    await key.reserve(50)
    assert (await key.refused(1)).kind == "quota"


async def test_the_limits_of_each_call_apply(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(tpm=1000, concurrency=3))
    await key.reserve(100)
    await key.reserve(100)
    # Lowered: the level is clamped to the new capacity, the slots already held count.
    lower = Limits(tpm=100, concurrency=2)
    assert (await key.refused(1, lower)).kind == "concurrency"
    lower = Limits(tpm=100)
    await key.reserve(100, lower)
    assert (await key.refused(10, lower)).kind == "tpm"
    # Raised again: the bucket is not refilled at once.
    assert (await key.refused(100, Limits(tpm=1000))).kind == "tpm"
    await key.reserve(1, Limits(rpm=1))
    assert (await key.refused(1, Limits(rpm=1))).kind == "rpm"


async def test_forget_drops_the_counters(setup: Setup) -> None:
    key = Key(setup.limiter, Limits(tpm=1000, concurrency=1, quota_tokens=1000))
    old = await key.reserve(1000)
    assert (await key.refused(1)).kind == "concurrency"
    await setup.limiter.forget(key.id)
    key.quota_used = 900  # re-seeded from the ledger
    res = await key.reserve(100)
    assert (await key.refused(1, Limits(quota_tokens=1000))).kind == "quota"
    # The forgotten reservation holds nothing any more.
    await setup.limiter.extend(old, 500)
    await setup.limiter.settle(old, 1000)
    await setup.limiter.settle(res, 10)
    await key.reserve(90)


async def test_forgetting_an_unknown_key_is_harmless(setup: Setup) -> None:
    await setup.limiter.forget("never-seen")


@pytest.mark.parametrize("limit", ["tpm", "concurrency", "quota"])
async def test_concurrent_reserves_admit_exactly_what_fits(setup: Setup, limit: str) -> None:
    each, fits = 100, 5
    limits = {
        "tpm": Limits(tpm=fits * each + each // 2),
        "concurrency": Limits(concurrency=fits),
        "quota": Limits(quota_tokens=fits * each + each // 2),
    }[limit]
    replicas = [setup.limiter, setup.another()]
    key_id = f"key-{uuid.uuid4().hex[:8]}"

    async def attempt(i: int) -> str:
        try:
            await replicas[i % 2].reserve(f"r{i}", key_id, limits, each, 0)
        except Refused as exc:
            return exc.kind
        return "ok"

    outcomes = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert sorted(outcomes) == sorted(["ok"] * fits + [limit] * (20 - fits))


async def test_a_dead_replicas_reservations_expire_with_their_lease(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    dead = RedisLimiter.from_url(redis_url, prefix=prefix, lease_s=0.2)
    live = RedisLimiter.from_url(redis_url, prefix=prefix, lease_s=0.2)
    try:
        limits = Limits(concurrency=1, quota_tokens=1000)
        lost = await dead.reserve("lost", "k", limits, 600, 0)
        assert (await refusal(live.reserve("r1", "k", limits, 1, 0))).kind == "concurrency"
        await asyncio.sleep(0.3)
        res = await live.reserve("r2", "k", limits, 1000, 0)  # the slot and the quota are back
        await dead.settle(lost, 600)  # too late: it no longer counts
        await live.settle(res, 400)
        await live.reserve("r3", "k", limits, 600, 0)
    finally:
        await dead.close()
        await live.close()


async def test_redis_keys_expire_when_idle_and_forget_deletes_them(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    limiter = RedisLimiter.from_url(redis_url, prefix=prefix, lease_s=30)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await limiter.reserve("r1", "k", Limits(rpm=5, tpm=500, quota_tokens=900), 10, 0)
        keys = await client.keys(f"{prefix}:*")
        assert len(keys) == 3
        for name in keys:
            assert 140_000 < await client.pttl(name) <= 150_000
        await limiter.forget("k")
        assert await client.keys(f"{prefix}:*") == []
    finally:
        await limiter.close()
        await client.aclose()
