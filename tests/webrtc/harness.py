"""Real parts for WebRTC tests: a Runner that answers offers, and an SDK over aiortc.

`RtcRunner` starts the real Runner. When `runner/app.py` builds a
`PeerConnections` itself (`Runner.peers`, from the `[webrtc]` section), that one
is used; until then the same component is built from the Runner's own
Ingestor and Connections and mounted on a second loopback listener. Either
way, sessions go through the Runner's Ingestor, PII engine and Redis buffer.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from runner.app import Runner
from runner.config import Config
from runner.ingest.rtc_frames import FRAG_MARK, Defragmenter, fragment, parse_frag
from runner.ingest.rtc_ice import IcePin, pin_ice
from runner.ingest.rtc_settings import WebRtcSettings
from runner.ingest.webrtc import OFFER_PATH, PeerConnections, add_webrtc_routes
from runner.ingest.websocket import CONFIG_KEY, CONNECTIONS_KEY, INGESTOR_KEY, stream_handler
from runner.redact import Redactor
from tests.support import API_KEY, make_config, rrweb_batch

LOOPBACK = "127.0.0.1"
# Tests talk to loopback only: the Runner offers and checks loopback candidates only.
TEST_NETWORK = {"host_addresses": [LOOPBACK], "remote_networks": ["127.0.0.0/8"]}
_rtc_data_dirs = itertools.count()


def rtc_settings(**overrides: Any) -> WebRtcSettings:
    return WebRtcSettings.model_validate({**TEST_NETWORK, **overrides})


@dataclass
class RtcRunner:
    """A started Runner whose `PeerConnections` answers offers at `offer_url`; `base_url`
    serves both `/v1/stream` and `/v1/rtc/offer` over the Runner's Ingestor."""

    runner: Runner
    peers: PeerConnections
    base_url: str
    _site: web.AppRunner | None = None

    @property
    def offer_url(self) -> str:
        return self.base_url + OFFER_PATH

    @classmethod
    async def start(
        cls,
        tmp: Path,
        redis_url: str,
        redactor: Redactor,
        webrtc: WebRtcSettings,
        **sections: dict[str, Any],
    ) -> RtcRunner:
        wired = "webrtc" in Config.model_fields
        if wired:
            sections = {**sections, "webrtc": webrtc.model_dump(mode="json")}
        config = make_config(tmp / f"data-rtc{next(_rtc_data_dirs)}", redis_url, **sections)
        runner = Runner(config, redactor=redactor)
        await runner.start()
        own: PeerConnections | None = getattr(runner, "peers", None)
        if own is not None:
            return cls(runner, own, f"http://{LOOPBACK}:{runner.ingest_address[1]}")
        assert runner.ingestor is not None
        peers = PeerConnections(
            webrtc,
            config.ingest,
            config.buffer.retry_after_ms,
            runner.ingestor,
            runner.connections,
        )
        await peers.start()
        app = web.Application()
        app[CONFIG_KEY] = config
        app[INGESTOR_KEY] = runner.ingestor
        app[CONNECTIONS_KEY] = runner.connections
        app.router.add_get("/v1/stream", stream_handler)
        add_webrtc_routes(app, peers)
        site = web.AppRunner(app, access_log=None, handle_signals=False)
        await site.setup()
        tcp = web.TCPSite(site, LOOPBACK, 0)
        await tcp.start()
        port = site.addresses[0][1]
        return cls(runner, peers, f"http://{LOOPBACK}:{port}", site)

    async def stop(self) -> None:
        if self._site is not None:
            await self._site.cleanup()
            await self.peers.stop()
        await self.runner.stop()


async def post_offer(
    url: str, sdp: str, token: str | None = API_KEY, body: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if body is not None else orjson.dumps({"sdp": sdp, "type": "offer"})
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=data, headers=headers) as response,
    ):
        raw = await response.read()
        is_json = response.content_type == "application/json"
        answer: dict[str, Any] = orjson.loads(raw) if is_json else {}
        return response.status, answer


def candidates(sdp: str) -> list[list[str]]:
    """The `a=candidate` lines of an SDP, split into fields."""
    return [line.split() for line in sdp.splitlines() if line.startswith("a=candidate:")]


@dataclass
class RtcSdk:
    """A minimal SDK speaking PROTOCOL §1 over an aiortc data channel labelled `traceflow`."""

    offer_url: str
    session_id: str
    token: str = API_KEY
    max_send_bytes: int = 65_536
    pc: RTCPeerConnection | None = None
    channel: RTCDataChannel | None = None
    welcome: dict[str, Any] = field(default_factory=dict)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _inbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    _defrag: Defragmenter = field(default_factory=lambda: Defragmenter(16 * 1024 * 1024))
    fragments_received: int = 0

    async def open(self, label: str = "traceflow") -> int:
        """Offer, get the answer, and wait for the channel to open; returns the HTTP status."""
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel = self.channel = pc.createDataChannel(label)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", self._on_message)
        channel.on("close", self.closed.set)
        pin_ice(pc, IcePin((LOOPBACK,)))
        await pc.setLocalDescription(await pc.createOffer())
        status, answer = await post_offer(self.offer_url, pc.localDescription.sdp, self.token)
        if status != 200:
            await pc.close()
            return status
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.wait_for(opened.wait(), 10)
        return status

    async def connect(self, last_acked_seq: int = 0, **hello: Any) -> dict[str, Any]:
        status = await self.open()
        assert status == 200, f"signaling answered {status}"
        return await self.hello(last_acked_seq, **hello)

    async def hello(self, last_acked_seq: int = 0, **hello: Any) -> dict[str, Any]:
        await self.send(
            {
                "type": "hello",
                "v": 1,
                "token": self.token,
                "session_id": self.session_id,
                "sdk": {"name": "test-rtc", "version": "0"},
                "last_acked_seq": last_acked_seq,
                **hello,
            }
        )
        self.welcome = await self.recv()
        return self.welcome

    def _on_message(self, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else data
        frag = parse_frag(raw) if FRAG_MARK in raw else None
        if frag is not None:
            self.fragments_received += 1
            joined = self._defrag.feed(frag)
            if joined is None:
                return
            raw = joined
        self._inbox.put_nowait(orjson.loads(raw))

    def send_raw(self, data: str | bytes) -> None:
        assert self.channel is not None
        self.channel.send(data)

    async def send(self, message: dict[str, Any]) -> None:
        for piece in fragment(orjson.dumps(message), self.max_send_bytes):
            self.send_raw(piece.decode())

    async def recv(self, wait_s: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self._inbox.get(), wait_s)

    async def batch(self, seq: int, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        await self.send({"type": "batch", "seq": seq, "events": events or rrweb_batch()})
        return await self.recv()

    async def wait_closed(self, wait_s: float = 10.0) -> None:
        await asyncio.wait_for(self.closed.wait(), wait_s)

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
