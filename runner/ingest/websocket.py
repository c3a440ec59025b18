"""`GET /v1/stream`: one SDK session per WebSocket (PROTOCOL §1).

This module only adapts an aiohttp WebSocket to the `Transport` that
`connection.Connection` runs the protocol on.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from runner.config import Config
from runner.ingest import messages as m
from runner.ingest.auth import bearer
from runner.ingest.connection import Connection, Connections
from runner.ingest.session import Ingestor

TRANSPORT = "websocket"
CLOSE_TIMEOUT_S = 2.0  # how long we wait for the peer's close frame after sending ours

CONFIG_KEY: web.AppKey[Config] = web.AppKey("config")
INGESTOR_KEY: web.AppKey[Ingestor] = web.AppKey("ingestor")
CONNECTIONS_KEY: web.AppKey[Connections] = web.AppKey("connections")


class IngestWebSocket(web.WebSocketResponse):
    """aiohttp closes an oversize frame with 1009; PROTOCOL §1 says 4413."""

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG:
            code, message = m.CLOSE_TOO_LARGE, b"message too large"
        return await super().close(code=code, message=message, drain=drain)


class WebSocketTransport:
    """A `Transport` over an aiohttp server WebSocket."""

    name = TRANSPORT

    def __init__(self, ws: IngestWebSocket, header_token: str | None, peer: str) -> None:
        self._ws = ws
        self.header_token = header_token
        self.peer = peer

    async def receive(self, wait_s: float) -> tuple[bytes, bool] | None:
        msg = await self._ws.receive(timeout=wait_s)  # TimeoutError goes to the caller
        if msg.type is WSMsgType.TEXT:
            data: Any = msg.data
            return (data.encode() if isinstance(data, str) else data), False
        if msg.type is WSMsgType.BINARY:
            return msg.data, True
        return None

    async def send(self, data: bytes) -> None:
        await self._ws.send_frame(data, WSMsgType.TEXT)  # JSON is UTF-8: a text frame as is

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode()[:120])


async def stream_handler(request: web.Request) -> web.StreamResponse:
    """Upgrade to a WebSocket and run one session on it."""
    connections = request.app[CONNECTIONS_KEY]
    cfg = request.app[CONFIG_KEY].ingest
    ws = IngestWebSocket(
        timeout=CLOSE_TIMEOUT_S,
        max_msg_size=cfg.max_message_bytes,
        heartbeat=cfg.heartbeat_s,
        compress=False,
    )
    await ws.prepare(request)
    if not connections.accepting:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_frame(m.goaway("drain", 500), WSMsgType.TEXT)
        await ws.close(code=m.CLOSE_GOING_AWAY, message=b"draining")
        return ws
    transport = WebSocketTransport(
        ws, bearer(request.headers.get("Authorization")), request.remote or ""
    )
    conn = Connection(request.app[INGESTOR_KEY], transport, cfg)
    connections.add(conn)
    try:
        await conn.run()
    finally:
        connections.discard(conn)
        if not ws.closed:
            await ws.close()
    return ws
