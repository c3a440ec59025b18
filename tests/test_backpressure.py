"""Backpressure, never loss: above the high-water mark batches get nack buffer_full."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from runner.app import Runner
from runner.buffer.keys import Keys
from runner.redact import Redactor
from tests.conftest import admin_url, ws_url
from tests.support import OTHER_KEY, TENANT, RedisProc, Sdk, make_config, until

StartRunner = Callable[..., Awaitable[Runner]]


@pytest.fixture
async def start_runner(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor
) -> AsyncIterator[StartRunner]:
    """Start Runners with custom buffer settings over the test Redis; stop them after."""
    started: list[Runner] = []

    async def start(**buffer: Any) -> Runner:
        cfg = make_config(tmp_path / f"data{len(started)}", redis_proc.url, buffer=buffer)
        instance = Runner(cfg, redactor=redactor)
        await instance.start()
        started.append(instance)
        return instance

    yield start
    for instance in started:
        await instance.stop()


async def batch_size(start: StartRunner, redis: Redis) -> int:
    """The stored size of one test batch, measured through a Runner on its own prefix."""
    probe = await start(stream_prefix="probe")
    sdk = Sdk(ws_url(probe), "s-probe")
    await sdk.connect()
    await sdk.batch(1)
    await sdk.close()
    return int(await redis.get(Keys("probe").bytes(TENANT)) or 0)


async def readyz(instance: Runner) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(admin_url(instance, "/readyz")) as response,
    ):
        body: dict[str, Any] = await response.json()
        return response.status, body


async def test_tenant_high_water_mark_nacks_with_exact_counts(
    start_runner: StartRunner, redis: Redis
) -> None:
    """With room for three batches, the fourth and fifth get buffer_full; others tenants go on."""
    size = await batch_size(start_runner, redis)
    instance = await start_runner(
        stream_prefix="bp", tenant_high_water_bytes=3 * size, retry_after_ms=1500
    )
    sdk = Sdk(ws_url(instance), "s-bp")
    await sdk.connect()
    replies = [await sdk.batch(seq) for seq in range(1, 6)]
    assert replies == [
        {"type": "ack", "seq": 1},
        {"type": "ack", "seq": 2},
        {"type": "ack", "seq": 3},
        {"type": "nack", "seq": 4, "code": "buffer_full", "retry_after_ms": 1500},
        {"type": "nack", "seq": 5, "code": "buffer_full", "retry_after_ms": 1500},
    ]
    assert await redis.xlen(Keys("bp").stream(TENANT)) == 3
    other = Sdk(ws_url(instance), "s-other", token=OTHER_KEY)
    await other.connect()
    assert await other.batch(1) == {"type": "ack", "seq": 1}
    status, _ = await readyz(instance)
    assert status == 200, "one full tenant does not take the replica out of rotation"

    # The forwarder releases bytes as it sends; intake resumes by itself.
    await redis.decrby(Keys("bp").bytes(TENANT), 3 * size)

    async def accepted() -> bool:
        return bool((await sdk.batch(4))["type"] == "ack")

    await until(accepted, what="intake to resume below the high-water mark")
    assert await sdk.batch(5) == {"type": "ack", "seq": 5}
    await sdk.close()
    await other.close()


async def test_overall_high_water_mark_makes_readyz_fail_and_recovers(
    start_runner: StartRunner, redis: Redis
) -> None:
    """Above the overall mark every tenant is nacked and /readyz says why; below it, ready."""
    size = await batch_size(start_runner, redis)
    instance = await start_runner(stream_prefix="all", high_water_bytes=2 * size)
    sdk = Sdk(ws_url(instance), "s-all")
    await sdk.connect()
    assert [(await sdk.batch(s))["type"] for s in (1, 2, 3)] == ["ack", "ack", "nack"]
    other = Sdk(ws_url(instance), "s-other", token=OTHER_KEY)
    await other.connect()
    assert (await other.batch(1))["code"] == "buffer_full"
    status, body = await readyz(instance)
    assert status == 503
    assert "buffer_high_water" in body["failed"]

    await redis.decrby(Keys("all").bytes(TENANT), 2 * size)

    async def ready() -> bool:
        return (await readyz(instance))[0] == 200

    await until(ready, what="readiness after the buffer drained")
    assert await sdk.batch(3) == {"type": "ack", "seq": 3}
    await sdk.close()
    await other.close()
