"""End to end: SDK sessions over WebSocket into a real Runner, out of the forwarder to the cloud."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from runner.app import Runner
from runner.buffer.keys import Keys
from runner.forward.forwarder import Forwarder
from tests.conftest import ws_url
from tests.forward.conftest import FAST_FORWARD, fast_cloud
from tests.forward.support import FakeCloud, assert_exactly_once_in_order
from tests.support import TENANT, Sdk, rrweb_batch, until

EVENTS_PER_BATCH = 3


@pytest.fixture
async def forwarder(runner: Runner, cloud: FakeCloud) -> AsyncIterator[Forwarder]:
    """The forwarder wired the way app.py will wire it, next to a started Runner."""
    assert runner.redis is not None
    instance = Forwarder(
        redis=runner.redis,
        config=runner.config,
        policies=runner.policies,
        keys=Keys(runner.config.buffer.stream_prefix),
        cloud=fast_cloud(cloud, breaker_failures=2),
        settings=FAST_FORWARD,
        environ={},
    )
    await instance.start()
    yield instance
    await instance.stop()


async def send_session(runner: Runner, session_id: str, seqs: range) -> list[tuple[int, int]]:
    """Send batches one by one; return (seq, i) of every event the Runner acknowledged."""
    sdk = Sdk(ws_url(runner), session_id)
    await sdk.connect()
    acked: list[tuple[int, int]] = []
    try:
        for seq in seqs:
            reply = await sdk.batch(seq, rrweb_batch(EVENTS_PER_BATCH))
            assert reply == {"type": "ack", "seq": seq}
            acked.extend((seq, i) for i in range(EVENTS_PER_BATCH))
    finally:
        await sdk.close()
    return acked


async def test_acknowledged_events_reach_the_cloud_once_in_order_across_an_outage(
    runner: Runner, forwarder: Forwarder, cloud: FakeCloud
) -> None:
    """Every event an SDK got an ack for reaches the cloud once, in seq order, despite an outage."""
    sessions = [f"e2e-{k}" for k in range(5)]
    first = await asyncio.gather(*(send_session(runner, s, range(1, 11)) for s in sessions))
    await until(lambda: cloud.event_count() >= 50, what="the first events at the cloud")
    await cloud.down()
    second = await asyncio.gather(*(send_session(runner, s, range(11, 21)) for s in sessions))
    await until(lambda: forwarder.state()["circuit"]["state"] != "closed", what="circuit open")
    await cloud.up()
    assert await forwarder.run_until_empty(30) == 0
    expected = {s: a + b for s, a, b in zip(sessions, first, second, strict=True)}
    assert_exactly_once_in_order(cloud, expected)
    assert runner.buffer is not None
    await runner.buffer.refresh_usage()
    assert runner.buffer.used(TENANT) == 0, "backpressure is released as chunks are acked"
    texts = [line["event"] for chunk in cloud.accepted.values() for line in chunk.lines]
    assert all("Priya" not in str(event) for event in texts), "only redacted events leave"
