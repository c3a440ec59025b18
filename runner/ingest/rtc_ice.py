"""ICE host candidates the way bank IT configures them: chosen addresses, a UDP port range.

aioice 0.13 (under aiortc) offers every non-loopback interface address on an
ephemeral port and has no option for either. Its `Connection` gathers through
one overridable method, `get_component_candidates(component, addresses)`, so a
subclass decides the addresses and, with a port range, binds each host socket
itself; STUN and TURN candidates still come from aioice. aiortc gives no public
handle on the aioice agent it creates, so `pin_ice` reaches it through the
gatherer of the peer connection's SCTP transport, before gathering starts, and
turns it into a `PinnedIceConnection`. Pinned to aioice 0.13 in pyproject; the
tests in tests/webrtc/test_network.py prove each behaviour on the real library.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
from dataclasses import dataclass

import structlog
from aioice import Candidate
from aioice import Connection as IceConnection
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, server_reflexive_candidate
from aioice.turn import UDP_SOCKET_BUFFER_SIZE
from aiortc import RTCPeerConnection

from runner.errors import StartupError

log = structlog.get_logger(__name__)

EV_NO_FREE_PORT = "webrtc.no_free_udp_port"
MDNS_SUFFIX = ".local"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class IcePin:
    """Where host candidates may be: these addresses (empty: aioice's choice), these ports."""

    addresses: tuple[str, ...] = ()
    ports: tuple[int, int] | None = None


class PinnedIceConnection(IceConnection):
    """An aioice agent whose host candidates follow an `IcePin`."""

    pin: IcePin

    async def get_component_candidates(
        self,
        component: int,
        addresses: list[str],
        timeout: int = 5,  # noqa: ASYNC109 - aioice's signature, overridden
    ) -> list[Candidate]:
        chosen = list(self.pin.addresses) or addresses
        if self.pin.ports is None:
            return await super().get_component_candidates(component, chosen, timeout)
        hosts: list[StunProtocol] = []
        for address in chosen:
            protocol = await self._bind_host(component, address, self.pin.ports)
            if protocol is not None:
                hosts.append(protocol)
        self._protocols += hosts
        candidates = [p.local_candidate for p in hosts]
        if self.stun_server is not None:
            candidates += await self._reflexive(hosts, self.stun_server, timeout)
        # With no addresses aioice only allocates the TURN relay, if one is configured.
        candidates += await super().get_component_candidates(component, [], timeout)
        return candidates

    async def _bind_host(
        self, component: int, address: str, ports: tuple[int, int]
    ) -> StunProtocol | None:
        """Bind a UDP socket on a free port of the range, from a random start."""
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        low, high = ports
        span = high - low + 1
        first = secrets.randbelow(span)
        for step in range(span):
            port = low + (first + step) % span
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((address, port))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SOCKET_BUFFER_SIZE)
            loop = asyncio.get_running_loop()
            _, protocol = await loop.create_datagram_endpoint(lambda: StunProtocol(self), sock=sock)
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", address),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=address,
                port=port,
                type="host",
            )
            return protocol
        log.warning(EV_NO_FREE_PORT, address=address, low=low, high=high)
        return None

    async def _reflexive(
        self, hosts: list[StunProtocol], stun_server: tuple[str, int], wait_s: float
    ) -> list[Candidate]:
        ipv4 = [p for p in hosts if ipaddress.ip_address(p.local_candidate.host).version == 4]
        if not ipv4:
            return []
        tasks = [asyncio.create_task(server_reflexive_candidate(p, stun_server)) for p in ipv4]
        done, pending = await asyncio.wait(tasks, timeout=wait_s)
        for task in pending:
            task.cancel()
        return [t.result()[0] for t in done if t.exception() is None]


def pin_ice(pc: RTCPeerConnection, pin: IcePin) -> None:
    """Make the peer connection gather per `pin`; call after setRemoteDescription(offer)."""
    sctp = pc.sctp
    if sctp is None:
        raise ValueError("the offer has no data channel (m=application) section")
    gatherer = sctp.transport.transport.iceGatherer
    if gatherer.state != "new":
        raise RuntimeError("ICE gathering already started")
    agent = gatherer._connection  # aiortc exposes no public handle on its aioice agent
    agent.__class__ = PinnedIceConnection
    if not isinstance(agent, PinnedIceConnection):  # narrows the type for mypy
        raise TypeError("aioice agent could not be pinned")
    agent.pin = pin


def filter_candidates(sdp: str, keep_mdns: bool, networks: tuple[IPNetwork, ...] = ()) -> str:
    """The offer without the `a=candidate` lines the Runner must not use: mDNS names
    (`*.local`) unless kept, and addresses outside `networks` when any are given. Checks
    never go to a dropped address; a client there still connects as peer-reflexive."""
    sep = "\r\n" if "\r\n" in sdp else "\n"
    return sep.join(line for line in sdp.split(sep) if _keep(line, keep_mdns, networks))


def _keep(line: str, keep_mdns: bool, networks: tuple[IPNetwork, ...]) -> bool:
    if not line.startswith("a=candidate:"):
        return True
    parts = line.split()
    if len(parts) < 8:
        return False
    address = parts[4]
    if address.lower().endswith(MDNS_SUFFIX):
        return keep_mdns and not networks
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not networks or any(ip in net for net in networks)


def check_bindable(addresses: tuple[str, ...]) -> None:
    """Fail start-up when a configured host address does not exist on this machine."""
    for address in addresses:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((address, 0))
            except OSError as e:
                raise StartupError(
                    f"[webrtc] host_addresses: {address} is not an address of this host ({e})"
                ) from e
