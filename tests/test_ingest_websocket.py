"""WebSocket ingest (PROTOCOL §1): hello/welcome, durable acks, resume and dedupe."""

from __future__ import annotations

from typing import Any

import orjson
import zstandard
from redis.asyncio import Redis

from runner.app import Runner
from runner.buffer.keys import FORWARD_GROUP, Keys
from tests.conftest import ws_url
from tests.support import TENANT, Sdk, rrweb_batch, stream_entries

KEYS = Keys("tf")


async def stored_seqs(redis: Redis, session_id: str) -> list[int]:
    return [int(e[b"seq"]) for e in await stream_entries(redis) if e[b"sid"] == session_id.encode()]


async def test_hello_gets_welcome(runner: Runner) -> None:
    """A hello with a valid key gets a welcome with resume_seq 0, sampling and limits."""
    sdk = Sdk(ws_url(runner), "s-welcome")
    welcome = await sdk.connect()
    assert welcome == {
        "type": "welcome",
        "session_id": "s-welcome",
        "resume_seq": 0,
        "sampled": True,
        "policy_version": 0,
        "limits": {"max_message_bytes": 4 * 1024 * 1024, "max_events": 1000},
    }
    await sdk.close()


async def test_batch_is_acked_once_stored_and_redacted(runner: Runner, redis: Redis) -> None:
    """An ack means the batch is in the tenant's stream, with its metadata, and redacted."""
    sdk = Sdk(ws_url(runner), "s-ack")
    await sdk.connect()
    assert await sdk.batch(1, rrweb_batch(3)) == {"type": "ack", "seq": 1}
    entries = await stream_entries(redis)
    assert len(entries) == 1
    entry = entries[0]
    assert entry[b"sid"] == b"s-ack"
    assert entry[b"proj"] == b"web"
    assert entry[b"seq"] == b"1"
    assert entry[b"n"] == b"3"
    events: list[Any] = orjson.loads(entry[b"ev"])
    assert [e["type"] for e in events] == [2, 3, 3]
    assert b"Priya" not in entry[b"ev"]
    assert b"4111" not in entry[b"ev"]
    groups = await redis.xinfo_groups(KEYS.stream(TENANT))
    assert [g["name"] for g in groups] == [FORWARD_GROUP.encode()]
    await sdk.close()


async def test_zstd_binary_frame_is_accepted(runner: Runner, redis: Redis) -> None:
    """A binary frame holding a zstd-compressed batch is handled like a text frame."""
    sdk = Sdk(ws_url(runner), "s-zstd")
    await sdk.connect()
    assert sdk.ws is not None
    body = orjson.dumps({"type": "batch", "seq": 1, "events": rrweb_batch(2)})
    await sdk.ws.send(zstandard.ZstdCompressor().compress(body))
    assert await sdk.recv() == {"type": "ack", "seq": 1}
    assert await stored_seqs(redis, "s-zstd") == [1]
    await sdk.close()


async def test_resume_after_reconnect(runner: Runner) -> None:
    """After a reconnect the welcome's resume_seq is the highest stored seq."""
    sdk = Sdk(ws_url(runner), "s-resume")
    await sdk.connect()
    for seq in (1, 2, 3):
        assert (await sdk.batch(seq))["type"] == "ack"
    await sdk.close()
    again = Sdk(ws_url(runner), "s-resume")
    assert (await again.connect(last_acked_seq=2))["resume_seq"] == 3
    assert await again.batch(4) == {"type": "ack", "seq": 4}
    await again.close()


async def test_resent_batch_on_new_connection_is_acked_not_stored_twice(
    runner: Runner, redis: Redis
) -> None:
    """A batch resent on another connection is acked again and stored once."""
    first = Sdk(ws_url(runner), "s-dedupe")
    await first.connect()
    await first.batch(1)
    await first.batch(2)
    await first.close()
    second = Sdk(ws_url(runner), "s-dedupe")
    await second.connect(last_acked_seq=0)
    for seq in (1, 2, 3):
        assert await second.batch(seq) == {"type": "ack", "seq": seq}
    await second.close()
    assert await stored_seqs(redis, "s-dedupe") == [1, 2, 3]


async def test_concurrent_duplicates_store_once(runner: Runner, redis: Redis) -> None:
    """The same seq sent on two live connections at once is stored exactly once."""
    a = Sdk(ws_url(runner), "s-race")
    b = Sdk(ws_url(runner), "s-race")
    await a.connect()
    await b.connect()
    for seq in range(1, 21):
        await a.send({"type": "batch", "seq": seq, "events": rrweb_batch(2)})
        await b.send({"type": "batch", "seq": seq, "events": rrweb_batch(2)})
    acks_a = [await a.recv() for _ in range(20)]
    acks_b = [await b.recv() for _ in range(20)]
    assert [x["seq"] for x in acks_a] == list(range(1, 21))
    assert [x["seq"] for x in acks_b] == list(range(1, 21))
    assert sorted(await stored_seqs(redis, "s-race")) == list(range(1, 21))
    await a.close()
    await b.close()


async def test_out_of_order_seqs_are_stored_once_and_resume_is_contiguous(
    runner: Runner, redis: Redis
) -> None:
    """A gap is remembered: resume_seq stays below it until it is filled, then jumps past."""
    sdk = Sdk(ws_url(runner), "s-gap")
    await sdk.connect()
    await sdk.batch(1)
    await sdk.batch(3)
    await sdk.close()
    again = Sdk(ws_url(runner), "s-gap")
    assert (await again.connect())["resume_seq"] == 1
    assert await again.batch(2) == {"type": "ack", "seq": 2}
    assert await again.batch(3) == {"type": "ack", "seq": 3}
    await again.close()
    third = Sdk(ws_url(runner), "s-gap")
    assert (await third.connect())["resume_seq"] == 3
    await third.close()
    assert sorted(await stored_seqs(redis, "s-gap")) == [1, 2, 3]


async def test_dedupe_survives_a_runner_restart(runner: Runner, redis: Redis) -> None:
    """Dedupe state lives in Redis: after a Runner restart a resent batch is not stored again."""
    sdk = Sdk(ws_url(runner), "s-restart")
    await sdk.connect()
    await sdk.batch(1)
    await sdk.batch(2)
    await sdk.close()
    await runner.stop()
    second = Runner(runner.config, redactor=runner.redactor)
    await second.start()
    try:
        again = Sdk(ws_url(second), "s-restart")
        assert (await again.connect())["resume_seq"] == 2
        assert await again.batch(2) == {"type": "ack", "seq": 2}
        assert await again.batch(3) == {"type": "ack", "seq": 3}
        await again.close()
    finally:
        await second.stop()
    assert await stored_seqs(redis, "s-restart") == [1, 2, 3]
    runner.buffer = None  # already stopped; let the fixture's stop() be a no-op for it
    runner.redis = None
    runner.redactor = None


async def test_tenants_get_their_own_streams(runner: Runner, redis: Redis) -> None:
    """Each tenant's batches go to that tenant's stream only."""
    from tests.support import OTHER_KEY

    mine = Sdk(ws_url(runner), "s-mine")
    theirs = Sdk(ws_url(runner), "s-theirs", token=OTHER_KEY)
    await mine.connect()
    await theirs.connect()
    await mine.batch(1)
    await theirs.batch(1)
    assert len(await stream_entries(redis, TENANT)) == 1
    assert len(await stream_entries(redis, "other-bank")) == 1
    assert set(await redis.smembers(KEYS.tenants())) == {TENANT.encode(), b"other-bank"}
    await mine.close()
    await theirs.close()
