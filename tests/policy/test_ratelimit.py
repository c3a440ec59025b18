"""Per-tenant token buckets in a real Redis, shared by every replica, with exact counts."""

from __future__ import annotations

from redis.asyncio import Redis

from runner.policy.model import RateLimit
from runner.policy.ratelimit import RateLimiter
from tests.support import until

SLOW = 0.001
"""Events per second so low that nothing refills within a test (exact counts)."""


async def test_burst_is_admitted_then_limited(redis: Redis) -> None:
    """A full bucket admits exactly `burst` events, then refuses with the wait in ms."""
    limiter = RateLimiter(redis, "tf")
    limit = RateLimit(events_per_second=SLOW, burst=10)
    answers = [await limiter.take("acme-bank", 3, limit) for _ in range(4)]
    assert answers[:3] == [None, None, None]
    retry = answers[3]
    assert retry is not None
    # 1 token left, 2 more needed at 0.001/s = about 2,000,000 ms (minus what refilled meanwhile)
    assert 1_990_000 <= retry <= 2_000_000
    assert await limiter.take("acme-bank", 1, limit) is None  # the refusal took nothing
    assert await limiter.take("acme-bank", 1, limit) is not None


async def test_replicas_share_one_bucket(redis: Redis) -> None:
    """Two Runner replicas (two limiters, two connections) draw from the same tenant bucket."""
    other = Redis.from_url(f"redis://127.0.0.1:{redis.connection_pool.connection_kwargs['port']}")
    try:
        a, b = RateLimiter(redis, "tf"), RateLimiter(other, "tf")
        limit = RateLimit(events_per_second=SLOW, burst=100)
        admitted = 0
        for i in range(30):
            limiter = a if i % 2 else b
            if await limiter.take("acme-bank", 5, limit) is None:
                admitted += 5
        assert admitted == 100
    finally:
        await other.aclose()


async def test_tenants_have_separate_buckets(redis: Redis) -> None:
    """One tenant's traffic does not use another tenant's bucket."""
    limiter = RateLimiter(redis, "tf")
    limit = RateLimit(events_per_second=SLOW, burst=5)
    assert await limiter.take("acme-bank", 5, limit) is None
    assert await limiter.take("acme-bank", 1, limit) is not None
    assert await limiter.take("other-bank", 5, limit) is None


async def test_bucket_refills_at_the_rate(redis: Redis) -> None:
    """An emptied bucket admits again once the rate has refilled it."""
    limiter = RateLimiter(redis, "tf")
    limit = RateLimit(events_per_second=1000.0, burst=50)
    assert await limiter.take("acme-bank", 50, limit) is None
    retry = await limiter.take("acme-bank", 50, limit)
    assert retry is not None
    assert 1 <= retry <= 50

    async def admitted() -> bool:
        return await limiter.take("acme-bank", 50, limit) is None

    await until(admitted, deadline_s=5, what="the bucket to refill")


async def test_batch_larger_than_burst_passes_when_full_and_leaves_debt(redis: Redis) -> None:
    """A batch over the burst is admitted from a full bucket, and the debt delays the next."""
    limiter = RateLimiter(redis, "tf")
    limit = RateLimit(events_per_second=1.0, burst=10)
    assert await limiter.take("acme-bank", 25, limit) is None
    retry = await limiter.take("acme-bank", 1, limit)
    # the bucket is at -15; one event needs 16 tokens at 1/s: about 16,000 ms
    assert retry is not None
    assert 15_000 <= retry <= 16_000


async def test_retry_after_is_capped_at_one_day(redis: Redis) -> None:
    """A tiny rate never answers a wait longer than one day."""
    limiter = RateLimiter(redis, "tf")
    limit = RateLimit(events_per_second=0.000001, burst=1)
    assert await limiter.take("acme-bank", 1, limit) is None
    assert await limiter.take("acme-bank", 1, limit) == 24 * 3600 * 1000


async def test_lower_burst_in_a_new_policy_applies_at_once(redis: Redis) -> None:
    """When a new policy lowers the burst, the bucket is capped to it on the next take."""
    limiter = RateLimiter(redis, "tf")
    assert await limiter.take("acme-bank", 1, RateLimit(events_per_second=SLOW, burst=1000)) is None
    strict = RateLimit(events_per_second=SLOW, burst=4)
    assert await limiter.take("acme-bank", 4, strict) is None
    assert await limiter.take("acme-bank", 1, strict) is not None


async def test_idle_bucket_expires(redis: Redis) -> None:
    """The bucket key carries a TTL so idle tenants do not stay in Redis forever."""
    limiter = RateLimiter(redis, "tf")
    await limiter.take("acme-bank", 1, RateLimit(events_per_second=100.0, burst=100))
    ttl = await redis.pttl(limiter.key("acme-bank"))
    assert 0 < ttl <= 2_000 + 1_000
    await limiter.reset("acme-bank")
    assert await redis.exists(limiter.key("acme-bank")) == 0
