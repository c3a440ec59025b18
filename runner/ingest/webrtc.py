"""`POST /v1/rtc/offer`: WebRTC data-channel ingest (PROTOCOL §1), and the component that
owns every peer connection.

Signaling is one HTTP request, non-trickle: the SDK posts its offer (with its
candidates) and gets the answer with the Runner's host candidates, gathered
before replying. Credentials are checked before any peer connection exists.
The SDK's ordered, reliable channel `traceflow` then runs the very session
protocol of the WebSocket: `connection.Connection` over a
`rtc_channel.DataChannelTransport`.

`PeerConnections` holds each peer connection from the offer until it closes:
on session end, on a connect or idle timeout, when ICE fails, on drain (after the
shared `Connections` sent goaway) and at stop. It caps them per project and
overall, and counts them for metrics.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError
from prometheus_client.core import CounterMetricFamily, Metric

from runner.config import IngestSection
from runner.errors import ProtocolError, RunnerError
from runner.ingest import messages as m
from runner.ingest.auth import Project, bearer
from runner.ingest.connection import CLOSE_NORMAL, Connection, Connections
from runner.ingest.rtc_channel import (
    TRANSPORT,
    ChannelCounters,
    ChannelLimits,
    DataChannelTransport,
    HelloCheck,
)
from runner.ingest.rtc_ice import IcePin, check_bindable, filter_candidates, pin_ice
from runner.ingest.rtc_sctp import bound_receive_window
from runner.ingest.rtc_settings import WebRtcSettings
from runner.ingest.session import Ingestor
from runner.telemetry.metrics import gauge_family

log = structlog.get_logger(__name__)

CHANNEL_LABEL = "traceflow"
OFFER_PATH = "/v1/rtc/offer"
STOP_TIMEOUT_S = 5.0  # stop() lets sessions store what they already received for this long
GOAWAY_RECONNECT_MS = 500

EV_PEER_OPEN = "webrtc.peer_open"
EV_PEER_CLOSED = "webrtc.peer_closed"
EV_OFFER_REFUSED = "webrtc.offer_refused"
EV_CHANNEL_REFUSED = "webrtc.channel_refused"
EV_TASK_FAILED = "webrtc.task_failed"
EV_STARTED = "webrtc.started"
EV_WINDOW_OVERRUN = "webrtc.window_overrun"


class OfferRefused(RunnerError):
    """An offer the Runner will not answer; carries the HTTP status and error code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class PeerStats:
    """Counters for /metrics and the admin status."""

    opened: int = 0
    closed: Counter[str] = field(default_factory=Counter)
    offers_refused: Counter[str] = field(default_factory=Counter)
    channels: ChannelCounters = field(default_factory=ChannelCounters)


@dataclass(eq=False, slots=True)
class Peer:
    id: int
    project: Project
    token: str | None
    remote: str
    pc: RTCPeerConnection
    last_activity: float = field(default_factory=time.monotonic)
    transport: DataChannelTransport | None = None
    connection: Connection | None = None
    timer: asyncio.TimerHandle | None = None
    reason: str | None = None  # why it is closing, when that is known before the session ends
    closed: bool = False


class PeerConnections:
    """Owns every RTCPeerConnection: caps, timeouts, sessions, close at stop."""

    def __init__(
        self,
        settings: WebRtcSettings,
        ingest: IngestSection,
        retry_after_ms: int,
        ingestor: Ingestor,
        connections: Connections,
    ) -> None:
        self.settings = settings
        self.stats = PeerStats()
        self._ingest = ingest
        self._ingestor = ingestor
        self._connections = connections
        self._limits = ChannelLimits(
            max_message_bytes=ingest.max_message_bytes,
            inbox_messages=settings.inbox_messages,
            inbox_bytes=max(settings.inbox_bytes, ingest.max_message_bytes),
            max_send_message_bytes=settings.max_send_message_bytes,
            max_buffered_bytes=settings.max_buffered_bytes,
            retry_after_ms=retry_after_ms,
        )
        self._pin = IcePin(settings.host_addresses, settings.udp_ports)
        self._peers: set[Peer] = set()
        self._peer_ids = itertools.count(1)
        self._per_project: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ice_servers = settings.ice_servers()
        self._networks = settings.networks()
        self._running = False

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Check the configured host addresses exist; then offers are answered."""
        check_bindable(self.settings.host_addresses)
        self._running = True
        log.info(
            EV_STARTED,
            host_addresses=list(self.settings.host_addresses) or "all non-loopback",
            udp_ports=self.settings.udp_ports,
            stun=bool(self.settings.stun_url),
            turn=bool(self.settings.turn_url),
        )

    async def stop(self) -> None:
        """Tell open sessions to go, let them finish storing, then close every peer."""
        self._running = False
        for peer in self._peers:
            peer.reason = peer.reason or "stop"
        await asyncio.gather(
            *(p.connection.goaway(GOAWAY_RECONNECT_MS) for p in self._peers if p.connection),
            return_exceptions=True,
        )
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_TIMEOUT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*(self._close(p, "stop") for p in list(self._peers)))

    @property
    def accepting(self) -> bool:
        return self._running and self._connections.accepting

    def __len__(self) -> int:
        return len(self._peers)

    def open_by_project(self) -> dict[str, int]:
        return dict(self._per_project)

    def collect(self) -> Iterator[Metric]:
        """Metric families read at scrape time (`Metrics.add_collector(peers.collect)`)."""
        stats, channels = self.stats, self.stats.channels
        yield gauge_family(
            "traceflow_webrtc_peers",
            "Open WebRTC peer connections.",
            ["project"],
            {(p,): n for p, n in self._per_project.items()},
        )
        yield _counter("traceflow_webrtc_peers_opened", "Peer connections created.", stats.opened)
        yield _counter_by(
            "traceflow_webrtc_peers_closed", "Peer connections closed, by reason.", "reason",
            stats.closed,
        )  # fmt: skip
        yield _counter_by(
            "traceflow_webrtc_offers_refused", "Offers not answered, by code.", "code",
            stats.offers_refused,
        )  # fmt: skip
        yield _counter(
            "traceflow_webrtc_inbox_refused",
            "Batches answered nack buffer_full because a channel inbox was full.",
            channels.refused_full,
        )
        yield _counter(
            "traceflow_webrtc_messages", "Data-channel messages received.", channels.messages
        )
        yield gauge_family(
            "traceflow_webrtc_inbox_peak_messages",
            "Deepest any channel inbox has been.",
            [],
            {(): channels.inbox_peak_messages},
        )

    def authenticate(self, token: str | None, remote: str) -> Project:
        """The project of the signaling credentials; ProtocolError 4401/4403 otherwise."""
        return self._ingestor.authenticate(token, TRANSPORT, remote)

    # -- signaling -------------------------------------------------------------

    async def answer(self, project: Project, token: str | None, remote: str, offer_sdp: str) -> str:
        """Create a peer connection for the offer and return the answer SDP with candidates."""
        self._reserve(project)
        try:
            pc = RTCPeerConnection(self._rtc_config())
        except BaseException:
            self._release(project)
            raise
        peer = Peer(next(self._peer_ids), project, token, remote, pc)
        self._peers.add(peer)
        self.stats.opened += 1
        peer.pc.on("datachannel", lambda channel: self._on_channel(peer, channel))
        peer.pc.on("connectionstatechange", lambda: self._on_state(peer))
        try:
            sdp = filter_candidates(offer_sdp, self.settings.resolve_mdns, self._networks)
            async with asyncio.timeout(self.settings.signaling_timeout_s):
                answer = await self._negotiate(peer.pc, sdp)
            if peer.pc.sctp is not None:
                bound_receive_window(peer.pc.sctp, lambda: self._overrun(peer))
        except TimeoutError as e:
            await self._close(peer, "signaling_timeout")
            detail = "could not gather candidates in time"
            raise OfferRefused(503, "signaling_timeout", detail) from e
        except OfferRefused as e:
            await self._close(peer, e.code)
            raise
        except BaseException:
            await self._close(peer, "error")
            raise
        if not self._running:  # stop() ran while this offer was being answered
            await self._close(peer, "stop")
            raise OfferRefused(503, "draining", "the Runner is stopping")
        self._arm(peer, self.settings.connect_timeout_s)
        log.info(EV_PEER_OPEN, peer=peer.id, project=project.id)
        return answer

    async def _negotiate(self, pc: RTCPeerConnection, sdp: str) -> str:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, KeyError, IndexError, InvalidAccessError, InvalidStateError) as e:
            raise OfferRefused(400, "bad_offer", f"cannot use the offer: {e}") from e
        if pc.getTransceivers():
            raise OfferRefused(400, "bad_offer", "only a data channel section is accepted")
        try:
            pin_ice(pc, self._pin)
        except ValueError as e:
            raise OfferRefused(400, "bad_offer", str(e)) from e
        await pc.setLocalDescription(await pc.createAnswer())
        local = pc.localDescription
        if "a=candidate:" not in local.sdp:
            raise OfferRefused(503, "no_candidates", "no local candidate (UDP ports exhausted?)")
        return str(local.sdp)

    def _rtc_config(self) -> RTCConfiguration:
        # An explicit (possibly empty) list: None would make aiortc ask a public STUN server.
        return RTCConfiguration(iceServers=list(self._ice_servers))

    def _reserve(self, project: Project) -> None:
        if len(self._peers) >= self.settings.max_peers:
            raise OfferRefused(429, "too_many_peers", "the Runner is at max_peers")
        if self._per_project[project.id] >= self.settings.max_peers_per_project:
            raise OfferRefused(429, "too_many_connections", "too many peers for the project")
        self._per_project[project.id] += 1

    def _release(self, project: Project) -> None:
        self._per_project[project.id] -= 1
        if self._per_project[project.id] <= 0:
            del self._per_project[project.id]

    # -- channel and session -----------------------------------------------------

    def _on_channel(self, peer: Peer, channel: RTCDataChannel) -> None:
        reliable = channel.maxRetransmits is None and channel.maxPacketLifeTime is None
        if channel.label != CHANNEL_LABEL or peer.transport or not (channel.ordered and reliable):
            log.info(EV_CHANNEL_REFUSED, peer=peer.id, label=channel.label[:64])
            channel.close()
            return
        check = self._hello_check(peer)
        transport = DataChannelTransport(
            channel, peer.token, peer.remote, self._limits, self.stats.channels, check
        )
        peer.transport = transport
        self._arm(peer, self.settings.idle_timeout_s)
        self._spawn(self._session(peer, transport), f"webrtc-session-{peer.id}")

    def _hello_check(self, peer: Peer) -> HelloCheck:
        """The hello's own token, if any, must be of the project the offer was answered for."""

        def check(hello: m.Hello) -> None:
            if not hello.token:
                return
            if self._ingestor.authenticate(hello.token, TRANSPORT, peer.remote) != peer.project:
                raise ProtocolError(m.CLOSE_UNAUTHORIZED, "hello token is for another project")

        return check

    async def _session(self, peer: Peer, transport: DataChannelTransport) -> None:
        conn = Connection(self._ingestor, transport, self._ingest)
        peer.connection = conn
        try:
            with structlog.contextvars.bound_contextvars(peer=peer.id):
                if not self.accepting:
                    await conn.goaway(GOAWAY_RECONNECT_MS)
                    return
                self._connections.add(conn)
                try:
                    await conn.run()
                finally:
                    self._connections.discard(conn)
        finally:
            await self._close(peer, "session_end" if self.accepting else "drain")

    def _on_state(self, peer: Peer) -> None:
        state = peer.pc.connectionState
        if state in ("failed", "closed") and not peer.closed:
            reason = "ice_failed" if state == "failed" else "peer_closed"
            if peer.transport is not None:
                peer.reason = peer.reason or reason
                peer.transport.peer_gone()  # the session ends, then closes the peer
            else:
                self._spawn(self._close(peer, reason), f"webrtc-close-{peer.id}")

    # -- timeouts, closing, tasks ----------------------------------------------

    def _arm(self, peer: Peer, delay_s: float) -> None:
        if peer.timer is not None:
            peer.timer.cancel()
        peer.timer = asyncio.get_running_loop().call_later(delay_s, self._expire, peer)

    def _expire(self, peer: Peer) -> None:
        """A lazy timer: re-armed from the last message, so no work is done per message."""
        peer.timer = None
        if peer.closed:
            return
        transport = peer.transport
        if transport is None:
            self._spawn(self._close(peer, "connect_timeout"), f"webrtc-close-{peer.id}")
            return
        left = transport.last_activity + self.settings.idle_timeout_s - time.monotonic()
        if left > 0:
            self._arm(peer, left)
            return
        peer.reason = "idle"
        conn = peer.connection
        if conn is not None:
            self._spawn(conn.close(CLOSE_NORMAL, "idle"), f"webrtc-idle-{peer.id}")
        else:
            transport.peer_gone()

    def _overrun(self, peer: Peer) -> None:
        """The peer sent past the SCTP receive window: close it, whatever it was doing."""
        log.warning(EV_WINDOW_OVERRUN, peer=peer.id)
        peer.reason = "window_overrun"
        self._spawn(self._close(peer, "window_overrun"), f"webrtc-overrun-{peer.id}")

    async def _close(self, peer: Peer, reason: str) -> None:
        if peer.closed:
            return
        peer.closed = True
        if peer.timer is not None:
            peer.timer.cancel()
        self._peers.discard(peer)
        self._release(peer.project)
        reason = peer.reason or reason
        self.stats.closed[reason] += 1
        if peer.transport is not None:
            peer.transport.peer_gone()
        await peer.pc.close()
        log.info(EV_PEER_CLOSED, peer=peer.id, reason=reason)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error(EV_TASK_FAILED, task=task.get_name(), error=repr(error), exc_info=error)


def _counter(name: str, doc: str, value: int) -> Metric:
    family = CounterMetricFamily(name, doc)
    family.add_metric([], value)
    return family


def _counter_by(name: str, doc: str, label: str, values: Counter[str]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


# -- HTTP ---------------------------------------------------------------------

PEERS_KEY: web.AppKey[PeerConnections] = web.AppKey("webrtc_peers")

_STATUS_FOR_CLOSE = {
    m.CLOSE_UNAUTHORIZED: (401, "unauthorized"),
    m.CLOSE_DISABLED: (403, "disabled"),
}


def _error(status: int, code: str, detail: str, retry_after_s: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    body = orjson.dumps({"error": code, "detail": detail})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _cors(request: web.Request, response: web.Response) -> web.Response:
    """Let the pages of allowed origins read the answer (SDKs run on the bank's own site)."""
    origin = request.headers.get("Origin")
    allowed = request.app[PEERS_KEY].settings.allowed_origins
    if origin is None:
        return response
    if "*" in allowed:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


async def preflight_handler(request: web.Request) -> web.Response:
    """CORS preflight: a page may POST JSON with an Authorization header from allowed origins."""
    origin = request.headers.get("Origin", "")
    allowed = request.app[PEERS_KEY].settings.allowed_origins
    if "*" not in allowed and origin not in allowed:
        return _error(403, "origin_not_allowed", "this origin may not post offers")
    headers = {
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": "600",
    }
    return _cors(request, web.Response(status=204, headers=headers))


async def offer_handler(request: web.Request) -> web.Response:
    """Answer one SDP offer (non-trickle) after checking the bearer credentials."""
    return _cors(request, await _offer(request))


async def _offer(request: web.Request) -> web.Response:
    peers = request.app[PEERS_KEY]
    origin = request.headers.get("Origin")
    allowed = peers.settings.allowed_origins
    if origin is not None and "*" not in allowed and origin not in allowed:
        return _error(403, "origin_not_allowed", "this origin may not post offers")
    if not peers.accepting:
        return _error(503, "draining", "the Runner is draining; retry on another replica", 1)
    token = bearer(request.headers.get("Authorization"))
    remote = request.remote or ""
    try:
        project = peers.authenticate(token, remote)
    except ProtocolError as e:
        status, code = _STATUS_FOR_CLOSE.get(e.close_code, (401, "unauthorized"))
        peers.stats.offers_refused[code] += 1
        return _error(status, code, e.reason)
    try:
        sdp = await _read_offer(request, peers.settings.max_offer_bytes)
        answer = await peers.answer(project, token, remote, sdp)
    except OfferRefused as e:
        peers.stats.offers_refused[e.code] += 1
        log.info(EV_OFFER_REFUSED, project=project.id, code=e.code)
        return _error(e.status, e.code, e.detail, 1 if e.status in (429, 503) else None)
    body = orjson.dumps({"sdp": answer, "type": "answer"})
    return web.Response(body=body, content_type="application/json")


async def _read_offer(request: web.Request, max_bytes: int) -> str:
    if request.content_length is not None and request.content_length > max_bytes:
        raise OfferRefused(413, "too_large", "offer exceeds max_offer_bytes")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise OfferRefused(413, "too_large", "offer exceeds max_offer_bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise OfferRefused(400, "malformed", "body is not JSON") from e
    if not isinstance(body, dict) or body.get("type") != "offer":
        raise OfferRefused(400, "malformed", 'expected {"sdp": "...", "type": "offer"}')
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise OfferRefused(400, "malformed", "sdp must be an SDP offer")
    return sdp


def add_webrtc_routes(app: web.Application, peers: PeerConnections) -> None:
    """Mount `POST /v1/rtc/offer` on the ingest app; nothing when [webrtc] enabled = false."""
    if not peers.settings.enabled:
        return
    app[PEERS_KEY] = peers
    app.router.add_post(OFFER_PATH, offer_handler)
    app.router.add_route("OPTIONS", OFFER_PATH, preflight_handler)
