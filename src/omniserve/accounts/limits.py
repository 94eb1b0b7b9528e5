"""Per-key rate limits, reserve-then-reconcile: requests per minute, tokens per minute,
concurrent streams and a token quota.

Admission reserves a request's estimated tokens (prompt + max output) atomically before any work
starts and settles the reservation with the actual usage when the stream ends, however it ends.
Concurrent requests therefore cannot overrun a limit together: each one's reservation is already
counted when the next one is checked. ``InProcessLimiter`` keeps the state in this process;
``RedisLimiter`` keeps it in Redis so that several replicas share it.

The semantics, the same for both (a ``None`` limit is not checked):

- rpm: a bucket of ``rpm`` requests refilled at rpm/60 per second; each request takes one for
  good.
- tpm: a bucket of ``tpm`` tokens refilled at tpm/60 per second. A reservation needs a level of
  ``min(tokens, tpm)`` (so an estimate above the whole bucket passes only when it is full) and
  takes all its tokens, which may leave the bucket in debt. Settling gives back what was
  reserved but not used, or takes what was used beyond it; the level never exceeds ``tpm``.
- concurrency: the key's unsettled reservations; one more is refused at the limit.
- quota: settled usage (seeded from the ledger when the key is first seen) plus outstanding
  reservations may not exceed ``quota_tokens``; refusals never clear (retry_after None).

Checks run in the order rpm, concurrency, quota, tpm and a refusal takes nothing. The limits of
each call apply (a key may be updated between calls); bucket levels are clamped to the new
capacity. ``extend`` checks tpm and quota like a reservation of the extra tokens. A reservation
whose key was forgotten meanwhile holds nothing any more: extending or settling it is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

LimitKind = Literal["rpm", "tpm", "concurrency", "quota"]


@dataclass(frozen=True)
class Limits:
    """A key's limits; ``None`` means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    quota_tokens: int | None = None


@dataclass
class Reservation:
    """What one admitted request holds until it is settled."""

    id: str  # unique per request (the request id)
    key_id: str
    limits: Limits
    tokens: int  # TPM and quota tokens currently reserved
    settled: bool = False


class Refused(Exception):
    """A limit would be exceeded; ``retry_after`` seconds until it may pass (None: never)."""

    def __init__(self, kind: LimitKind, retry_after: float | None) -> None:
        super().__init__(f"{kind} limit reached")
        self.kind: LimitKind = kind
        self.retry_after = retry_after


class Limiter(Protocol):
    async def reserve(
        self, request_id: str, key_id: str, limits: Limits, tokens: int, quota_used: int
    ) -> Reservation:
        """Counts one request and reserves ``tokens``, or raises ``Refused`` having taken
        nothing. ``quota_used`` is the key's settled usage from the ledger, used to seed the
        quota counter the first time a key is seen."""
        ...

    async def extend(self, reservation: Reservation, tokens: int) -> None:
        """Reserves ``tokens`` more for an admitted request (its media turned out larger than
        estimated), or raises ``Refused`` ("tpm" or "quota") having taken nothing."""
        ...

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Replaces the reservation by the actual usage and frees the concurrency slot.
        Idempotent: a second call does nothing."""
        ...

    async def forget(self, key_id: str) -> None:
        """Drops a key's counters (its limits or quota changed; they are re-seeded)."""
        ...

    async def ping(self) -> None:
        """Returns when the limiter answers (a shared one over the network); raises what its
        connection raises when it does not."""
        ...

    async def close(self) -> None: ...


def _retry(needed: float, level: float, rate: float) -> float | None:
    return (needed - level) / rate if rate > 0 else None


@dataclass
class _Bucket:
    level: float
    at: float

    def refill(self, capacity: int, now: float) -> float:
        """The level at ``now``, clamped to ``capacity`` (which may have changed)."""
        self.level = min(float(capacity), self.level + max(0.0, now - self.at) * capacity / 60)
        self.at = now
        return self.level


@dataclass
class _KeyState:
    rpm: _Bucket | None = None
    tpm: _Bucket | None = None
    quota_used: int | None = None
    quota_reserved: int = 0
    # reservation id -> the tokens it counts in quota_reserved
    held: dict[str, int] = field(default_factory=dict)


class InProcessLimiter:
    """Limits kept in this process; each method runs without yielding, so it is atomic."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}

    def _bucket(self, bucket: _Bucket | None, capacity: int, now: float) -> _Bucket:
        if bucket is None:
            return _Bucket(float(capacity), now)
        bucket.refill(capacity, now)
        return bucket

    def _check_tpm(self, state: _KeyState, tpm: int, tokens: int, now: float) -> _Bucket:
        bucket = self._bucket(state.tpm, tpm, now)
        needed = min(tokens, tpm)
        if tpm <= 0 or bucket.level < needed:
            raise Refused("tpm", _retry(needed, bucket.level, tpm / 60))
        return bucket

    def _check_quota(self, state: _KeyState, quota: int, used: int, tokens: int) -> None:
        if used + state.quota_reserved + tokens > quota:
            raise Refused("quota", None)

    async def reserve(
        self, request_id: str, key_id: str, limits: Limits, tokens: int, quota_used: int
    ) -> Reservation:
        now = self._clock()
        state = self._keys.get(key_id) or _KeyState()
        rpm = tpm = None
        if limits.rpm is not None:
            rpm = self._bucket(state.rpm, limits.rpm, now)
            if limits.rpm <= 0 or rpm.level < 1:
                raise Refused("rpm", _retry(1, rpm.level, limits.rpm / 60))
        if limits.concurrency is not None and len(state.held) >= limits.concurrency:
            raise Refused("concurrency", 1.0)
        used = quota_used if state.quota_used is None else state.quota_used
        if limits.quota_tokens is not None:
            self._check_quota(state, limits.quota_tokens, used, tokens)
        if limits.tpm is not None:
            tpm = self._check_tpm(state, limits.tpm, tokens, now)

        self._keys[key_id] = state
        if rpm is not None:
            rpm.level -= 1
            state.rpm = rpm
        if tpm is not None:
            tpm.level -= tokens
            state.tpm = tpm
        held = 0
        if limits.quota_tokens is not None:
            state.quota_used = used
            state.quota_reserved += tokens
            held = tokens
        state.held[request_id] = held
        return Reservation(request_id, key_id, limits, tokens)

    async def extend(self, reservation: Reservation, tokens: int) -> None:
        state = self._keys.get(reservation.key_id)
        if reservation.settled or state is None or reservation.id not in state.held:
            reservation.tokens += tokens
            return
        limits = reservation.limits
        now = self._clock()
        tpm = None
        if limits.quota_tokens is not None:
            used = state.quota_used or 0
            self._check_quota(state, limits.quota_tokens, used, tokens)
        if limits.tpm is not None:
            tpm = self._check_tpm(state, limits.tpm, tokens, now)

        if tpm is not None:
            tpm.level -= tokens
            state.tpm = tpm
        if limits.quota_tokens is not None:
            state.quota_reserved += tokens
            state.held[reservation.id] += tokens
        reservation.tokens += tokens

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        state = self._keys.get(reservation.key_id)
        if state is None or reservation.id not in state.held:
            return
        held = state.held.pop(reservation.id)
        limits = reservation.limits
        if limits.tpm is not None and state.tpm is not None:
            bucket = state.tpm
            bucket.refill(limits.tpm, self._clock())
            bucket.level = min(float(limits.tpm), bucket.level + reservation.tokens - actual_tokens)
        if limits.quota_tokens is not None and state.quota_used is not None:
            state.quota_reserved -= held
            state.quota_used += actual_tokens

    async def forget(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    async def ping(self) -> None:
        return None  # in this process: always there

    async def close(self) -> None:
        self._keys.clear()
