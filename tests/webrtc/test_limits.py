"""Resources: a bounded inbox per channel, timeouts, drain and stop close every peer."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, cast

import orjson
import pytest
from aiortc import RTCDataChannel
from redis.asyncio import Redis

from runner.buffer.keys import Keys
from runner.errors import ProtocolError
from runner.ingest.rtc_channel import ChannelCounters, ChannelLimits, DataChannelTransport
from runner.ingest.rtc_frames import fragment
from tests.support import TENANT, RedisProc, rrweb_batch, until
from tests.webrtc.conftest import StartRtc
from tests.webrtc.harness import RtcRunner, RtcSdk, post_offer
from tests.webrtc.test_signaling import data_offer

KEYS = Keys("tf")
SENT = 40
INFLIGHT = 2  # ingest.max_inflight_per_session
INBOX = 4  # webrtc.inbox_messages


async def stored_seqs(redis: Redis, session_id: str) -> list[int]:
    entries = await redis.xrange(KEYS.stream(TENANT))
    fields = [cast(dict[bytes, bytes], f) for _, f in entries or []]
    return sorted(int(f[b"seq"]) for f in fields if f[b"sid"] == session_id.encode())


async def test_full_inbox_answers_nack_buffer_full_and_nothing_is_lost(
    start_rtc: StartRtc, redis_proc: RedisProc, redis: Redis
) -> None:
    """With the buffer stalled, batches past the bounded inbox get nack buffer_full at once;
    the inbox never exceeds its bound, every batch gets one answer, resends are stored once."""
    rtc = await start_rtc({"inbox_messages": INBOX}, ingest={"max_inflight_per_session": INFLIGHT})
    sdk = RtcSdk(rtc.offer_url, "r-flood")
    await sdk.connect()
    assert redis_proc.proc is not None
    redis_proc.proc.send_signal(signal.SIGSTOP)  # the buffer stops answering: nothing is acked
    replies: list[dict[str, Any]] = []
    try:
        for seq in range(1, SENT + 1):
            await sdk.send({"type": "batch", "seq": seq, "events": rrweb_batch(2)})
        # Held at most: one in the worker, INFLIGHT queued, one in the reader, INBOX here.
        bound = 1 + INFLIGHT + 1 + INBOX
        while len(replies) < SENT - bound:
            replies.append(await sdk.recv())
        assert all(r["type"] == "nack" for r in replies), "no ack while the buffer is stalled"
    finally:
        redis_proc.proc.send_signal(signal.SIGCONT)
    while len(replies) < SENT:
        replies.append(await sdk.recv())
    assert sorted(r["seq"] for r in replies) == list(range(1, SENT + 1)), "one answer per batch"
    nacked = [r for r in replies if r["type"] == "nack"]
    assert len(nacked) >= SENT - bound
    assert {(r["code"], r["retry_after_ms"]) for r in nacked} == {("buffer_full", 2000)}
    channels = rtc.peers.stats.channels
    assert channels.refused_full == len(nacked)
    assert channels.inbox_peak_messages <= INBOX
    for r in sorted(nacked, key=lambda r: int(r["seq"])):
        assert await sdk.batch(r["seq"], rrweb_batch(2)) == {"type": "ack", "seq": r["seq"]}
    assert await stored_seqs(redis, "r-flood") == list(range(1, SENT + 1))
    await sdk.close()


async def test_idle_peer_is_closed(start_rtc: StartRtc) -> None:
    """A peer that sends nothing for idle_timeout_s is told why and closed, and counted."""
    rtc = await start_rtc({"idle_timeout_s": 0.3})
    sdk = RtcSdk(rtc.offer_url, "r-idle")
    await sdk.connect()
    assert await sdk.recv() == {"type": "close", "code": 1000, "reason": "idle"}
    await sdk.wait_closed()
    await until(lambda: len(rtc.peers) == 0, what="the idle peer to be closed")
    assert rtc.peers.stats.closed["idle"] == 1
    await sdk.close()


async def test_answered_offer_without_channel_is_closed(start_rtc: StartRtc) -> None:
    """An answered offer whose channel never opens is closed after connect_timeout_s."""
    rtc = await start_rtc({"connect_timeout_s": 0.3})
    pc, sdp = await data_offer()
    assert (await post_offer(rtc.offer_url, sdp))[0] == 200
    assert len(rtc.peers) == 1
    await until(lambda: len(rtc.peers) == 0, what="the unconnected peer to be closed")
    assert rtc.peers.stats.closed["connect_timeout"] == 1
    await pc.close()


async def test_drain_sends_goaway_over_the_channel(rtc: RtcRunner) -> None:
    """On drain the session gets goaway then close 1001, and new offers get 503."""
    sdk = RtcSdk(rtc.offer_url, "r-drain")
    await sdk.connect()
    assert await sdk.batch(1) == {"type": "ack", "seq": 1}
    await rtc.runner.drain(5.0)
    assert await sdk.recv() == {"type": "goaway", "reason": "drain", "reconnect_after_ms": 500}
    assert await sdk.recv() == {"type": "close", "code": 1001, "reason": "draining"}
    await sdk.wait_closed()
    await until(lambda: len(rtc.peers) == 0, what="the drained peer to be closed")
    assert rtc.peers.stats.closed["drain"] == 1
    late = RtcSdk(rtc.offer_url, "r-drain")
    assert await late.open() == 503
    await sdk.close()


async def test_client_leaving_ends_the_session_and_frees_the_peer(rtc: RtcRunner) -> None:
    """When the client closes its peer connection, the session ends and the peer is released."""
    sdk = RtcSdk(rtc.offer_url, "r-leave")
    await sdk.connect()
    assert len(rtc.runner.connections) == 1
    await sdk.close()
    await until(lambda: len(rtc.peers) == 0, what="the peer to be released")
    assert len(rtc.runner.connections) == 0
    assert rtc.peers.open_by_project() == {}


async def test_stop_closes_every_peer(start_rtc: StartRtc) -> None:
    """stop() sends goaway to open sessions and closes every peer connection."""
    rtc = await start_rtc()
    sdks = [RtcSdk(rtc.offer_url, f"r-stop-{i}") for i in range(3)]
    for sdk in sdks:
        await sdk.connect()
    idle_pc, sdp = await data_offer()
    assert (await post_offer(rtc.offer_url, sdp))[0] == 200
    assert len(rtc.peers) == 4
    await rtc.peers.stop()
    assert len(rtc.peers) == 0
    for sdk in sdks:
        assert (await sdk.recv())["type"] == "goaway"
        await sdk.wait_closed()
        await sdk.close()
    assert rtc.peers.stats.closed["stop"] == 4
    await idle_pc.close()


async def test_fragmented_message_over_max_message_bytes_is_refused(
    start_rtc: StartRtc,
) -> None:
    """A fragmented message that outgrows max_message_bytes is refused with 4413 midway."""
    rtc = await start_rtc(ingest={"max_message_bytes": 64 * 1024})
    sdk = RtcSdk(rtc.offer_url, "r-huge")
    await sdk.connect()
    body = orjson.dumps({"type": "batch", "seq": 1, "events": rrweb_batch(1, "x" * 200_000)})
    pieces = fragment(body, 16 * 1024)
    for piece in pieces[:6]:
        sdk.send_raw(piece.decode())
    reply = await sdk.recv()
    assert (reply["type"], reply["code"]) == ("close", 4413)
    await sdk.wait_closed()
    await sdk.close()


async def test_bad_fragments_are_malformed(rtc: RtcRunner) -> None:
    """A fragment out of order is a malformed message: close 4400."""
    sdk = RtcSdk(rtc.offer_url, "r-badfrag")
    await sdk.connect()
    sdk.send_raw(orjson.dumps({"type": "frag", "id": "a", "i": 1, "n": 2, "b64": "eyJ9"}).decode())
    reply = await sdk.recv()
    assert (reply["type"], reply["code"]) == ("close", 4400)
    await sdk.wait_closed()
    await sdk.close()


async def test_plain_message_inside_a_fragmented_one_is_malformed(rtc: RtcRunner) -> None:
    """A whole message sent between the fragments of another one is 4400."""
    sdk = RtcSdk(rtc.offer_url, "r-interleave")
    await sdk.connect()
    body = orjson.dumps({"type": "batch", "seq": 1, "events": rrweb_batch(1, "x" * 40_000)})
    pieces = fragment(body, 16 * 1024)
    sdk.send_raw(pieces[0].decode())
    sdk.send_raw(orjson.dumps({"type": "batch", "seq": 2, "events": rrweb_batch(1)}).decode())
    reply = await sdk.recv()
    assert (reply["type"], reply["code"]) == ("close", 4400)
    await sdk.wait_closed()
    await sdk.close()


class UnreadChannel:
    """Just enough of an RTCDataChannel whose client reads nothing: what is sent stays queued."""

    bufferedAmountLowThreshold = 0
    maxRetransmits = maxPacketLifeTime = None

    def __init__(self) -> None:
        self.bufferedAmount = 0
        self.readyState = "open"
        self.sent: list[str] = []
        self.handlers: dict[str, Callable[..., None]] = {}

    def on(self, event: str, handler: Callable[..., None]) -> None:
        self.handlers[event] = handler

    def send(self, data: str) -> None:
        self.sent.append(data)
        self.bufferedAmount += len(data)

    def close(self) -> None:
        self.readyState = "closed"


async def test_client_reading_no_nacks_is_closed_not_queued_to() -> None:
    """With the inbox full and the client reading none of its replies, nacks stop once
    max_buffered_bytes are queued to it: the session is closed 1008, memory stays bounded."""
    limits = ChannelLimits(
        max_message_bytes=1 << 20, inbox_messages=1, inbox_bytes=1 << 20,
        max_send_message_bytes=65_536, max_buffered_bytes=1024, retry_after_ms=2000,
    )  # fmt: skip
    channel = UnreadChannel()
    counters = ChannelCounters()
    transport = DataChannelTransport(cast(RTCDataChannel, channel), None, "test", limits, counters)
    deliver = channel.handlers["message"]
    for seq in range(1, 1001):
        deliver(orjson.dumps({"type": "batch", "seq": seq, "events": []}).decode())
    assert counters.refused_full == len(channel.sent) < 1000
    assert channel.bufferedAmount <= limits.max_buffered_bytes + 100, "one nack past the bound"
    first = await transport.receive(1.0)
    assert first is not None
    assert orjson.loads(first[0])["seq"] == 1, "the admitted batch is still handled"
    with pytest.raises(ProtocolError) as closed:
        await transport.receive(1.0)
    assert (closed.value.close_code, closed.value.reason) == (1008, "slow reader")


async def test_sender_overrunning_the_receive_window_is_closed(rtc: RtcRunner) -> None:
    """aiortc holds a message's fragments until the last one, whatever its window says: a
    client sending one 3 MiB message past the 1 MiB window (an aiortc client, whose sender
    ignores the window, with its size check off) is closed before the message is joined."""
    sdk = RtcSdk(rtc.offer_url, "r-window")
    await sdk.connect()
    assert sdk.pc is not None
    assert sdk.pc.sctp is not None
    sdk.pc.sctp._remote_max_message_size = 0  # the client's own size check, off
    messages = rtc.peers.stats.channels.messages
    sdk.send_raw("x" * (3 * 1024 * 1024))
    await until(lambda: len(rtc.peers) == 0, what="the overrunning peer to be closed")
    assert rtc.peers.stats.closed["window_overrun"] == 1
    assert rtc.peers.stats.channels.messages == messages, "the message was never joined"
    await sdk.close()
