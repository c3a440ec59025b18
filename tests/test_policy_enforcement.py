"""Policies enforced live on real traffic: rate limits, feature drops, hot apply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from runner.app import Runner
from runner.buffer.keys import Keys
from runner.redact import Redactor
from tests.conftest import ws_url
from tests.support import TENANT, RedisProc, Sdk, make_config, stream_entries, until

CONSOLE = {
    "type": 6,
    "timestamp": 1,
    "data": {"plugin": "rrweb/console@1", "payload": {"level": "log", "payload": ["hi"]}},
}
MOVE = {"type": 3, "timestamp": 2, "data": {"source": 1, "positions": []}}


def policy_file(version: int, console: bool, rate: float = 1.0, burst: int = 9) -> str:
    return f"""
version = {version}
[features]
console = {str(console).lower()}
[rate_limit]
events_per_second = {rate}
burst = {burst}
"""


@pytest.fixture
async def governed(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor
) -> AsyncIterator[tuple[Runner, Path]]:
    """A Runner whose acme-bank policy comes from a policies/ folder the test controls."""
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / f"{TENANT}.toml").write_text(policy_file(1, console=False))
    cfg = make_config(
        tmp_path / "data", redis_proc.url, control_plane={"policies_dir": str(folder)}
    )
    instance = Runner(cfg, redactor=redactor)
    await instance.start()
    yield instance, folder
    await instance.stop()


async def stored_counts(redis: Redis) -> list[int]:
    return [int(fields[b"n"]) for fields in await stream_entries(redis)]


async def test_rate_limit_nacks_with_exact_counts(
    governed: tuple[Runner, Path], redis: Redis
) -> None:
    """With a burst of 9 events, three batches of 3 pass and the fourth is rate_limited."""
    instance, _ = governed
    sdk = Sdk(ws_url(instance), "s-rate")
    await sdk.connect()
    replies = [await sdk.batch(seq, [MOVE, MOVE, MOVE]) for seq in (1, 2, 3, 4)]
    assert [r["type"] for r in replies] == ["ack", "ack", "ack", "nack"]
    assert replies[3]["code"] == "rate_limited"
    assert 0 < replies[3]["retry_after_ms"] <= 3000
    assert await stored_counts(redis) == [3, 3, 3]
    await sdk.close()


async def test_disabled_feature_is_dropped_and_hot_apply_changes_the_next_batch(
    governed: tuple[Runner, Path], redis: Redis
) -> None:
    """Console events are dropped under console=false; after a reload the next batch keeps them."""
    instance, folder = governed
    sdk = Sdk(ws_url(instance), "s-features")
    await sdk.connect()
    assert (await sdk.batch(1, [CONSOLE, MOVE]))["type"] == "ack"
    assert await stored_counts(redis) == [1]
    (folder / f"{TENANT}.toml").write_text(policy_file(2, console=True, rate=1000, burst=1000))
    instance.reload()
    await until(lambda: instance.policies.current.version == 2, what="policy v2 in force")
    assert (await sdk.batch(2, [CONSOLE, MOVE]))["type"] == "ack"
    assert await stored_counts(redis) == [1, 2]
    entries = await stream_entries(redis)
    assert [int(f[b"pv"]) for f in entries] == [1, 2]
    events: list[Any] = orjson.loads(entries[1][b"ev"])
    assert events[0]["data"]["plugin"] == "rrweb/console@1"
    await sdk.close()


async def test_batch_refused_for_a_full_buffer_costs_no_rate_tokens(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor, redis: Redis
) -> None:
    """Retries answered buffer_full take no tokens: once there is room the batch passes
    on the token left, and only then is the bucket empty."""
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / f"{TENANT}.toml").write_text(policy_file(1, console=True, rate=0.001, burst=4))
    cfg = make_config(
        tmp_path / "data",
        redis_proc.url,
        buffer={"stream_prefix": "rt", "tenant_high_water_bytes": 1},
        control_plane={"policies_dir": str(folder)},
    )
    instance = Runner(cfg, redactor=redactor)
    await instance.start()
    try:
        sdk = Sdk(ws_url(instance), "s-full-no-tokens")
        await sdk.connect()
        assert (await sdk.batch(1, [MOVE, MOVE, MOVE]))["type"] == "ack"  # 1 token left
        for _ in range(3):
            assert (await sdk.batch(2, [MOVE]))["code"] == "buffer_full"
        await redis.set(Keys("rt").bytes(TENANT), 0)  # what the forwarder does as it sends

        async def accepted() -> bool:
            reply = await sdk.batch(2, [MOVE])
            assert reply.get("code") != "rate_limited", "a buffer_full retry took a token"
            return bool(reply["type"] == "ack")

        await until(accepted, what="intake to resume below the high-water mark")
        await redis.set(Keys("rt").bytes(TENANT), 0)
        await until(
            lambda: instance.buffer is not None and instance.buffer.used(TENANT) == 0,
            what="the freed bytes to be seen",
        )
        assert (await sdk.batch(3, [MOVE]))["code"] == "rate_limited"
        await sdk.close()
    finally:
        await instance.stop()
