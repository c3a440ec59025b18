"""Security settings: TLS per listener, outbound TLS, JWTs, brute-force and listener limits.

Every model is frozen and rejects unknown keys, so `verify = false` or a typo such as
`clinet_ca_file` stops start-up instead of being ignored. Every field has a default; a
model built from nothing is "off" (`TlsSettings()` serves plain TCP, `JwtSettings()`
trusts no JWT), and a half-configured one (a key without a certificate, JWT keys without
an audience) is an error rather than a weaker mode.

Mounted by `runner/config.py`:

    [ingest.tls]          TlsSettings           [admin.tls]      TlsSettings
    [ingest.limits]       ListenerLimits        [admin.limits]   ListenerLimits
    [ingest.auth_throttle] AuthThrottleSettings [admin.client]   AdminClientSettings
    [projects.jwt]        JwtSettings (per project, optional)
    [dlq.at_rest]         AtRestSettings (keys that seal dead letters and local chunks)
    OutboundTlsSettings   for clients of the cloud, the control plane and S3
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TlsVersion = Literal["1.2", "1.3"]
JwtAlgorithm = Literal["RS256", "ES256", "EdDSA"]
JWT_ALGORITHMS: tuple[JwtAlgorithm, ...] = ("RS256", "ES256", "EdDSA")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsSettings(_Model):
    """TLS for one listener (`[ingest.tls]`, `[admin.tls]`); on when `cert_file` is set."""

    cert_file: Path | None = None
    """PEM server certificate, leaf first, then intermediates."""
    key_file: Path | None = None
    """PEM private key; may be omitted when `cert_file` holds the key too."""
    client_ca_file: Path | None = None
    """PEM bundle of CAs that issue client certificates: when set, mutual TLS is required."""
    client_crl_file: Path | None = None
    """PEM CRL(s) of the client CAs; a revoked client certificate is refused."""
    min_version: TlsVersion = "1.3"
    """"1.3" only by default; "1.2" must be chosen explicitly (ECDHE + AEAD suites only)."""
    reload_interval_s: float = Field(default=30.0, gt=0, le=3600)
    """How often the files are checked for a renewed certificate, key, CA bundle or CRL."""
    expiry_warning_days: int = Field(default=30, ge=0, le=3650)
    """A certificate expiring within this many days is flagged in status and metrics."""
    handshake_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """A client that has not finished the TLS handshake by then is disconnected."""

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if self.cert_file is None and (
            self.key_file is not None or self.client_ca_file is not None
        ):
            raise ValueError("key_file and client_ca_file need cert_file")
        if self.client_crl_file is not None and self.client_ca_file is None:
            raise ValueError("client_crl_file needs client_ca_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @property
    def mutual(self) -> bool:
        """Client certificates are required."""
        return self.client_ca_file is not None


class OutboundTlsSettings(_Model):
    """TLS for a client of the cloud, the control plane or S3.

    The server's certificate and host name are always verified; there is deliberately no
    setting that turns that off. `ca_file` pins the trust to that bundle only (the system
    store is not consulted); without it the system store is used.
    """

    ca_file: Path | None = None
    client_cert: Path | None = None
    """PEM client certificate for mutual TLS (with `client_key`, or a PEM holding both)."""
    client_key: Path | None = None
    min_version: TlsVersion = "1.2"
    """Outbound peers (bank proxies, MinIO) do not all speak 1.3; 1.2 is limited to AEAD suites."""
    reload_interval_s: float = Field(default=60.0, gt=0, le=3600)
    expiry_warning_days: int = Field(default=30, ge=0, le=3650)

    @model_validator(mode="after")
    def _complete(self) -> OutboundTlsSettings:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        return self


class AdminClientSettings(_Model):
    """How `runner status` and `runner drain` reach the admin listener (`[admin.client]`).

    With `[admin.tls]` set they speak https and verify the listener's certificate chain
    and host name (never switched off): against `ca_file` only when set, else the system
    store. A listener on a wildcard address is reached on 127.0.0.1, so its certificate
    needs that SAN — or set `url` to a name the certificate has.
    """

    url: str = ""
    """Base URL, e.g. "https://runner-1.bank.internal:9090"; "" = from `[admin] listen`."""
    ca_file: Path | None = None
    """PEM bundle of the CA(s) that issued the admin listener's certificate."""
    cert_file: Path | None = None
    """PEM client certificate to present when `[admin.tls] client_ca_file` requires one."""
    key_file: Path | None = None
    """Its key (may be omitted when `cert_file` holds the key too)."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, or empty")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError("must be a base URL (scheme, host and port only)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _complete(self) -> AdminClientSettings:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        return self


class JwtSettings(_Model):
    """JWTs a project trusts (`[projects.jwt]`); off while no key source is set.

    Keys come from PEM public key files and/or a local JWKS file; both are re-read when
    they change, so adding or revoking a key needs no restart. With a key source set,
    `audience` and `issuer` are required: a token for another service is not accepted.
    """

    algorithms: tuple[JwtAlgorithm, ...] = JWT_ALGORITHMS
    public_key_files: tuple[Path, ...] = ()
    """PEM public keys (RSA ≥ 2048 bits → RS256, EC P-256 → ES256, Ed25519 → EdDSA)."""
    jwks_file: Path | None = None
    """A local JWKS (`{"keys": [...]}`); keys are matched by `kid`. Never a private key."""
    audience: tuple[str, ...] = ()
    """Accepted `aud` values; the token's `aud` must contain one of them."""
    issuer: tuple[str, ...] = ()
    """Accepted `iss` values."""
    leeway_s: float = Field(default=30.0, ge=0, le=300)
    """Clock skew allowed on `exp` and `nbf`."""
    max_lifetime_s: int | None = Field(default=None, ge=1)
    """When set, tokens must carry `iat` and live at most this long (`exp - iat`)."""
    reload_interval_s: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _complete(self) -> JwtSettings:
        if not self.algorithms:
            raise ValueError("algorithms must name at least one of RS256, ES256, EdDSA")
        if self.enabled and (not self.audience or not self.issuer):
            raise ValueError("a project that trusts JWTs needs audience and issuer")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.public_key_files) or self.jwks_file is not None


class AuthThrottleSettings(_Model):
    """Brute-force protection: sources with too many failed credentials are refused early."""

    max_failures: int = Field(default=10, ge=1, le=100_000)
    """Failed attempts from one source within `window_s` before it is blocked."""
    window_s: float = Field(default=60.0, gt=0, le=86_400)
    block_s: float = Field(default=300.0, gt=0, le=86_400)
    """How long a blocked source is refused (close 4429 / HTTP 429 with Retry-After)."""
    max_sources: int = Field(default=100_000, ge=100, le=10_000_000)
    """Sources tracked at most; the least recently seen are forgotten first."""
    ipv6_prefix: int = Field(default=64, ge=32, le=128)
    """IPv6 sources are grouped by this prefix (one host usually owns a whole /64)."""


class ListenerLimits(_Model):
    """Request-head limits and slow-client timeouts for one aiohttp listener."""

    header_timeout_s: float = Field(default=15.0, gt=0, le=3600)
    """A connection must deliver a complete request head within this time (slow-loris), and
    an idle keep-alive connection is closed after it."""
    max_line_size: int = Field(default=8190, ge=256, le=65_536)
    """Longest request line (method, path, query)."""
    max_field_size: int = Field(default=8190, ge=256, le=65_536)
    """Longest header (name and value)."""
    max_headers: int = Field(default=64, ge=8, le=1024)
    max_connections_per_source: int = Field(default=0, ge=0)
    """Concurrent requests (a WebSocket session is one) per source address; 0 = no cap. Keep 0
    behind a load balancer that hides client addresses."""
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """A request body (HTTP batch, WebRTC offer) must arrive completely within this time
    (read under `asyncio.timeout` by the handler; aiohttp has no body timeout of its own)."""
    lingering_time_s: float = Field(default=2.0, ge=0, le=60)
    """How long unread request body is drained after an error answer before closing."""


class AtRestSettings(_Model):
    """`[dlq.at_rest]`: keys that seal stored objects (dead letters, air-gapped chunks).

    The keyring is `<key id>:<key>` entries (32-byte keys, hex or base64), first = current,
    from the environment variable `keys_env` (how containers pass secrets) or `keys_file`.
    With neither, a development keyring is created once in `<data_dir>/at-rest.keys` (0600)
    while `generate_dev_key` is on, as the PII engine does for its keys.
    """

    keys_env: str = Field(default="TRACEFLOW_AT_REST_KEYS", pattern=r"^[A-Z_][A-Z0-9_]*$")
    keys_file: Path | None = None
    generate_dev_key: bool = True
    """With no key configured, create `<data_dir>/at-rest.keys` and log `at_rest.key_generated`.
    Production: false, so a missing key stops start-up instead."""
    read_unsealed: bool = False
    """Also read objects without the sealed header (written before encryption at rest) as they
    are. Off: such an object is refused as unreadable. Writes are always sealed."""
