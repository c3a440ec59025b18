"""Crashes and outages: kill -9 mid-send, abandoned consumers, a cloud that goes and returns."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from runner.buffer.redis_streams import StreamBuffer
from runner.config import Config
from tests.conftest import REPO
from tests.forward.conftest import FAST_FORWARD, KEYS, MakeForwarder, fast_cloud
from tests.forward.support import FakeCloud, Reply, assert_exactly_once_in_order, write_batches
from tests.support import TENANT, until


async def test_kill_9_mid_send_resends_the_same_chunks(
    buffer: StreamBuffer,
    redis: Redis,
    config: Config,
    cloud: FakeCloud,
    make_forwarder: MakeForwarder,
) -> None:
    """After kill -9 mid-send, the restarted forwarder resends with the same Idempotency-Keys."""
    cloud.default = Reply(hang=True, keep=True)  # the cloud keeps chunks but never answers
    settings = fast_cloud(cloud, request_timeout_s=60)
    spec = {
        "redis_url": config.buffer.redis_url,
        "data_dir": str(config.runner.data_dir),
        "cloud": orjson.loads(settings.model_dump_json()) | {"token": "t"},
        "forward": FAST_FORWARD.model_dump(mode="json"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.forward.forwarder_proc",
        orjson.dumps(spec).decode(),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
        # Two waves: the first chunk is cut by linger before the second wave exists, so
        # re-chunking the pending entries from scratch would give other ids.
        expected = await write_batches(buffer, {"s-k1": range(1, 4), "s-k2": range(1, 3)})
        await until(lambda: cloud.event_count() == 15, what="the first wave in flight")
        more = await write_batches(buffer, {"s-k3": range(1, 4)})
        await until(lambda: cloud.event_count() == 24, what="the second wave in flight")
    finally:
        proc.kill()  # kill -9: no cleanup, no acks
        await asyncio.wait_for(proc.wait(), 10)
    before = list(cloud.arrived)
    summary = await redis.xpending(KEYS.stream(TENANT), "forwarder")
    assert summary["pending"] == 8
    assert len(before) >= 2
    assert await redis.hlen(f"tf:{{{TENANT}}}:chunks") == len(before)

    cloud.default = Reply(200)
    forwarder = await make_forwarder(cloud=fast_cloud(cloud))
    assert await forwarder.run_until_empty(20) == 0
    resent = cloud.arrived[len(before) :]
    assert sorted(resent) == sorted(before), "the same chunks, under the same keys"
    assert all(r.status == 409 for r in cloud.requests[len(before) :])
    assert_exactly_once_in_order(cloud, expected | more)
    assert int(await redis.get(KEYS.bytes(TENANT)) or 0) == 0


async def test_entries_abandoned_by_a_dead_consumer_are_claimed(
    buffer: StreamBuffer, redis: Redis, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """Entries another replica read and never acknowledged are taken over after claim_idle_s."""
    expected = await write_batches(buffer, {"s-orphan": range(1, 5)})
    stream = KEYS.stream(TENANT)
    taken: Any = await redis.xreadgroup("forwarder", "runner-dead", {stream: ">"}, count=10)
    assert len(taken[0][1]) == 4
    forwarder = await make_forwarder(cloud=fast_cloud(cloud))
    assert await forwarder.run_until_empty(20) == 0
    assert_exactly_once_in_order(cloud, expected)
    consumers = {c["name"]: c["pending"] for c in await redis.xinfo_consumers(stream, "forwarder")}
    assert consumers.get(b"runner-dead", 0) == 0


async def test_cloud_down_for_a_while_then_back_delivers_everything(
    buffer: StreamBuffer, redis: Redis, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """With the cloud's port closed the circuit opens and probes; once back, all arrives once."""
    await cloud.down()
    expected = await write_batches(buffer, {"s-out1": range(1, 11), "s-out2": range(1, 6)})
    forwarder = await make_forwarder(cloud=fast_cloud(cloud, breaker_failures=2))
    await until(lambda: forwarder.state()["circuit"]["state"] != "closed", what="circuit to open")
    expected |= await write_batches(buffer, {"s-out3": range(1, 4)})
    await until(lambda: forwarder.state()["circuit"]["opened"] >= 3, what="a few failed probes")
    assert forwarder.state()["dlq"]["count"] == 0, "an outage is not a reason to dead-letter"
    assert int(await redis.get(KEYS.bytes(TENANT)) or 0) > 0
    await cloud.up()
    assert await forwarder.run_until_empty(20) == 0
    assert forwarder.state()["circuit"]["state"] == "closed"
    assert_exactly_once_in_order(cloud, expected)
    assert int(await redis.get(KEYS.bytes(TENANT)) or 0) == 0


async def test_forwarder_restart_after_clean_stop_loses_nothing(
    buffer: StreamBuffer, cloud: FakeCloud, make_forwarder: MakeForwarder, tmp_path: Path
) -> None:
    """Entries read but not sent when the forwarder stops are sent by the next one."""
    cloud.default = Reply(hang=True)
    expected = await write_batches(buffer, {"s-stop": range(1, 4)})
    first = await make_forwarder(cloud=fast_cloud(cloud, request_timeout_s=30))
    await until(lambda: len(cloud.arrived) == 1, what="a hanging send")
    await first.stop()
    cloud.default = Reply(200)
    second = await make_forwarder(cloud=fast_cloud(cloud))
    assert await second.run_until_empty(20) == 0
    assert_exactly_once_in_order(cloud, expected)
    assert cloud.arrived[0] == cloud.arrived[-1]


async def test_pending_entries_deleted_underneath_are_cleared(
    buffer: StreamBuffer, redis: Redis, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """A pending entry that vanished from the stream is acknowledged away, not retried forever."""
    await write_batches(buffer, {"s-ghost": range(1, 3)})
    stream = KEYS.stream(TENANT)
    taken: Any = await redis.xreadgroup("forwarder", "runner-test", {stream: ">"}, count=10)
    ghost = taken[0][1][0][0]
    await redis.xdel(stream, ghost)
    forwarder = await make_forwarder(cloud=fast_cloud(cloud))
    assert await forwarder.run_until_empty(10) == 0

    async def nothing_pending() -> bool:
        return int((await redis.xpending(stream, "forwarder"))["pending"]) == 0

    await until(nothing_pending, what="the pending list to empty")
    assert [seq for _, seq, _ in cloud.events()] == [2, 2, 2]
