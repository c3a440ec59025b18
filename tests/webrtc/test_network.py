"""Network settings bank IT relies on: which candidates are offered, which ports, no STUN."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from aioice import stun
from pydantic import ValidationError

from runner.errors import StartupError
from runner.ingest.rtc_ice import filter_candidates
from runner.ingest.rtc_settings import WebRtcSettings
from runner.ingest.webrtc import PeerConnections
from tests.support import until
from tests.webrtc.conftest import StartRtc
from tests.webrtc.harness import LOOPBACK, RtcRunner, RtcSdk, candidates, post_offer
from tests.webrtc.test_signaling import data_offer

# -- what the process sends: a Python audit hook sees every resolve, connect and sendto -----

_NET_EVENTS = {"socket.connect", "socket.sendto", "socket.getaddrinfo", "socket.gethostbyname"}
_recording: list[list[tuple[str, Any]]] = []
_hook_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _recording and event in _NET_EVENTS:
        target = args[0] if event.startswith("socket.get") else args[1]
        _recording[-1].append((event, target))


@contextmanager
def network_audit() -> Iterator[list[tuple[str, Any]]]:
    """Record the destination of every name lookup, connect and UDP send in this process."""
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_hook)  # audit hooks cannot be removed; it records only inside here
        _hook_installed = True
    seen: list[tuple[str, Any]] = []
    _recording.append(seen)
    try:
        yield seen
    finally:
        _recording.remove(seen)


def is_loopback(target: Any) -> bool:
    host = target[0] if isinstance(target, tuple) else target
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str) or host.startswith("/") or host == "localhost":
        return True  # a Unix socket path, or the loopback name
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FakeStun(asyncio.DatagramProtocol):
    """A STUN server on loopback that answers binding requests with a fixed mapped address."""

    def __init__(self, mapped: tuple[str, int]) -> None:
        self.mapped = mapped
        self.requests: list[tuple[str, int]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = stun.parse_message(data)
        self.requests.append(addr)
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = self.mapped
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# -- tests ---------------------------------------------------------------------------------


async def test_answer_offers_only_the_configured_host_address(rtc: RtcRunner) -> None:
    """The answer's candidates are host candidates on the configured address (here loopback,
    which aioice alone would never offer), and nothing else."""
    pc, sdp = await data_offer()
    status, answer = await post_offer(rtc.offer_url, sdp)
    assert status == 200
    found = candidates(answer["sdp"])
    assert found, "a non-trickle answer carries its candidates"
    assert {(c[4], c[7]) for c in found} == {(LOOPBACK, "host")}
    await pc.close()


async def test_default_settings_contact_no_stun_server(rtc: RtcRunner) -> None:
    """With default settings a whole session resolves no name and sends to loopback only."""
    with network_audit() as seen:
        sdk = RtcSdk(rtc.offer_url, "r-no-stun")
        await sdk.connect()
        assert (await sdk.batch(1))["type"] == "ack"
        await sdk.close()
    assert any(event == "socket.sendto" for event, _ in seen), "the audit hook records UDP"
    assert [s for s in seen if not is_loopback(s[1])] == []


async def test_configured_stun_server_is_used(start_rtc: StartRtc) -> None:
    """Positive control: a configured STUN server is asked and yields a srflx candidate."""
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: FakeStun(("127.0.0.2", 40000)), local_addr=(LOOPBACK, 0)
    )
    port = transport.get_extra_info("sockname")[1]
    try:
        rtc = await start_rtc({"stun_url": f"stun:{LOOPBACK}:{port}"})
        pc, sdp = await data_offer()
        with network_audit() as seen:
            status, answer = await post_offer(rtc.offer_url, sdp)
        assert status == 200
        assert ("socket.sendto", (LOOPBACK, port)) in seen
        assert server.requests, "the STUN server got a binding request"
        types = {(c[4], c[7]) for c in candidates(answer["sdp"])}
        assert types == {(LOOPBACK, "host"), ("127.0.0.2", "srflx")}
        await pc.close()
    finally:
        transport.close()


async def test_udp_port_range_is_honoured_and_released(start_rtc: StartRtc) -> None:
    """Host candidates use ports from udp_ports; a full range gets 503; a close frees it."""
    port = free_udp_port()
    rtc = await start_rtc({"udp_ports": [port, port]})
    first = RtcSdk(rtc.offer_url, "r-port-1")
    await first.connect()
    assert first.pc is not None
    remote = first.pc.remoteDescription.sdp
    assert {int(c[5]) for c in candidates(remote)} == {port}
    assert (await first.batch(1))["type"] == "ack"
    second = RtcSdk(rtc.offer_url, "r-port-2")
    assert await second.open() == 503
    assert rtc.peers.stats.offers_refused["no_candidates"] == 1
    await first.close()
    third = RtcSdk(rtc.offer_url, "r-port-3")

    async def reopened() -> bool:
        return await third.open() == 200

    await until(reopened, what="the port to be free again")
    assert (await third.hello())["type"] == "welcome"
    await third.close()


async def test_missing_host_address_fails_start(rtc: RtcRunner) -> None:
    """A host address that is not on this machine stops start-up with a clear error."""
    assert rtc.runner.ingestor is not None
    peers = PeerConnections(
        WebRtcSettings(host_addresses=("203.0.113.7",)),
        rtc.runner.config.ingest,
        2000,
        rtc.runner.ingestor,
        rtc.runner.connections,
    )
    with pytest.raises(StartupError, match=r"203\.0\.113\.7"):
        await peers.start()


def test_offer_candidates_are_filtered() -> None:
    """mDNS candidates are dropped unless resolve_mdns; remote_networks keeps only its nets."""
    sdp = "\r\n".join(
        [
            "v=0",
            "a=candidate:1 1 udp 2122260223 1f4712db-ea17.local 54321 typ host generation 0",
            "a=candidate:2 1 udp 2122260223 10.1.2.3 54322 typ host generation 0",
            "a=candidate:3 1 udp 2122260223 192.168.9.9 54323 typ host generation 0",
            "a=end-of-candidates",
        ]
    )
    kept = filter_candidates(sdp, keep_mdns=False)
    assert ".local" not in kept
    assert "10.1.2.3" in kept
    assert "192.168.9.9" in kept
    assert ".local" in filter_candidates(sdp, keep_mdns=True)
    only_ten = filter_candidates(sdp, False, (ipaddress.ip_network("10.0.0.0/8"),))
    assert "10.1.2.3" in only_ten
    assert "192.168.9.9" not in only_ten
    assert only_ten.startswith("v=0\r\n")
    assert only_ten.endswith("a=end-of-candidates")


@pytest.mark.parametrize(
    "bad",
    [
        {"host_addresses": ["10.0.0"]},
        {"udp_ports": [80, 90]},
        {"udp_ports": [50010, 50000]},
        {"remote_networks": ["10.0.0.0/33"]},
        {"stun_url": "http://stun.example:3478"},
        {"turn_url": "turn:turn.example:3478?transport=udp"},
        {"stun_server": "stun:x"},
        {"inbox_messages": 0},
    ],
)
def test_bad_settings_are_refused(bad: dict[str, Any]) -> None:
    """Bad addresses, ranges, URLs, a TURN server without user, unknown keys fail to load."""
    with pytest.raises(ValidationError):
        WebRtcSettings.model_validate(bad)


def test_ice_servers_are_empty_by_default_and_turn_credential_comes_from_env() -> None:
    """No STUN/TURN unless configured; the TURN password is read from its environment variable."""
    assert WebRtcSettings().ice_servers() == []
    settings = WebRtcSettings(turn_url="turn:10.0.0.9:3478?transport=udp", turn_username="tf")
    (server,) = settings.ice_servers({"RUNNER_WEBRTC_TURN_CREDENTIAL": "s3cret"})
    assert (server.urls, server.username, server.credential) == (
        "turn:10.0.0.9:3478?transport=udp",
        "tf",
        "s3cret",
    )
