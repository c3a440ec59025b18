"""Brute-force protection: blocking after repeated failures, per source, with bounded memory."""

from __future__ import annotations

import pytest

from runner.ingest.messages import CLOSE_TOO_MANY
from runner.security.ratelimit import AuthThrottled, FailedAuthLimiter, source_key
from runner.security.settings import AuthThrottleSettings
from runner.telemetry.metrics import Metrics


class Clock:
    """Time the test moves by hand, so windows and blocks pass without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, max_sources: int = 100_000) -> FailedAuthLimiter:
    settings = AuthThrottleSettings(
        max_failures=3, window_s=60, block_s=300, max_sources=max_sources
    )
    return FailedAuthLimiter(settings, clock)


def fail(lim: FailedAuthLimiter, source: str, times: int) -> list[bool]:
    results = []
    for _ in range(times):
        lim.check(source)
        results.append(lim.failed(source))
    return results


def test_blocked_after_max_failures() -> None:
    """The Nth failure in the window blocks the source; its next attempt is refused at once."""
    clock = Clock()
    lim = limiter(clock)
    assert fail(lim, "203.0.113.9", 3) == [False, False, True]
    with pytest.raises(AuthThrottled) as caught:
        lim.check("203.0.113.9")
    assert caught.value.close_code == CLOSE_TOO_MANY
    assert caught.value.retry_after_s == pytest.approx(300)
    assert caught.value.retry_after_header == "300"
    assert lim.status() == {"blocked_sources": 1, "tracked_sources": 1, "refused": 1, "blocks": 1}


def test_block_ends_and_is_not_extended_by_retries() -> None:
    """Attempts while blocked do not prolong the block; after block_s the source may try again."""
    clock = Clock()
    lim = limiter(clock)
    fail(lim, "203.0.113.9", 3)
    for _ in range(100):
        clock.now += 2.9
        with pytest.raises(AuthThrottled):
            lim.check("203.0.113.9")
        lim.failed("203.0.113.9")  # a caller that counts anyway does not extend the block
    clock.now += 10.1
    lim.check("203.0.113.9")  # 300 s after the block began: allowed, and counting anew
    assert fail(lim, "203.0.113.9", 2) == [False, False]


def test_failures_outside_window_forgotten() -> None:
    """Failures spread wider than window_s never add up to a block."""
    clock = Clock()
    lim = limiter(clock)
    for _ in range(10):
        assert fail(lim, "198.51.100.1", 2) == [False, False]
        clock.now += 61
    assert lim.blocked() == 0


def test_other_sources_unaffected() -> None:
    """Blocking one address does not refuse another."""
    clock = Clock()
    lim = limiter(clock)
    fail(lim, "203.0.113.9", 3)
    lim.check("203.0.113.10")
    lim.check("2001:db8::1")


def test_ipv6_grouped_by_prefix() -> None:
    """Rotating addresses inside one IPv6 /64 counts as one source; IPv4-mapped is IPv4."""
    clock = Clock()
    lim = limiter(clock)
    for i in range(1, 4):
        lim.failed(f"2001:db8:1:2::{i:x}")
    with pytest.raises(AuthThrottled):
        lim.check("2001:db8:1:2:ffff::1")
    lim.check("2001:db8:1:3::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("") == "unknown"


def test_memory_bounded() -> None:
    """A spray of sources holds at most max_sources entries, oldest forgotten first."""
    clock = Clock()
    lim = limiter(clock, max_sources=100)
    for i in range(5000):
        lim.failed(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}")
    assert lim.tracked() == 100


def test_metrics() -> None:
    """Blocked sources and early refusals are exported as metrics."""
    clock = Clock()
    lim = limiter(clock)
    fail(lim, "203.0.113.9", 3)
    with pytest.raises(AuthThrottled):
        lim.check("203.0.113.9")
    metrics = Metrics()
    metrics.add_collector(lim.collect)
    text = metrics.render().decode()
    assert "traceflow_auth_blocked_sources 1.0" in text
    assert "traceflow_auth_throttled_total 1.0" in text
