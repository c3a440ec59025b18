"""Delivery to the cloud: chunks of PROTOCOL §2, acknowledged last, exactly once and in order."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from structlog.testing import capture_logs

from runner.buffer.redis_streams import StreamBuffer
from runner.forward.forwarder import Forwarder
from runner.forward.settings import ForwardSettings
from runner.policy.model import Policy, TenantPolicy
from runner.policy.store import PolicyStore
from tests.forward.conftest import FAST_FORWARD, KEYS, MakeForwarder, fast_cloud
from tests.forward.support import FakeCloud, Reply, assert_exactly_once_in_order, write_batches
from tests.support import TENANT, until


def scrape(forwarder: Forwarder) -> str:
    """The forwarder's metrics as Prometheus would read them."""
    registry = CollectorRegistry()
    registry.register(Scrape(forwarder))
    return generate_latest(registry).decode()


class Scrape(Collector):
    def __init__(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder

    def collect(self) -> Iterator[Metric]:
        yield from self._forwarder.collect()


async def pending(redis: Redis, tenant: str = TENANT) -> int:
    summary = await redis.xpending(KEYS.stream(tenant), "forwarder")
    return int(summary["pending"])


async def buffered_bytes(redis: Redis, tenant: str = TENANT) -> int:
    return int(await redis.get(KEYS.bytes(tenant)) or 0)


async def test_batches_reach_the_cloud_once_and_the_buffer_empties(
    buffer: StreamBuffer, redis: Redis, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """Every buffered event arrives once, in seq order per session; Redis is trimmed and freed."""
    expected = await write_batches(buffer, {"s-a": range(1, 21), "s-b": range(1, 11)})
    assert await buffered_bytes(redis) > 0
    forwarder = await make_forwarder(cloud=fast_cloud(cloud))
    assert await forwarder.run_until_empty(20) == 0
    assert_exactly_once_in_order(cloud, expected)
    assert await redis.xlen(KEYS.stream(TENANT)) == 0
    assert await buffered_bytes(redis) == 0
    assert await redis.hlen(f"tf:{{{TENANT}}}:chunks") == 0
    header = next(iter(cloud.accepted.values())).header
    assert header["tenant"] == TENANT
    assert header["runner_id"] == "runner-test"


async def test_sessions_stay_in_order_with_several_chunks_in_flight(
    buffer: StreamBuffer, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """With small chunks and 4 in flight, each session's events still arrive in seq order."""
    expected = await write_batches(buffer, {f"s-{k}": range(1, 16) for k in range(6)}, per_batch=5)
    small = FAST_FORWARD.model_copy(update={"chunk_max_events": 12})
    forwarder = await make_forwarder(
        cloud=fast_cloud(cloud, max_in_flight_per_tenant=4), settings=small
    )
    cloud.answer(*[Reply(503) for _ in range(3)])
    assert await forwarder.run_until_empty(20) == 0
    assert len(cloud.accepted) > 10
    assert_exactly_once_in_order(cloud, expected)


async def test_transient_failures_are_retried_until_accepted(
    buffer: StreamBuffer, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """500, 429, 408 and a hang past the timeout are retried under the same Idempotency-Key."""
    expected = await write_batches(buffer, {"s-r": range(1, 4)})
    cloud.answer(Reply(500), Reply(429), Reply(408), Reply(hang=True))
    forwarder = await make_forwarder(
        cloud=fast_cloud(cloud, request_timeout_s=0.5, breaker_failures=100)
    )
    assert await forwarder.run_until_empty(20) == 0
    assert_exactly_once_in_order(cloud, expected)
    assert len(set(cloud.arrived)) == 1, "every retry carries the same key"
    assert [r.status for r in cloud.requests[:3]] == [500, 429, 408]
    assert forwarder.state()["tenants"][TENANT]["retries"] == len(cloud.arrived) - 1 >= 4


async def test_retry_after_is_honoured(
    buffer: StreamBuffer, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """A 503 with Retry-After: 1 delays the next attempt by at least a second."""
    await write_batches(buffer, {"s-ra": range(1, 2)})
    cloud.answer(Reply(503, retry_after="1"))
    forwarder = await make_forwarder(cloud=fast_cloud(cloud))
    assert await forwarder.run_until_empty(10) == 0
    refused, accepted = cloud.requests
    assert (refused.status, accepted.status) == (503, 200)
    assert accepted.at - refused.at >= 0.95, "the retry waited for Retry-After"


async def test_requests_chunk_sizes_and_compression_are_metrics(
    buffer: StreamBuffer, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """Requests are counted by HTTP status; accepted chunks give a size and ratio histogram."""
    await write_batches(buffer, {"s-metrics": range(1, 3)})
    cloud.answer(Reply(503))
    forwarder = await make_forwarder(cloud=fast_cloud(cloud))
    assert await forwarder.run_until_empty(10) == 0
    scraped = scrape(forwarder)
    label = f'tenant="{TENANT}"'
    assert f'traceflow_forward_requests_total{{code="503",{label}}} 1.0' in scraped
    accepted = sum(1 for r in cloud.requests if r.status == 200)
    assert f'traceflow_forward_requests_total{{code="200",{label}}} {float(accepted)}' in scraped
    assert f"traceflow_forward_chunk_bytes_count{{{label}}} {float(accepted)}" in scraped
    ratios = [
        line for line in scraped.splitlines() if line.startswith("traceflow_forward_compression")
    ]
    assert f"traceflow_forward_compression_ratio_count{{{label}}} {float(accepted)}" in ratios
    below_one = f'traceflow_forward_compression_ratio_bucket{{le="1.0",{label}}} 0.0'
    assert below_one in ratios, "NDJSON compresses: no chunk has a ratio at or below 1"


async def test_unauthorized_pauses_the_tenant_without_dropping(
    buffer: StreamBuffer, redis: Redis, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """401/403 pause the tenant and count auth failures; nothing is acked until accepted."""
    expected = await write_batches(buffer, {"s-auth": range(1, 4)})
    cloud.default = Reply(401)
    forwarder = await make_forwarder(cloud=fast_cloud(cloud, auth_pause_s=0.5))
    await until(
        lambda: forwarder.state()["tenants"].get(TENANT, {}).get("status") == "paused",
        what="the tenant to pause",
    )
    state = forwarder.state()["tenants"][TENANT]
    assert state["auth_failures"] >= 1
    assert state["last_status"] == 401
    scraped = scrape(forwarder)
    assert f'traceflow_forward_paused{{tenant="{TENANT}"}} 1.0' in scraped
    assert f'traceflow_forward_auth_failures_total{{tenant="{TENANT}"}}' in scraped
    assert await pending(redis) == 3
    assert forwarder.state()["dlq"]["count"] == 0
    cloud.default = Reply(403)
    await until(lambda: forwarder.state()["tenants"][TENANT]["auth_failures"] >= 2, what="403")
    cloud.default = Reply(200)
    assert await forwarder.run_until_empty(10) == 0
    assert_exactly_once_in_order(cloud, expected)


async def test_logs_carry_counts_never_payload_or_token(
    buffer: StreamBuffer, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """Log events name ids, counts and statuses; no event text and no bearer token appear."""
    await write_batches(buffer, {"s-log": range(1, 4)}, marker="PII-MARKER-42")
    cloud.answer(Reply(500), Reply(400))
    with capture_logs() as logs:
        forwarder = await make_forwarder(cloud=fast_cloud(cloud))
        assert await forwarder.run_until_empty(10) == 0
    text = orjson.dumps(logs, default=str).decode()
    assert "PII-MARKER-42" not in text
    assert "runner-token-secret" not in text
    assert {"forward.chunk_retry", "forward.dead_lettered"} <= {e["event"] for e in logs}


async def test_flush_finishes_in_flight_chunks_and_stops_claiming(
    buffer: StreamBuffer, redis: Redis, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """flush() returns 0 once in-flight chunks are acked; later entries stay in Redis."""
    expected = await write_batches(buffer, {"s-f": range(1, 6)})
    forwarder = await make_forwarder(cloud=fast_cloud(cloud))
    await until(lambda: cloud.event_count() == 15, what="the first batches")
    assert await forwarder.flush(5) == 0
    assert_exactly_once_in_order(cloud, expected)
    await write_batches(buffer, {"s-f": range(6, 8)})
    assert await redis.xlen(KEYS.stream(TENANT)) == 2
    assert forwarder.state()["claiming"] is False


async def test_flush_deadline_leaves_unsent_entries_pending(
    buffer: StreamBuffer, redis: Redis, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """When the cloud hangs, flush() gives up at its deadline and the entries stay pending."""
    await write_batches(buffer, {"s-h": range(1, 4)})
    cloud.default = Reply(hang=True)
    forwarder = await make_forwarder(cloud=fast_cloud(cloud, request_timeout_s=30))
    await until(lambda: len(cloud.arrived) == 1, what="the hanging request")
    assert await forwarder.flush(0.3) == 3
    await forwarder.stop()
    assert await pending(redis) == 3
    assert await buffered_bytes(redis) > 0


async def test_minid_trim_releases_acked_entries(
    buffer: StreamBuffer, redis: Redis, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """trim = "minid" acknowledges without XDEL and trims the stream below the oldest pending."""
    await write_batches(buffer, {"s-m": range(1, 301)}, per_batch=1)
    minid = FAST_FORWARD.model_copy(update={"trim": "minid", "chunk_max_events": 50})
    forwarder = await make_forwarder(cloud=fast_cloud(cloud), settings=minid)
    assert await forwarder.run_until_empty(20) == 0
    assert cloud.event_count() == 300
    assert await redis.xlen(KEYS.stream(TENANT)) < 300
    assert await buffered_bytes(redis) == 0


async def test_malformed_entry_goes_to_the_dead_letter_store(
    redis: Redis, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """An entry that cannot be read is dead-lettered as raw bytes, not sent and not dropped."""
    stream = KEYS.stream(TENANT)
    await redis.xgroup_create(stream, "forwarder", id="0", mkstream=True)
    await redis.sadd(KEYS.tenants(), TENANT)
    await redis.xadd(stream, {"sid": "s-bad", "ev": b"{broken", "seq": "x"})
    forwarder = await make_forwarder(cloud=fast_cloud(cloud))
    assert await forwarder.run_until_empty(10) == 0
    assert cloud.arrived == []
    assert forwarder.state()["dlq"]["count"] == 1


async def test_tenant_with_forward_off_keeps_chunks_locally(
    buffer: StreamBuffer, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """A tenant whose policy says forward: false is kept in local storage, never sent."""
    await write_batches(buffer, {"s-local": range(1, 3)})
    policies = PolicyStore(Policy(version=2, tenants={TENANT: TenantPolicy(forward=False)}))
    forwarder = await make_forwarder(cloud=fast_cloud(cloud), policies=policies)
    assert await forwarder.run_until_empty(10) == 0
    assert cloud.arrived == []
    assert forwarder.state()["tenants"][TENANT]["chunks_local"] == 1


async def test_large_backlog_is_bounded_in_memory(
    buffer: StreamBuffer, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """While the cloud hangs, only a few chunks are held in memory; the rest waits in Redis."""
    await write_batches(buffer, {f"s-big-{k}": range(1, 11) for k in range(20)}, per_batch=1)
    cloud.default = Reply(hang=True)
    tiny = ForwardSettings.model_validate({**FAST_FORWARD.model_dump(), "chunk_max_events": 10})
    forwarder = await make_forwarder(
        cloud=fast_cloud(cloud, max_in_flight_per_tenant=2, request_timeout_s=30), settings=tiny
    )
    await until(lambda: len(cloud.arrived) == 2, what="two hanging requests")
    await until(lambda: forwarder.state()["held_entries"] >= 40, what="the queue to fill")
    # in flight (2) + queue (2) + the dispatcher's next + the open chunk + one read: chunks of 10
    assert forwarder.state()["held_entries"] <= 7 * 10
    assert len(cloud.arrived) == 2
