"""The `[control_plane]` section of runner.toml: where policies come from and whom to trust.

    [control_plane]
    endpoint = "https://cp.traceflow.example"      # "" = policies/ folder only
    policies_dir = "./policies"
    [control_plane.keys]                            # kid = Ed25519 public key
    "cp-2025-01" = "lU0bJ1Yp4p3u6nHqTzvZ2sQw9cX1f0mYbQe8yR7kP2s"

Every field has a default, so an empty section is valid (policies from the
folder, or the strict built-in default). Pinned keys are parsed when the
configuration is loaded, so a bad key stops start-up instead of silently
refusing every policy later. The control-plane token is never in the file:
only the name of the environment variable that holds it.

This module imports nothing from the rest of the Runner but `runner.policy.keys`,
so `runner.config` can import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runner.policy.errors import PolicyKeyError
from runner.policy.keys import check_kid, load_keys_file, parse_public_key, raw_public

ENV_NAME = r"^([A-Za-z_][A-Za-z0-9_]{0,127})?$"


class ControlPlaneSettings(BaseModel):
    """`[control_plane]`: policy sync (PROTOCOL §3) and the local `policies/` folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str = ""
    """Base URL; the Runner polls `{endpoint}/v1/runners/{runner_id}/policy`. "" = no sync."""
    keys: dict[str, str] = Field(default_factory=dict)
    """Pinned keys, `kid` → Ed25519 public key (base64url raw 32 bytes, or PEM)."""
    keys_file: Path | None = None
    """A JWKS file of more pinned keys (OKP/Ed25519 only), read at start-up."""

    poll_interval_s: float = Field(default=30.0, gt=0, le=86_400)
    """Seconds between polls while the control plane answers."""
    poll_jitter: float = Field(default=0.1, ge=0, le=0.5)
    """Each wait is the interval times a random factor in [1 - jitter, 1 + jitter]."""
    backoff_initial_s: float = Field(default=1.0, gt=0, le=3600)
    """First wait after a failed poll (down, 5xx, refused policy); doubles per failure."""
    backoff_max_s: float = Field(default=300.0, gt=0, le=86_400)
    request_timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_policy_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    """A larger body is refused (`too_large`) before it is parsed."""

    policies_dir: Path = Path("./policies")
    """Readable TOML policy files: `default.toml` plus one `<tenant>.toml` per tenant."""
    watch_interval_s: float = Field(default=2.0, gt=0, le=3600)
    """How often the folder's files are checked for changes (and the policy for expiry)."""
    require_signed_files: bool = False
    """Refuse a policy file that has no valid detached signature (`<file>.jws`)."""

    token_env: str = Field(default="RUNNER_CONTROL_PLANE_TOKEN", pattern=ENV_NAME)
    """Name of the environment variable holding the bearer token for the control plane."""
    ca_file: Path | None = None
    """PEM bundle of CAs to trust for the control plane instead of the system store."""
    client_cert: Path | None = None
    """PEM client certificate for mutual TLS (with `client_key`, or a PEM holding both)."""
    client_key: Path | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("endpoint must be an http:// or https:// URL, or empty")
        if parts.query or parts.fragment:
            raise ValueError("endpoint must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("keys")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        for kid, text in value.items():
            check_kid(kid)
            try:
                parse_public_key(text)
            except ValueError as e:
                raise ValueError(f"key {kid!r}: {e}") from e
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ControlPlaneSettings:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s must not exceed backoff_max_s")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        if not self.keys and self.keys_file is None:
            if self.endpoint:
                raise ValueError("endpoint is set but no keys are pinned (keys or keys_file)")
            if self.require_signed_files:
                raise ValueError("require_signed_files needs pinned keys (keys or keys_file)")
        return self

    @property
    def sync_enabled(self) -> bool:
        return bool(self.endpoint)

    def policy_url(self, runner_id: str) -> str:
        return f"{self.endpoint}/v1/runners/{runner_id}/policy"

    def pinned_keys(self) -> dict[str, Ed25519PublicKey]:
        """Every pinned key by kid: the table, then the JWKS file (blocking read of the file)."""
        pinned = {kid: parse_public_key(text) for kid, text in self.keys.items()}
        if self.keys_file is not None:
            for kid, key in load_keys_file(self.keys_file).items():
                if kid in pinned and raw_public(pinned[kid]) != raw_public(key):
                    raise PolicyKeyError(f"kid {kid!r} is pinned twice with different keys")
                pinned[kid] = key
        return pinned

    def bearer(self, environ: Mapping[str, str]) -> str:
        """The token to send, from the variable named by `token_env` ("" = none)."""
        return environ.get(self.token_env, "") if self.token_env else ""
