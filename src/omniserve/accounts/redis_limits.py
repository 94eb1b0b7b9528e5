"""Rate limits shared by replicas through Redis (the semantics are in ``limits``).

Each operation is one Lua script, so check-and-reserve is atomic across processes, and the
scripts read Redis ``TIME``, so replicas with skewed clocks agree. A key's state lives in three
Redis keys: a hash of bucket levels and quota counters, a sorted set of its reservations scored
by lease expiry, and a hash of the quota tokens each reservation holds. A reservation whose
lease runs out (its replica died) gives back its concurrency slot and quota tokens; all three
keys expire once the key has been idle for a while.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omniserve.accounts.limits import Limits, Refused, Reservation

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

IDLE_S = 120.0

_PRELUDE = """
local state, leases, held = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local function drop_expired()
  local gone = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  local freed = 0
  for _, rid in ipairs(gone) do
    freed = freed + (tonumber(redis.call('HGET', held, rid)) or 0)
    redis.call('HDEL', held, rid)
    redis.call('ZREM', leases, rid)
  end
  if freed ~= 0 and redis.call('HEXISTS', state, 'quota_used') == 1 then
    redis.call('HINCRBY', state, 'quota_reserved', -freed)
  end
end

local function level(name, capacity)
  local v = redis.call('HMGET', state, name, name .. '_at')
  if not v[1] then return capacity end
  local lv = tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * capacity / 60
  return math.min(capacity, lv)
end

local function put(name, lv)
  redis.call('HSET', state, name, lv, name .. '_at', now)
end

local function touch(ttl_ms)
  redis.call('PEXPIRE', state, ttl_ms)
  redis.call('PEXPIRE', leases, ttl_ms)
  redis.call('PEXPIRE', held, ttl_ms)
end

local function refused(kind, retry)
  if retry == nil then return {kind, ''} end
  return {kind, string.format('%.6f', retry)}
end

local function check_tpm(tpm, tokens)
  local lv = level('tpm', tpm)
  local needed = math.min(tokens, tpm)
  if tpm <= 0 then return nil, refused('tpm', nil) end
  if lv < needed then return nil, refused('tpm', (needed - lv) * 60 / tpm) end
  return lv, nil
end
"""

# ARGV: id, tokens, quota_used seed, rpm, tpm, concurrency, quota ('' = none), lease_s, ttl_ms
_RESERVE = (
    _PRELUDE
    + """
local id, tokens, seed = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5])
local conc, quota = tonumber(ARGV[6]), tonumber(ARGV[7])
local lease_s, ttl_ms = tonumber(ARGV[8]), tonumber(ARGV[9])
drop_expired()
local rpm_level, tpm_level, err
if rpm then
  rpm_level = level('rpm', rpm)
  if rpm <= 0 then return refused('rpm', nil) end
  if rpm_level < 1 then return refused('rpm', (1 - rpm_level) * 60 / rpm) end
end
if conc and redis.call('ZCARD', leases) >= conc then return refused('concurrency', 1) end
if quota then
  local q = redis.call('HMGET', state, 'quota_used', 'quota_reserved')
  local used = tonumber(q[1]) or seed
  if used + (tonumber(q[2]) or 0) + tokens > quota then return refused('quota', nil) end
end
if tpm then
  tpm_level, err = check_tpm(tpm, tokens)
  if err then return err end
end
if rpm then put('rpm', rpm_level - 1) end
if tpm then put('tpm', tpm_level - tokens) end
local quota_held = 0
if quota then
  redis.call('HSETNX', state, 'quota_used', seed)
  redis.call('HINCRBY', state, 'quota_reserved', tokens)
  quota_held = tokens
end
redis.call('ZADD', leases, now + lease_s, id)
redis.call('HSET', held, id, quota_held)
touch(ttl_ms)
return {'ok', ''}
"""
)

# ARGV: id, extra tokens, tpm, quota ('' = none), ttl_ms
_EXTEND = (
    _PRELUDE
    + """
local id, extra = ARGV[1], tonumber(ARGV[2])
local tpm, quota, ttl_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
drop_expired()
if not redis.call('ZSCORE', leases, id) then return {'gone', ''} end
local tpm_level, err
if quota then
  local q = redis.call('HMGET', state, 'quota_used', 'quota_reserved')
  if (tonumber(q[1]) or 0) + (tonumber(q[2]) or 0) + extra > quota then
    return refused('quota', nil)
  end
end
if tpm then
  tpm_level, err = check_tpm(tpm, extra)
  if err then return err end
end
if tpm then put('tpm', tpm_level - extra) end
if quota then
  redis.call('HINCRBY', state, 'quota_reserved', extra)
  redis.call('HINCRBY', held, id, extra)
end
touch(ttl_ms)
return {'ok', ''}
"""
)

# ARGV: id, reserved tokens, actual tokens, tpm ('' = none), quota ('1' = counted), ttl_ms
_SETTLE = (
    _PRELUDE
    + """
local id, reserved, actual = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local tpm, quota, ttl_ms = tonumber(ARGV[4]), ARGV[5] == '1', tonumber(ARGV[6])
drop_expired()
if not redis.call('ZSCORE', leases, id) then return 0 end
local quota_held = tonumber(redis.call('HGET', held, id)) or 0
redis.call('ZREM', leases, id)
redis.call('HDEL', held, id)
if tpm and redis.call('HEXISTS', state, 'tpm') == 1 then
  put('tpm', math.min(tpm, level('tpm', tpm) + reserved - actual))
end
if quota and redis.call('HEXISTS', state, 'quota_used') == 1 then
  redis.call('HINCRBY', state, 'quota_reserved', -quota_held)
  redis.call('HINCRBY', state, 'quota_used', actual)
end
touch(ttl_ms)
return 1
"""
)


def _arg(limit: int | None) -> str:
    return "" if limit is None else str(limit)


def _check(reply: Any) -> None:
    kind, retry = reply[0], reply[1]
    if kind not in ("ok", "gone"):
        raise Refused(kind, float(retry) if retry else None)


class RedisLimiter:
    """Limits kept in Redis and shared by every replica that uses the same ``prefix``.

    ``lease_s`` bounds how long a reservation of a replica that died keeps its concurrency slot
    and quota tokens.
    """

    def __init__(self, client: Redis, *, prefix: str = "omniserve", lease_s: float = 900.0) -> None:
        self._client = client
        self._prefix = prefix
        self._lease_s = lease_s
        self._ttl_ms = int((IDLE_S + lease_s) * 1000)
        self._reserve: AsyncScript = client.register_script(_RESERVE)
        self._extend: AsyncScript = client.register_script(_EXTEND)
        self._settle: AsyncScript = client.register_script(_SETTLE)

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "omniserve", *, lease_s: float = 900.0
    ) -> RedisLimiter:
        import redis.asyncio

        # A Redis that stops answering fails a request in seconds instead of hanging it.
        client = redis.asyncio.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2, socket_timeout=2
        )
        return cls(client, prefix=prefix, lease_s=lease_s)

    def _keys(self, key_id: str) -> list[str]:
        base = f"{self._prefix}:limits:{{{key_id}}}"
        return [f"{base}:state", f"{base}:leases", f"{base}:held"]

    async def reserve(
        self, request_id: str, key_id: str, limits: Limits, tokens: int, quota_used: int
    ) -> Reservation:
        args: list[str | int] = [
            request_id,
            tokens,
            quota_used,
            _arg(limits.rpm),
            _arg(limits.tpm),
            _arg(limits.concurrency),
            _arg(limits.quota_tokens),
            repr(self._lease_s),
            self._ttl_ms,
        ]
        _check(await self._reserve(keys=self._keys(key_id), args=args))
        return Reservation(request_id, key_id, limits, tokens)

    async def extend(self, reservation: Reservation, tokens: int) -> None:
        if not reservation.settled:
            limits = reservation.limits
            args: list[str | int] = [
                reservation.id,
                tokens,
                _arg(limits.tpm),
                _arg(limits.quota_tokens),
                self._ttl_ms,
            ]
            _check(await self._extend(keys=self._keys(reservation.key_id), args=args))
        reservation.tokens += tokens

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        limits = reservation.limits
        args: list[str | int] = [
            reservation.id,
            reservation.tokens,
            actual_tokens,
            _arg(limits.tpm),
            "1" if limits.quota_tokens is not None else "0",
            self._ttl_ms,
        ]
        await self._settle(keys=self._keys(reservation.key_id), args=args)

    async def forget(self, key_id: str) -> None:
        await self._client.delete(*self._keys(key_id))

    async def ping(self) -> None:
        """Raises when Redis does not answer (readiness)."""
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)
