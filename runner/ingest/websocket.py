"""`GET /v1/stream`: one SDK session per WebSocket (PROTOCOL §1).

A reader takes frames off the socket into a bounded inbox; one worker handles
the session's batches in seq order and sends each ack when its batch is
durable. When the inbox is full the reader stops reading, so a fast client is
slowed by TCP instead of growing our memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from runner.errors import BufferUnavailable, ProtocolError
from runner.ingest import messages as m
from runner.ingest.auth import bearer
from runner.ingest.session import Ingestor, Session

log = structlog.get_logger(__name__)

EV_CLOSED_BY_US = "ws.closed"
EV_SEND_TIMEOUT = "ws.send_timeout"
TRANSPORT = "websocket"
CLOSE_TIMEOUT_S = 2.0  # how long we wait for the peer's close frame after sending ours


class IngestWebSocket(web.WebSocketResponse):
    """aiohttp closes an oversize frame with 1009; PROTOCOL §1 says 4413."""

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG:
            code, message = m.CLOSE_TOO_LARGE, b"message too large"
        return await super().close(code=code, message=message, drain=drain)


class Connections:
    """The open WebSocket connections, so a drain can tell each to go."""

    def __init__(self) -> None:
        self._open: set[WebSocketConnection] = set()
        self.accepting = True

    def add(self, conn: WebSocketConnection) -> None:
        self._open.add(conn)

    def discard(self, conn: WebSocketConnection) -> None:
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


class WebSocketConnection:
    """One WebSocket, from handshake to close."""

    def __init__(self, ingestor: Ingestor, request: web.Request, ws: IngestWebSocket) -> None:
        self._ingestor = ingestor
        self._request = request
        self._ws = ws
        cfg = request.app[CONFIG_KEY].ingest
        self._max_bytes = cfg.max_message_bytes
        self._max_events = cfg.max_events
        self._hello_timeout = cfg.hello_timeout_s
        self._idle_timeout = cfg.idle_timeout_s
        self._send_timeout = cfg.send_timeout_s
        self._inbox: asyncio.Queue[m.Batch | m.BadBatch | None] = asyncio.Queue(
            cfg.max_inflight_per_session
        )
        self._send_lock = asyncio.Lock()

    async def send(self, data: bytes) -> None:
        async with self._send_lock:
            await asyncio.wait_for(self._ws.send_bytes(data), self._send_timeout)

    async def close(self, code: int, reason: str) -> None:
        log.info(EV_CLOSED_BY_US, code=code, reason=reason)
        await self._ws.close(code=code, message=reason.encode()[:120])

    async def goaway(self, reconnect_after_ms: int) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError, RuntimeError):
            await self.send(m.goaway("drain", reconnect_after_ms))
        await self.close(m.CLOSE_GOING_AWAY, "draining")

    async def _receive(self, wait_s: float) -> tuple[bytes, bool] | None:
        """The next data frame (payload, is_binary), or None when the peer is gone."""
        msg = await self._ws.receive(timeout=wait_s)  # TimeoutError goes to the caller
        if msg.type is WSMsgType.TEXT:
            data: Any = msg.data
            return (data.encode() if isinstance(data, str) else data), False
        if msg.type is WSMsgType.BINARY:
            return msg.data, True
        return None

    async def run(self) -> None:
        try:
            first = await self._receive(self._hello_timeout)
        except TimeoutError:
            await self.close(m.CLOSE_NO_HELLO, "no hello in time")
            return
        if first is None:
            return
        try:
            hello = m.parse_hello(m.decode(*first, self._max_bytes))
        except ProtocolError as e:
            await self.close(e.close_code, e.reason)
            return
        with structlog.contextvars.bound_contextvars(
            session_id=hello.session_id, transport=TRANSPORT
        ):
            try:
                session = await self._ingestor.open(
                    hello, bearer(self._request.headers.get("Authorization")), TRANSPORT
                )
            except ProtocolError as e:
                await self.close(e.close_code, e.reason)
                return
            except BufferUnavailable:
                await self.close(WSCloseCode.TRY_AGAIN_LATER, "buffer unavailable")
                return
            with structlog.contextvars.bound_contextvars(
                project=session.project.id, tenant=session.tenant
            ):
                try:
                    await self.send(self._ingestor.welcome(session))
                    await self._serve(session)
                finally:
                    self._ingestor.close(session)

    async def _serve(self, session: Session) -> None:
        worker = asyncio.create_task(self._work(session), name="ws-session-worker")
        try:
            await self._read()
        finally:
            await self._inbox.put(None)
            await worker

    async def _read(self) -> None:
        while True:
            try:
                frame = await self._receive(self._idle_timeout)
            except TimeoutError:
                await self.close(WSCloseCode.OK, "idle")
                return
            if frame is None:
                return
            try:
                message = m.decode(*frame, self._max_bytes)
                batch = m.parse_batch(message, len(frame[0]), self._max_events)
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
                await self._ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"slow reader")
            except (ConnectionError, RuntimeError):
                peer_gone = True


CONFIG_KEY: web.AppKey[Any] = web.AppKey("config")
INGESTOR_KEY: web.AppKey[Ingestor] = web.AppKey("ingestor")
CONNECTIONS_KEY: web.AppKey[Connections] = web.AppKey("connections")


async def stream_handler(request: web.Request) -> web.StreamResponse:
    """Upgrade to a WebSocket and run one session on it."""
    connections = request.app[CONNECTIONS_KEY]
    cfg = request.app[CONFIG_KEY].ingest
    ws = IngestWebSocket(
        timeout=CLOSE_TIMEOUT_S,
        max_msg_size=cfg.max_message_bytes,
        heartbeat=cfg.heartbeat_s,
        compress=False,
        receive_timeout=None,
    )
    await ws.prepare(request)
    if not connections.accepting:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(m.goaway("drain", 500))
        await ws.close(code=m.CLOSE_GOING_AWAY, message=b"draining")
        return ws
    conn = WebSocketConnection(request.app[INGESTOR_KEY], request, ws)
    connections.add(conn)
    try:
        await conn.run()
    finally:
        connections.discard(conn)
        if not ws.closed:
            await ws.close()
    return ws
