"""Settings of the forwarding path: the `[cloud]`, `[dlq]` and `[forward]` sections of runner.toml.

Every field has a default, so an empty section (or none) is valid; unknown keys
are errors. Secrets never sit in these objects as plain strings that a repr
would print: the cloud token is a `SecretStr`, and S3 credentials and SSE-C
keys are read from environment variables named here, at start-up.

This module imports nothing from the rest of the Runner but the (dependency-free)
security settings, so `runner.config` can import it without a cycle.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from runner.security.settings import AtRestSettings

ENV_NAME = r"^([A-Za-z_][A-Za-z0-9_]{0,127})?$"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _http_url(value: str, what: str) -> str:
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http:// or https:// URL, or empty")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or fragment")
    return value.rstrip("/")


class CloudSettings(_Section):
    """`[cloud]`: where redacted chunks go (PROTOCOL §2) and how hard to try."""

    endpoint: str = ""
    """Base URL of the TRACEFLOW cloud; chunks go to `{endpoint}/v1/chunks`. "" = air-gapped."""
    token: SecretStr = SecretStr("")
    """The Runner's bearer token (prefer `RUNNER_CLOUD_TOKEN` or `token_env`)."""
    token_env: str = Field(default="", pattern=ENV_NAME)
    """Name of an environment variable holding the token; wins over `token` when set."""
    connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    request_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    max_attempts: int = Field(default=12, ge=1, le=10_000)
    """Failed attempts after which a chunk goes to the dead-letter store."""
    max_age_s: float = Field(default=6 * 3600.0, gt=0)
    """Seconds since a chunk's first failure after which it goes to the dead-letter store."""
    backoff_initial_s: float = Field(default=0.5, gt=0, le=3600)
    backoff_max_s: float = Field(default=60.0, gt=0, le=3600)
    retry_after_max_s: float = Field(default=600.0, gt=0)
    """The longest `Retry-After` honoured; longer answers are cut to this."""
    max_in_flight_per_tenant: int = Field(default=4, ge=1, le=256)
    max_connections: int = Field(default=32, ge=1, le=4096)
    keepalive_s: float = Field(default=30.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1, le=10_000)
    """Consecutive failures (connection errors, timeouts, 408, 5xx) that open the circuit."""
    breaker_open_s: float = Field(default=5.0, gt=0)
    """How long the circuit stays open before one probe request; doubles per failed probe."""
    breaker_open_max_s: float = Field(default=60.0, gt=0)
    auth_pause_s: float = Field(default=60.0, gt=0)
    """How long a tenant pauses after a 401/403 before it tries again."""
    client_cert: Path | None = None
    """PEM client certificate for mutual TLS (with `client_key`, or a PEM holding both)."""
    client_key: Path | None = None
    ca_file: Path | None = None
    """PEM bundle of CAs to trust for the cloud instead of the system store."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return _http_url(value, "endpoint")

    @model_validator(mode="after")
    def _consistent(self) -> CloudSettings:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s must not exceed backoff_max_s")
        if self.breaker_open_s > self.breaker_open_max_s:
            raise ValueError("breaker_open_s must not exceed breaker_open_max_s")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        return self

    @property
    def air_gapped(self) -> bool:
        return not self.endpoint

    @property
    def chunks_url(self) -> str:
        return f"{self.endpoint}/v1/chunks"

    def bearer(self, environ: Mapping[str, str]) -> str:
        """The token to send: from `token_env` when that variable is set, else `token`."""
        if self.token_env and environ.get(self.token_env):
            return environ[self.token_env]
        return self.token.get_secret_value()


class DlqSettings(_Section):
    """`[dlq]`: the dead-letter store, which is also the air-gapped mode's local storage."""

    url: str = ""
    """"" = a folder under data_dir; `s3://bucket/prefix` = MinIO or any S3 API."""
    s3_endpoint: str = ""
    """S3 API base URL, e.g. `http://minio:9000`; "" = AWS (`https://s3.amazonaws.com`)."""
    region: str = ""
    access_key_env: str = Field(default="AWS_ACCESS_KEY_ID", pattern=ENV_NAME)
    secret_key_env: str = Field(default="AWS_SECRET_ACCESS_KEY", pattern=ENV_NAME)
    session_token_env: str = Field(default="AWS_SESSION_TOKEN", pattern=ENV_NAME)
    ca_file: Path | None = None
    sse: Literal["none", "s3", "c"] = "none"
    """Server-side encryption: `s3` (SSE-S3, keys held by the server) or `c` (SSE-C)."""
    sse_c_key_env: str = Field(default="TRACEFLOW_DLQ_SSE_C_KEY", pattern=ENV_NAME)
    """Environment variable holding the SSE-C key: 32 bytes, base64. Needs an https endpoint."""
    create_bucket: bool = True
    manage_lifecycle: bool = True
    """Set a bucket lifecycle rule per tenant prefix from the tenant's `retention_days`."""
    timeout_s: float = Field(default=10.0, gt=0, le=600)
    io_workers: int = Field(default=4, ge=1, le=64)
    """Threads that run blocking storage calls (minio, file writes with fsync)."""
    health_interval_s: float = Field(default=5.0, gt=0)
    at_rest: AtRestSettings = AtRestSettings()
    """`[dlq.at_rest]`: the keyring that seals every payload object (client-side AES-256-GCM,
    so neither the folder nor the S3 server ever holds a chunk in the clear)."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError('expected "" (a folder under data_dir) or s3://bucket/prefix')
        if parts.query or parts.fragment:
            raise ValueError("the s3:// URL must not have a query or fragment")
        return value

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return _http_url(value, "s3_endpoint")

    @model_validator(mode="after")
    def _sse_c_needs_tls(self) -> DlqSettings:
        if self.sse == "c" and self.s3_endpoint.startswith("http://"):
            raise ValueError(
                "sse = 'c' sends the key with every request: it needs an https endpoint"
            )
        if self.sse != "none" and not self.url:
            raise ValueError("sse applies to an s3:// dead-letter store only")
        return self

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def prefix(self) -> str:
        """The object name prefix inside the bucket, "" or ending in "/"."""
        path = urlsplit(self.url).path.strip("/")
        return f"{path}/" if path else ""

    def sse_c_key(self, environ: Mapping[str, str]) -> bytes:
        """The 32-byte SSE-C key from the environment; a ValueError names what is wrong."""
        raw = environ.get(self.sse_c_key_env, "")
        if not raw:
            raise ValueError(f"sse = 'c' but ${self.sse_c_key_env} is not set")
        try:
            key = base64.b64decode(raw, validate=True)
        except binascii.Error as e:
            raise ValueError(f"${self.sse_c_key_env} is not base64") from e
        if len(key) != 32:
            raise ValueError(f"${self.sse_c_key_env} must decode to 32 bytes, not {len(key)}")
        return key


class ForwardSettings(_Section):
    """`[forward]`: how stream entries become chunks, and where local chunks are kept."""

    enabled: bool = True
    """False: this Runner only ingests and buffers; another replica (or a later start) forwards."""

    chunk_max_bytes: int = Field(default=1024 * 1024, ge=4096, le=64 * 1024 * 1024)
    """Upper bound of a chunk's NDJSON before compression (one larger batch is its own chunk)."""
    chunk_max_events: int = Field(default=10_000, ge=1, le=1_000_000)
    linger_s: float = Field(default=0.5, ge=0, le=60)
    """How long an open chunk waits for more entries before it is sent."""
    zstd_level: int = Field(default=3, ge=1, le=22)
    compress_workers: int = Field(default=2, ge=1, le=64)
    """Threads that build and compress chunks off the event loop."""
    read_count: int = Field(default=500, ge=1, le=100_000)
    """Stream entries per XREADGROUP."""
    read_block_s: float = Field(default=0.5, gt=0, le=5)
    """How long one XREADGROUP blocks (keep it below the Redis socket timeout)."""
    claim_idle_s: float = Field(default=60.0, ge=1)
    """Pending entries idle this long in another consumer are taken over (XAUTOCLAIM)."""
    claim_interval_s: float = Field(default=15.0, gt=0)
    """How often to take over idle entries and to mark this consumer's own as alive."""
    tenant_scan_s: float = Field(default=1.0, gt=0, le=300)
    trim: Literal["delete", "minid"] = "delete"
    """`delete`: XDEL each entry when it is acknowledged; `minid`: XTRIM MINID to the oldest
    entry still needed (cheaper for Redis memory, one consumer group only)."""
    local_layout: Literal["tenant/date/session", "tenant/date"] = "tenant/date/session"
    """Air-gapped object layout: one object per session and chunk, or one per chunk."""
    retention_interval_s: float = Field(default=3600.0, gt=0)
    """How often retention (from each tenant's `retention_days`) is applied to local storage."""
    drain_deadline_s: float = Field(default=60.0, gt=0, le=86_400)
    """How long a drain forwards the buffer: SIGTERM's drain, and `runner drain` or
    `POST /admin/drain` without a deadline of their own."""
    drain_spill: bool = False
    """A drain (SIGTERM, or `runner drain` without `--spill`/`--no-spill`) moves what the cloud
    has not taken by the deadline to the dead-letter store instead of leaving it in Redis."""
    spill_deadline_s: float = Field(default=60.0, gt=0, le=86_400)
    """How long a spill may take after the drain's forward deadline; the rest stays in Redis."""

    @model_validator(mode="after")
    def _claims(self) -> ForwardSettings:
        if self.claim_interval_s * 2 > self.claim_idle_s:
            raise ValueError("claim_interval_s must be at most half of claim_idle_s")
        return self
