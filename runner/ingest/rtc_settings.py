"""The `[webrtc]` section of runner.toml: the network and the limits of WebRTC ingest.

These are the settings a bank's network team asks about. By default the Runner
offers host candidates only and contacts no STUN or TURN server: browsers on
the same LAN or VPC reach it directly, and the appliance sends nothing to the
internet. The TURN credential is never read from runner.toml, only from the
environment variable that `turn_credential_env` names.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from aiortc import RTCIceServer

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


class WebRtcSettings(BaseModel):
    """Every field has a default, so an empty `[webrtc]` section is a working LAN setup."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    """Answer `POST /v1/rtc/offer`; when false it answers 404 and SDKs use the WebSocket."""
    host_addresses: tuple[str, ...] = ()
    """Local IP addresses offered as ICE host candidates (e.g. ["10.20.0.5"]). Empty: every
    non-loopback interface address, as aioice does by default. Loopback is offered only if
    listed here. Each address must exist on this host, or the Runner will not start."""
    udp_ports: tuple[int, int] | None = None
    """Inclusive UDP port range for host candidates, e.g. [50000, 50999], so a firewall can
    allow exactly it. One port per peer connection and address: size it above max_peers.
    None: ports the kernel picks (ephemeral range)."""
    stun_url: str = ""
    """A STUN server ("stun:host:3478") for server-reflexive candidates. Empty: none, and no
    STUN request ever leaves the Runner (aiortc's own default would ask a public server)."""
    turn_url: str = ""
    """A TURN server ("turn:host:3478?transport=udp" or "turns:host:5349?transport=tcp")."""
    turn_username: str = ""
    turn_credential_env: str = Field(
        default="RUNNER_WEBRTC_TURN_CREDENTIAL", pattern=ENV_NAME_PATTERN
    )
    """Name of the environment variable holding the TURN password."""
    resolve_mdns: bool = False
    """Resolve a browser's mDNS (`*.local`) candidates by multicast DNS. Off: they are dropped
    and the browser's checks are answered as peer-reflexive candidates, which works on a LAN
    without any multicast traffic from the Runner."""

    remote_networks: tuple[str, ...] = ()
    """Client networks (CIDR) the Runner sends ICE checks to, e.g. ["10.0.0.0/8"]. A client's
    candidates elsewhere are dropped from its offer, so an offer cannot make the Runner send
    UDP to arbitrary hosts. Empty: any address the client lists."""

    allowed_origins: tuple[str, ...] = ("*",)
    """Web origins whose pages may post offers (CORS), e.g. ["https://netbanking.acme.in"].
    "*" allows any origin; the API key still decides who may connect."""

    max_peers: int = Field(default=5000, ge=1, le=1_000_000)
    """Peer connections open at once, all projects together; more get HTTP 429."""
    max_peers_per_project: int = Field(default=1000, ge=1, le=1_000_000)
    """Peer connections open at once per project; more get HTTP 429."""
    connect_timeout_s: float = Field(default=15.0, gt=0, le=300)
    """An answered offer whose `traceflow` channel has not opened by then is closed."""
    idle_timeout_s: float = Field(default=120.0, gt=0)
    """A peer connection that has carried no message for this long is closed."""
    signaling_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Bound on building an answer (ICE gathering, TURN allocation); past it HTTP 503."""
    max_offer_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    """Largest signaling body accepted."""

    inbox_messages: int = Field(default=16, ge=1, le=4096)
    """Messages a channel holds that the session has not read yet; past it (or past
    inbox_bytes) a batch is answered at once with nack buffer_full."""
    inbox_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    """Bytes a channel holds unread; one message (up to ingest.max_message_bytes) is always
    admitted into an empty inbox."""
    max_send_message_bytes: int = Field(default=65_536, ge=256, le=262_144)
    """Largest data-channel message the Runner sends; longer replies go as `frag` messages.
    65536 is what every browser accepts (RFC 8841 default)."""
    max_buffered_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Replies queued towards a slow client; past it sending waits (ingest.send_timeout_s)."""

    @field_validator("host_addresses")
    @classmethod
    def _ip_addresses(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            try:
                ipaddress.ip_address(value)
            except ValueError as e:
                raise ValueError(f"{value!r} is not an IP address") from e
        if len(set(values)) != len(values):
            raise ValueError("an address is listed twice")
        return values

    @field_validator("remote_networks")
    @classmethod
    def _networks(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as e:
                raise ValueError(f"{value!r} is not a network (CIDR)") from e
        return values

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(v, strict=False) for v in self.remote_networks)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if value != "*" and not ORIGIN.match(value):
                raise ValueError(f"{value!r} is not an origin (scheme://host[:port])")
        return values

    @field_validator("udp_ports")
    @classmethod
    def _port_range(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 1024 <= value[0] <= value[1] <= 65535:
            raise ValueError("expected [low, high] with 1024 <= low <= high <= 65535")
        return value

    @field_validator("stun_url")
    @classmethod
    def _stun(cls, value: str) -> str:
        if value and not value.startswith("stun"):
            raise ValueError("expected stun:host[:port]")
        return _uri(value)

    @field_validator("turn_url")
    @classmethod
    def _turn(cls, value: str) -> str:
        if value and not value.startswith("turn"):
            raise ValueError("expected turn:host[:port][?transport=udp|tcp] or turns:…")
        return _uri(value)

    @model_validator(mode="after")
    def _turn_user(self) -> WebRtcSettings:
        if self.turn_url and not self.turn_username:
            raise ValueError("turn_url needs turn_username (and the credential in the environment)")
        return self

    def ice_servers(self, environ: Mapping[str, str] | None = None) -> list[RTCIceServer]:
        """The STUN/TURN servers for aiortc: an empty list unless configured (never None,
        which would make aiortc use its public default)."""
        from aiortc import RTCIceServer  # aiortc is heavy; config loading does not need it

        servers: list[RTCIceServer] = []
        if self.stun_url:
            servers.append(RTCIceServer(urls=self.stun_url))
        if self.turn_url:
            env = os.environ if environ is None else environ
            servers.append(
                RTCIceServer(
                    urls=self.turn_url,
                    username=self.turn_username,
                    credential=env.get(self.turn_credential_env, ""),
                )
            )
        return servers


def _uri(value: str) -> str:
    if not value:
        return value
    from aiortc.rtcicetransport import parse_stun_turn_uri

    try:
        parse_stun_turn_uri(value)
    except ValueError as e:
        raise ValueError(f"{value!r}: {e}") from e
    return value
