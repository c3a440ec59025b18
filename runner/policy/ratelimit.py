"""Per-tenant rate limits (`rate_limit` of PROTOCOL §3): a token bucket kept in Redis.

Every replica takes from the same bucket, so the tenant's limit holds for the
whole fleet, not per Runner. One Lua script reads, refills and takes
atomically, with Redis's own clock (`TIME`), so replicas whose clocks disagree
still agree on the bucket.

- The bucket holds at most `burst` events and refills at `events_per_second`.
- A batch of `n` events is allowed when the bucket holds `min(n, burst)`; it
  then takes all `n` (the bucket may go below zero), so a batch larger than
  the burst is not refused forever, and the debt delays the next ones.
- When refused, nothing is taken, and the answer is the milliseconds until
  enough has refilled: the `retry_after_ms` of `nack rate_limited`.
- A changed policy applies at the next take (a lower burst caps the bucket).
- Idle buckets expire from Redis once they would be full again anyway.

Key: `<prefix>:{<tenant>}:ratelimit` (the tenant's hash tag, like the buffer's keys).
"""

from __future__ import annotations

from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from runner.errors import BufferUnavailable
from runner.policy.model import RateLimit

MAX_RETRY_MS: Final = 24 * 3600 * 1000
"""The longest `retry_after_ms` answered (a tiny rate could otherwise say "in a year")."""
MAX_TTL_MS: Final = 30 * 24 * 3600 * 1000

TAKE_SCRIPT: Final = f"""
local MAX_RETRY_MS = {MAX_RETRY_MS}
local MAX_TTL_MS = {MAX_TTL_MS}
local rate = tonumber(ARGV[1]) / 1000.0
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = tokens + (now - ts) * rate
  ts = now
end
if tokens > burst then
  tokens = burst
end
local need = math.min(n, burst)
local retry = 0
if tokens >= need then
  tokens = tokens - n
else
  retry = math.min(math.ceil((need - tokens) / rate), MAX_RETRY_MS)
  if retry < 1 then
    retry = 1
  end
end
redis.call('HSET', KEYS[1],
  'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', ts))
local ttl = math.min(math.ceil((burst - math.min(tokens, 0)) / rate) + 1000, MAX_TTL_MS)
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
return retry
"""


class RateLimiter:
    """`take(tenant, events, limit)`: None when allowed, else `retry_after_ms`."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(TAKE_SCRIPT)

    def key(self, tenant: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:ratelimit"

    async def take(self, tenant: str, events: int, limit: RateLimit) -> int | None:
        """Take `events` from the tenant's bucket; raises BufferUnavailable if Redis fails."""
        if events <= 0:
            return None
        try:
            retry = await self._script(
                keys=[self.key(tenant)],
                args=[repr(float(limit.events_per_second)), limit.burst, events],
            )
        except RedisError as e:
            raise BufferUnavailable(f"rate limit check failed: {type(e).__name__}") from e
        retry_ms = int(retry)
        return retry_ms if retry_ms > 0 else None

    async def reset(self, tenant: str) -> None:
        """Forget the tenant's bucket (it starts full again)."""
        try:
            await self._redis.delete(self.key(tenant))
        except RedisError as e:
            raise BufferUnavailable(f"rate limit reset failed: {type(e).__name__}") from e
