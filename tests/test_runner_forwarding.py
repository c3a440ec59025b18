"""The assembled Runner forwards what it acks, and a drain flushes the buffer to the cloud."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runner.app import Runner
from runner.redact import Redactor
from tests.conftest import ws_url
from tests.forward.support import FakeCloud, Reply, assert_exactly_once_in_order
from tests.support import RedisProc, Sdk, make_config, rrweb_batch, until


@pytest.fixture
async def forwarding(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor, cloud: FakeCloud
) -> AsyncIterator[Runner]:
    """A Runner with its own forwarder on, pointed at the fake cloud."""
    cfg = make_config(
        tmp_path / "data",
        redis_proc.url,
        forward={"enabled": True, "linger_s": 0.05},
        cloud={"endpoint": cloud.url, "backoff_initial_s": 0.05, "backoff_max_s": 0.2},
    )
    instance = Runner(cfg, redactor=redactor)
    await instance.start()
    yield instance
    await instance.stop()


async def test_acked_events_reach_the_cloud_once_in_order(
    forwarding: Runner, cloud: FakeCloud
) -> None:
    """Every event of every acked batch arrives at the cloud exactly once, in seq order."""
    expected: dict[str, list[tuple[int, int]]] = {}
    for name in ("s-a", "s-b"):
        sdk = Sdk(ws_url(forwarding), name)
        await sdk.connect()
        for seq in (1, 2, 3):
            assert (await sdk.batch(seq, rrweb_batch(3)))["type"] == "ack"
            expected.setdefault(name, []).extend((seq, i) for i in range(3))
        await sdk.close()
    await until(lambda: cloud.event_count() == 18, what="18 events at the cloud")
    assert_exactly_once_in_order(cloud, expected)
    header = next(iter(cloud.accepted.values())).header
    assert header["tenant"] == "acme-bank"
    assert header["runner_id"] == "runner-test"
    assert b"Priya" not in b"".join(str(r.lines).encode() for r in cloud.requests)


async def test_drain_flushes_the_buffer_to_the_cloud(forwarding: Runner, cloud: FakeCloud) -> None:
    """A drain after a cloud outage sends the whole backlog before it returns, leaving nothing."""
    cloud.answer(*[Reply(status=503)] * 3)
    sdk = Sdk(ws_url(forwarding), "s-drain-flush")
    await sdk.connect()
    for seq in range(1, 6):
        assert (await sdk.batch(seq, rrweb_batch(2)))["type"] == "ack"
    remaining = await forwarding.drain(30)
    assert remaining == 0
    assert cloud.event_count() == 10
    assert forwarding.buffer is not None
    await forwarding.buffer.refresh_usage()
    assert forwarding.buffer.used("acme-bank") == 0
