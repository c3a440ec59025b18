"""The sender's rules: status → outcome, Retry-After, full-jitter backoff, the circuit breaker."""

from __future__ import annotations

import asyncio
import random
import re
from email.utils import formatdate

import pytest

from runner.forward.chunker import Chunk, StreamEntry, encode
from runner.forward.sender import (
    Backoff,
    BreakerState,
    CircuitBreaker,
    CloudSender,
    Outcome,
    SendResult,
    classify,
    parse_retry_after,
)
from tests.forward.conftest import fast_cloud
from tests.forward.support import FakeCloud, Reply
from tests.support import until


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.ACCEPTED), (202, Outcome.ACCEPTED), (409, Outcome.ACCEPTED),
        (401, Outcome.AUTH), (403, Outcome.AUTH),
        (408, Outcome.RETRY), (429, Outcome.RETRY), (500, Outcome.RETRY), (503, Outcome.RETRY),
        (307, Outcome.RETRY),
        (400, Outcome.PERMANENT), (404, Outcome.PERMANENT), (413, Outcome.PERMANENT),
        (422, Outcome.PERMANENT),
    ],
)  # fmt: skip
def test_status_maps_to_protocol_action(status: int, outcome: Outcome) -> None:
    """Replies are classified exactly as PROTOCOL §2 says."""
    assert classify(status) is outcome


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Retry-After is honoured as delta-seconds or as an HTTP date; junk is ignored."""
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(formatdate(1_000_030, usegmt=True), now=1_000_000) == pytest.approx(30)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_is_full_jitter_capped_and_stretched_by_retry_after() -> None:
    """Delays lie in [0, min(cap, base·2^(n-1))]; a Retry-After sets the floor, up to its cap."""
    backoff = Backoff(0.5, 8.0, 60.0, random.Random(7))  # noqa: S311 - seeded jitter
    for attempt in range(1, 12):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        assert all(0 <= backoff.delay(attempt) <= ceiling for _ in range(50))
    assert backoff.delay(1, retry_after_s=5.0) >= 5.0
    assert backoff.delay(1, retry_after_s=600.0) == pytest.approx(60.0, abs=0.5)


async def test_breaker_opens_after_failures_and_lets_one_probe_through() -> None:
    """After N failures sends wait; one probe goes after the open period; success closes it."""
    breaker = CircuitBreaker(failures=2, open_s=0.05, open_max_s=0.2)
    down = SendResult(Outcome.RETRY, None, "connect failed")
    for _ in range(2):
        assert await breaker.acquire() is False
        await breaker.record(False, down)
    assert breaker.state is BreakerState.OPEN
    probe = await asyncio.wait_for(breaker.acquire(), 2)
    assert probe is True
    assert breaker.state.value == "half_open"
    waiter = asyncio.create_task(breaker.acquire())
    done, _ = await asyncio.wait({waiter}, timeout=0.05)
    assert not done, "a second sender waits while the probe is out"
    await breaker.record(True, SendResult(Outcome.ACCEPTED, 200, ""))
    assert await asyncio.wait_for(waiter, 2) is False
    assert breaker.state.value == "closed"


async def test_failed_probe_reopens_for_longer() -> None:
    """A failed probe reopens the circuit with a doubled (capped) period."""
    breaker = CircuitBreaker(failures=1, open_s=0.05, open_max_s=0.08)
    await breaker.record(False, SendResult(Outcome.RETRY, 503, "HTTP 503"))
    probe = await asyncio.wait_for(breaker.acquire(), 2)
    await breaker.record(probe, SendResult(Outcome.RETRY, 503, "HTTP 503"))
    assert breaker.state.value == "open"
    assert 0.05 < breaker.retry_in() <= 0.08
    probe = await asyncio.wait_for(breaker.acquire(), 2)
    await breaker.record(probe, None)  # the probe was cancelled: another may go at once
    assert breaker.state.value == "open"
    assert breaker.retry_in() == 0.0


async def test_sender_posts_protocol_headers_on_keepalive(cloud: FakeCloud) -> None:
    """A POST carries the §2 headers, a W3C traceparent and the bearer token; 503 is RETRY."""
    sender = CloudSender(fast_cloud(cloud), "runner-9", "tok-123")
    await sender.start()
    entry = StreamEntry(
        id="1-0", session_id="s", project="p", seq=1, policy_version=4, count=1, events=b"[{}]"
    )
    chunk = Chunk("ab" * 16, "acme", 4, "t", (entry,))
    chunk.body = encode(chunk, "runner-9", 3)
    try:
        assert (await sender.send(chunk)).outcome is Outcome.ACCEPTED
        cloud.answer(Reply(503, retry_after="2"))
        result = await sender.send(chunk)
        assert (result.outcome, result.status, result.retry_after_s) == (Outcome.RETRY, 503, 2.0)
    finally:
        await sender.close()
    await until(lambda: len(cloud.requests) == 2, what="two requests")
    headers = cloud.requests[0].headers
    assert headers["Content-Type"] == "application/x-ndjson"
    assert headers["Content-Encoding"] == "zstd"
    assert headers["Idempotency-Key"] == chunk.chunk_id
    assert headers["X-TraceFlow-Runner"] == "runner-9"
    assert headers["X-TraceFlow-Tenant"] == "acme"
    assert headers["X-TraceFlow-Policy-Version"] == "4"
    assert headers["Authorization"] == "Bearer tok-123"
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", headers["traceparent"])
    assert headers["traceparent"].split("-")[1] == chunk.chunk_id
    assert cloud.requests[0].header["chunk_id"] == chunk.chunk_id


async def test_connection_refused_is_retryable(cloud: FakeCloud) -> None:
    """A closed port is a RETRY, never permanent."""
    sender = CloudSender(fast_cloud(cloud), "r", "")
    await sender.start()
    await cloud.down()
    entry = StreamEntry(id="1-0", session_id="s", project="p", seq=1, count=1, events=b"[]")
    chunk = Chunk("cd" * 16, "acme", 0, "t", (entry,), body=b"x")
    try:
        result = await sender.send(chunk)
    finally:
        await sender.close()
    assert (result.outcome, result.status) == (Outcome.RETRY, None)
    assert not result.cloud_alive
