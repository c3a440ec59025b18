"""The session protocol over a data channel: the same acks, resume and dedupe as WebSocket."""

from __future__ import annotations

from typing import Any, cast

import orjson
import zstandard
from redis.asyncio import Redis

from runner.buffer.keys import Keys
from runner.ingest.rtc_frames import fragment
from tests.support import TENANT, rrweb_batch
from tests.webrtc.harness import RtcRunner, RtcSdk

KEYS = Keys("tf")


async def stored(redis: Redis, session_id: str) -> list[dict[bytes, bytes]]:
    entries = await redis.xrange(KEYS.stream(TENANT))
    fields = [cast(dict[bytes, bytes], f) for _, f in entries or []]
    return [f for f in fields if f[b"sid"] == session_id.encode()]


async def test_hello_gets_welcome_over_the_channel(rtc: RtcRunner) -> None:
    """A hello on the `traceflow` channel gets the same welcome as on a WebSocket."""
    sdk = RtcSdk(rtc.offer_url, "r-welcome")
    welcome = await sdk.connect()
    assert welcome["type"] == "welcome"
    assert welcome["session_id"] == "r-welcome"
    assert welcome["resume_seq"] == 0
    assert welcome["limits"] == {"max_message_bytes": 4 * 1024 * 1024, "max_events": 1000}
    await sdk.close()


async def test_batch_is_acked_once_stored_and_redacted(rtc: RtcRunner, redis: Redis) -> None:
    """An ack over the channel means the batch is in the tenant's stream, redacted."""
    sdk = RtcSdk(rtc.offer_url, "r-ack")
    await sdk.connect()
    assert await sdk.batch(1, rrweb_batch(3)) == {"type": "ack", "seq": 1}
    entries = await stored(redis, "r-ack")
    assert len(entries) == 1
    events: list[Any] = orjson.loads(entries[0][b"ev"])
    assert [e["type"] for e in events] == [2, 3, 3]
    assert b"Priya" not in entries[0][b"ev"]
    assert b"4111" not in entries[0][b"ev"]
    await sdk.close()


async def test_resume_and_dedupe_across_transports(rtc: RtcRunner, redis: Redis) -> None:
    """Resent batches on a new channel are acked, not stored twice; resume_seq is the highest."""
    first = RtcSdk(rtc.offer_url, "r-resume")
    await first.connect()
    for seq in (1, 2, 3):
        assert await first.batch(seq) == {"type": "ack", "seq": seq}
    await first.close()
    second = RtcSdk(rtc.offer_url, "r-resume")
    assert (await second.connect(last_acked_seq=1))["resume_seq"] == 3
    for seq in (2, 3, 4):
        assert await second.batch(seq) == {"type": "ack", "seq": seq}
    await second.close()
    assert [int(e[b"seq"]) for e in await stored(redis, "r-resume")] == [1, 2, 3, 4]


async def test_large_batch_is_fragmented_and_joined(rtc: RtcRunner, redis: Redis) -> None:
    """A batch sent as `frag` messages (PROTOCOL §1 framing) is joined, stored and acked."""
    sdk = RtcSdk(rtc.offer_url, "r-frag", max_send_bytes=16 * 1024)
    await sdk.connect()
    events = rrweb_batch(1) + [
        {"type": 3, "timestamp": 1700000001000 + i, "data": {"source": 1, "positions": []}}
        for i in range(3000)
    ]
    assert len(orjson.dumps({"type": "batch", "seq": 1, "events": events[:1000]})) > 64 * 1024
    assert await sdk.batch(1, events[:1000]) == {"type": "ack", "seq": 1}
    entries = await stored(redis, "r-frag")
    assert entries[0][b"n"] == b"1000"
    await sdk.close()


async def test_replies_are_fragmented_when_larger_than_the_send_limit(
    start_rtc: Any,
) -> None:
    """With a small max_send_message_bytes the welcome arrives as fragments and is joined."""
    rtc = await start_rtc({"max_send_message_bytes": 256})
    sdk = RtcSdk(rtc.offer_url, "r-frag-out-" + "x" * 117)
    welcome = await sdk.connect()
    assert welcome["session_id"] == "r-frag-out-" + "x" * 117
    assert sdk.fragments_received >= 2
    assert await sdk.batch(1) == {"type": "ack", "seq": 1}
    await sdk.close()


async def test_zstd_binary_batch_over_the_channel(rtc: RtcRunner, redis: Redis) -> None:
    """A binary message holding a zstd-compressed batch is handled like a text one."""
    sdk = RtcSdk(rtc.offer_url, "r-zstd")
    await sdk.connect()
    body = orjson.dumps({"type": "batch", "seq": 1, "events": rrweb_batch(2)})
    sdk.send_raw(zstandard.ZstdCompressor().compress(body))
    assert await sdk.recv() == {"type": "ack", "seq": 1}
    assert [int(e[b"seq"]) for e in await stored(redis, "r-zstd")] == [1]
    await sdk.close()


async def test_fragmented_zstd_batch_is_joined_as_binary(rtc: RtcRunner, redis: Redis) -> None:
    """A zstd batch bigger than the channel limit, sent as `frag` messages, is joined, seen as
    compressed by its magic, stored and acked."""
    sdk = RtcSdk(rtc.offer_url, "r-zstd-frag")
    await sdk.connect()
    events = rrweb_batch(1) + [
        {"type": 3, "timestamp": 1700000001000 + i, "data": {"source": 1, "positions": [i]}}
        for i in range(999)
    ]
    body = orjson.dumps({"type": "batch", "seq": 1, "events": events})
    packed = zstandard.ZstdCompressor(level=1).compress(body)
    pieces = fragment(packed, 1024)
    assert len(pieces) > 2
    for piece in pieces:
        sdk.send_raw(piece.decode())
    assert await sdk.recv() == {"type": "ack", "seq": 1}
    assert [int(e[b"seq"]) for e in await stored(redis, "r-zstd-frag")] == [1]
    await sdk.close()
