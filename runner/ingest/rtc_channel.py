"""A WebRTC data channel as a `connection.Transport`, with a bounded inbox.

aiortc hands every message to a callback the moment SCTP reassembles it and
never slows the sender (its receive window does not depend on us reading), so
the backpressure a WebSocket gets from TCP has to be made here:

- Messages wait in an inbox bounded by count and bytes until the session's
  reader takes them. The session reader stops taking when its own bounded
  queue is full (its worker is waiting on redaction or the buffer), so a slow
  pipeline fills this inbox.
- A batch that arrives when the inbox is full is not kept: it is answered at
  once with `nack buffer_full` and `retry_after_ms`, exactly what the Ingestor
  answers when the buffer is full, and the SDK resends it later. A client that
  reads none of those nacks either (more than max_buffered_bytes queued to it)
  is closed with 1008, so what is queued towards it stays bounded too. Memory
  per channel stays below inbox_bytes plus one message being reassembled,
  whatever the client sends, and no batch is ever acked without being stored.
- Replies wait for the channel's send buffer to fall below max_buffered_bytes,
  so a client that does not read its acks runs into ingest.send_timeout_s.

Data channels carry no close code, so before closing, the Runner sends
`{"type":"close","code":…,"reason":…}` with the WebSocket close code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import structlog
from aiortc import RTCDataChannel
from aiortc.exceptions import InvalidStateError

from runner.errors import ProtocolError
from runner.ingest import messages as m
from runner.ingest.rtc_frames import FRAG_MARK, Defragmenter, fragment, parse_frag

log = structlog.get_logger(__name__)

TRANSPORT = "webrtc"
CLOSE_TIMEOUT_S = 2.0  # how long a close waits for the peer to confirm the channel reset
CLOSE_SLOW_READER = 1008  # as `Connection` closes a client that reads no replies
EV_INBOX_FULL = "webrtc.inbox_full"

HelloCheck = Callable[[m.Hello], None]


@dataclass(frozen=True, slots=True)
class ChannelLimits:
    max_message_bytes: int
    inbox_messages: int
    inbox_bytes: int
    max_send_message_bytes: int
    max_buffered_bytes: int
    retry_after_ms: int


@dataclass(slots=True)
class ChannelCounters:
    """Shared by every channel of a `PeerConnections`, for metrics."""

    messages: int = 0
    refused_full: int = 0
    inbox_peak_messages: int = 0
    inbox_peak_bytes: int = 0
    protocol_errors: int = 0


def close_message(code: int, reason: str) -> bytes:
    return orjson.dumps({"type": "close", "code": code, "reason": reason})


@dataclass(slots=True)
class _Inbox:
    items: deque[tuple[bytes, bool] | ProtocolError] = field(default_factory=deque)
    size: int = 0


class DataChannelTransport:
    """A `Transport` over one aiortc data channel labelled `traceflow`."""

    name = TRANSPORT

    def __init__(
        self,
        channel: RTCDataChannel,
        header_token: str | None,
        peer: str,
        limits: ChannelLimits,
        counters: ChannelCounters,
        check_hello: HelloCheck | None = None,
    ) -> None:
        self.header_token = header_token
        self.peer = peer
        self.last_activity = time.monotonic()
        self._channel = channel
        self._limits = limits
        self._counters = counters
        self._check_hello = check_hello
        self._inbox = _Inbox()
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._gone = asyncio.Event()
        self._failed = False
        self._closing = False
        self._hello_seen = False
        self._defrag = Defragmenter(limits.max_message_bytes)
        channel.bufferedAmountLowThreshold = limits.max_buffered_bytes // 2
        channel.on("message", self._on_message)
        channel.on("bufferedamountlow", self._drained.set)
        channel.on("close", self.peer_gone)

    @property
    def depth(self) -> int:
        return len(self._inbox.items)

    @property
    def gone(self) -> bool:
        return self._gone.is_set()

    def peer_gone(self) -> None:
        """The channel or its peer connection closed: receive() ends after the queued messages."""
        self._gone.set()
        self._ready.set()
        self._drained.set()

    # -- receiving (aiortc's callback side) -----------------------------------

    def _on_message(self, data: str | bytes) -> None:
        if self._failed or self._gone.is_set():
            return
        self.last_activity = time.monotonic()
        self._counters.messages += 1
        binary = isinstance(data, bytes)
        raw = data if isinstance(data, bytes) else data.encode()
        try:
            frag = parse_frag(raw) if not binary and FRAG_MARK in raw else None
            if frag is not None:
                joined = self._defrag.feed(frag)
                if joined is None:
                    return
                raw, binary = joined, joined.startswith(m.ZSTD_MAGIC)
            elif self._defrag.busy:
                raise ProtocolError(m.CLOSE_MALFORMED, "message inside a fragmented message")
            elif len(raw) > self._limits.max_message_bytes:
                raise ProtocolError(m.CLOSE_TOO_LARGE, "message exceeds max_message_bytes")
            self._admit(raw, binary)
        except ProtocolError as e:
            self._fail(e)

    def _admit(self, raw: bytes, binary: bool) -> None:
        inbox, limits = self._inbox, self._limits
        room = len(inbox.items) < limits.inbox_messages
        if inbox.items and not (room and inbox.size + len(raw) <= limits.inbox_bytes):
            self._refuse(raw, binary)
            return
        inbox.items.append((raw, binary))
        inbox.size += len(raw)
        counters = self._counters
        counters.inbox_peak_messages = max(counters.inbox_peak_messages, len(inbox.items))
        counters.inbox_peak_bytes = max(counters.inbox_peak_bytes, inbox.size)
        self._ready.set()

    def _refuse(self, raw: bytes, binary: bool) -> None:
        """Inbox full: answer the batch with nack buffer_full now instead of keeping it."""
        message = m.decode(raw, binary, self._limits.max_message_bytes)
        seq = message.get("seq")
        if message.get("type") != "batch" or not isinstance(seq, int) or seq < 1:
            raise ProtocolError(m.CLOSE_MALFORMED, "expected a batch message")
        if self._channel.bufferedAmount > self._limits.max_buffered_bytes:
            raise ProtocolError(CLOSE_SLOW_READER, "slow reader")  # it reads no nacks either
        self._counters.refused_full += 1
        log.debug(EV_INBOX_FULL, seq=seq, depth=len(self._inbox.items))
        with contextlib.suppress(ConnectionError):
            self._send_now(m.nack(seq, m.NACK_BUFFER_FULL, self._limits.retry_after_ms))

    def _fail(self, error: ProtocolError) -> None:
        """Queue the error behind the messages already admitted; ignore whatever follows."""
        self._failed = True
        self._counters.protocol_errors += 1
        self._defrag.reset()
        self._inbox.items.append(error)
        self._ready.set()

    # -- Transport ---------------------------------------------------------------

    async def receive(self, wait_s: float) -> tuple[bytes, bool] | None:
        inbox = self._inbox
        if not inbox.items and not self._gone.is_set():
            self._ready.clear()
            await asyncio.wait_for(self._ready.wait(), wait_s)  # TimeoutError to the caller
        if not inbox.items:
            return None
        item = inbox.items.popleft()
        if isinstance(item, ProtocolError):
            raise item
        inbox.size -= len(item[0])
        if not self._hello_seen:
            self._hello_seen = True
            if self._check_hello is not None:
                decoded = m.decode(*item, self._limits.max_message_bytes)
                self._check_hello(m.parse_hello(decoded))
        return item

    async def send(self, data: bytes) -> None:
        """Send one JSON message, waiting while the client has too much unread."""
        while self._channel.bufferedAmount > self._limits.max_buffered_bytes:
            if self._gone.is_set():
                raise ConnectionError("data channel is closed")
            self._drained.clear()
            await self._drained.wait()
        self._send_now(data)

    def _send_now(self, data: bytes) -> None:
        """All fragments of one message go out in one go, so replies never interleave."""
        if self._gone.is_set() or self._channel.readyState != "open":
            raise ConnectionError("data channel is closed")
        try:
            for piece in fragment(data, self._limits.max_send_message_bytes):
                self._channel.send(piece.decode())
        except InvalidStateError as e:
            raise ConnectionError("data channel is closed") from e

    async def close(self, code: int, reason: str) -> None:
        """Say why, close the channel and wait (briefly) until the peer has seen it close."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(ConnectionError):
            self._send_now(close_message(code, reason))
        if self._channel.readyState not in ("closing", "closed"):
            self._channel.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gone.wait(), CLOSE_TIMEOUT_S)
        self.peer_gone()
