"""PROTOCOL §1 over any message transport: one protocol implementation, many transports.

A `Connection` runs one session on a `Transport` (a WebSocket, a WebRTC data
channel): hello → welcome, then batches. A reader takes messages off the
transport into a bounded inbox; one worker handles the session's batches in
seq order and sends each ack when its batch is durable. When the inbox is full
the reader stops reading, so a fast client is slowed by its transport's flow
control instead of growing our memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import structlog

from runner.config import IngestSection
from runner.errors import BufferUnavailable, ProtocolError
from runner.ingest import messages as m
from runner.ingest.session import Ingestor, Session

log = structlog.get_logger(__name__)

EV_CLOSED_BY_US = "connection.closed"
EV_SEND_TIMEOUT = "connection.send_timeout"
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013


class Transport(Protocol):
    """A message pipe to one SDK."""

    name: str
    header_token: str | None
    peer: str

    async def receive(self, wait_s: float) -> tuple[bytes, bool] | None:
        """The next message (payload, is_binary); None when the peer is gone.

        Raises TimeoutError when nothing arrives within wait_s, ProtocolError for a
        message the transport itself refuses (e.g. too large).
        """
        ...

    async def send(self, data: bytes) -> None:
        """Send one text message (JSON)."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


class Connection:
    """One session on one transport, from hello to close."""

    def __init__(self, ingestor: Ingestor, transport: Transport, settings: IngestSection) -> None:
        self._ingestor = ingestor
        self._transport = transport
        self._settings = settings
        self._inbox: asyncio.Queue[m.Batch | m.BadBatch | None] = asyncio.Queue(
            settings.max_inflight_per_session
        )
        self._send_lock = asyncio.Lock()
        self.session: Session | None = None

    async def send(self, data: bytes) -> None:
        async with self._send_lock:
            await asyncio.wait_for(self._transport.send(data), self._settings.send_timeout_s)

    async def close(self, code: int, reason: str) -> None:
        log.info(EV_CLOSED_BY_US, code=code, reason=reason)
        await self._transport.close(code, reason)

    async def goaway(self, reconnect_after_ms: int) -> None:
        """Tell the SDK to reconnect elsewhere, then close with 1001."""
        with contextlib.suppress(ConnectionError, TimeoutError, RuntimeError):
            await self.send(m.goaway("drain", reconnect_after_ms))
        await self.close(m.CLOSE_GOING_AWAY, "draining")

    async def run(self) -> None:
        """Serve the session until the peer leaves or breaks the protocol."""
        try:
            first = await self._transport.receive(self._settings.hello_timeout_s)
            if first is None:
                return
            hello = m.parse_hello(m.decode(*first, self._settings.max_message_bytes))
        except TimeoutError:
            await self.close(m.CLOSE_NO_HELLO, "no hello in time")
            return
        except ProtocolError as e:
            await self.close(e.close_code, e.reason)
            return
        with structlog.contextvars.bound_contextvars(
            session_id=hello.session_id, transport=self._transport.name
        ):
            try:
                session = await self._ingestor.open(
                    hello, self._transport.header_token, self._transport.name, self._transport.peer
                )
            except ProtocolError as e:
                await self.close(e.close_code, e.reason)
                return
            except BufferUnavailable:
                await self.close(CLOSE_TRY_AGAIN, "buffer unavailable")
                return
            self.session = session
            with structlog.contextvars.bound_contextvars(
                project=session.project.id, tenant=session.tenant
            ):
                try:
                    await self.send(self._ingestor.welcome(session))
                    await self._serve(session)
                finally:
                    self._ingestor.close(session)

    async def _serve(self, session: Session) -> None:
        worker = asyncio.create_task(self._work(session), name="session-worker")
        try:
            await self._read()
        finally:
            await self._inbox.put(None)
            await worker

    async def _read(self) -> None:
        limits = self._settings
        while True:
            try:
                message = await self._transport.receive(limits.idle_timeout_s)
                if message is None:
                    return
                decoded = m.decode(*message, limits.max_message_bytes)
                batch = m.parse_batch(decoded, len(message[0]), limits.max_events)
            except TimeoutError:
                await self.close(CLOSE_NORMAL, "idle")
                return
            except ProtocolError as e:
                await self.close(e.close_code, e.reason)
                return
            await self._inbox.put(batch)

    async def _work(self, session: Session) -> None:
        """Handle batches in order; batches already received are stored even if the peer left."""
        peer_gone = False
        while (batch := await self._inbox.get()) is not None:
            reply = await self._ingestor.batch(session, batch)
            if peer_gone:
                continue
            try:
                await self.send(reply)
            except TimeoutError:
                log.warning(EV_SEND_TIMEOUT)
                peer_gone = True
                await self._transport.close(CLOSE_POLICY, "slow reader")
            except (ConnectionError, RuntimeError):
                peer_gone = True


class Connections:
    """The open connections of every transport, so a drain can tell each to go."""

    def __init__(self) -> None:
        self._open: set[Connection] = set()
        self.accepting = True

    def add(self, conn: Connection) -> None:
        self._open.add(conn)

    def discard(self, conn: Connection) -> None:
        self._open.discard(conn)

    def __len__(self) -> int:
        return len(self._open)

    async def goaway(self, reconnect_after_ms: int) -> None:
        """Stop accepting, then send goaway and close 1001 to every open connection."""
        self.accepting = False
        await asyncio.gather(
            *(conn.goaway(reconnect_after_ms) for conn in list(self._open)),
            return_exceptions=True,
        )
