"""runner.toml plus `RUNNER_<SECTION>_<KEY>` overrides → one frozen, validated `Config`.

Unknown keys, wrong types and bad values are errors that name the key, so a
typo in runner.toml fails loudly instead of being ignored.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runner.errors import ConfigError
from runner.forward.settings import CloudSettings, DlqSettings, ForwardSettings
from runner.ingest.rtc_settings import WebRtcSettings
from runner.policy.settings import ControlPlaneSettings
from runner.redact.settings import RedactSettings
from runner.security.settings import (
    AdminClientSettings,
    AuthThrottleSettings,
    JwtSettings,
    ListenerLimits,
    TlsSettings,
)

ENV_PREFIX = "RUNNER_"
ENV_NOT_CONFIG = frozenset({"RUNNER_CONFIG"})
DEFAULT_CONFIG_PATH = Path("runner.toml")

HostPort = Annotated[str, Field(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):[0-9]{1,5}$")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RunnerSection(_Section):
    id: str = Field(default="runner-1", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    data_dir: Path = Field(default=Path("./data"), validate_default=True)
    """Relative paths are taken from the working directory at start-up and kept absolute: the
    embedded redis-server changes into its own folder before it binds its socket."""
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.absolute()


class IngestSection(_Section):
    listen: HostPort = "0.0.0.0:8080"
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_events: int = Field(default=1000, ge=1, le=100_000)
    hello_timeout_s: float = Field(default=5.0, gt=0, le=300)
    idle_timeout_s: float = Field(default=120.0, gt=0)
    heartbeat_s: float = Field(default=20.0, gt=0)
    send_timeout_s: float = Field(default=10.0, gt=0)
    max_connections_per_project: int = Field(default=10_000, ge=1)
    max_inflight_per_session: int = Field(default=8, ge=1, le=1024)
    tls: TlsSettings = TlsSettings()
    limits: ListenerLimits = ListenerLimits()
    auth_throttle: AuthThrottleSettings = AuthThrottleSettings()


class AdminSection(_Section):
    listen: HostPort = "127.0.0.1:9090"
    token: str = ""
    token_file: Path | None = None
    tls: TlsSettings = TlsSettings()
    limits: ListenerLimits = ListenerLimits()
    client: AdminClientSettings = AdminClientSettings()

    def resolved_token(self) -> str:
        """The admin token: `token` (or RUNNER_ADMIN_TOKEN), else the first line of token_file."""
        if self.token or self.token_file is None:
            return self.token
        try:
            return self.token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"admin.token_file: cannot read {self.token_file} ({e})") from e


class TelemetrySection(_Section):
    otlp_endpoint: str = ""
    audit_path: Path | None = None

    def resolved_audit_path(self, data_dir: Path) -> Path:
        return self.audit_path or data_dir / "audit.log"


class BufferSection(_Section):
    redis_url: str = "embedded"
    redis_server: str = "redis-server"
    accept_weaker_durability: bool = False
    high_water_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=1)
    tenant_high_water_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)
    retry_after_ms: int = Field(default=2000, ge=1)
    session_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    max_group_batches: int = Field(default=256, ge=1, le=10_000)
    stream_prefix: str = Field(default="tf", pattern=r"^[A-Za-z0-9_.\-]{1,32}$")

    @field_validator("redis_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value == "embedded" or value.startswith(("redis://", "rediss://", "unix://")):
            return value
        raise ValueError('expected "embedded" or a redis://, rediss:// or unix:// URL')


class ProjectConfig(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    tenant: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    api_keys: tuple[str, ...] = ()
    api_key_sha256: tuple[Sha256Hex, ...] = ()
    enabled: bool = True
    jwt: JwtSettings | None = None

    @field_validator("api_keys")
    @classmethod
    def _prefixed(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            if not key.startswith("tf_") or len(key) < 12:
                raise ValueError("API keys start with 'tf_' and are at least 12 characters")
        return keys

    def key_hashes(self) -> frozenset[str]:
        """SHA-256 hex digests of every valid key, plain or pre-hashed."""
        plain = {hashlib.sha256(key.encode()).hexdigest() for key in self.api_keys}
        return frozenset(plain | set(self.api_key_sha256))


class Config(_Section):
    runner: RunnerSection = RunnerSection()
    ingest: IngestSection = IngestSection()
    admin: AdminSection = AdminSection()
    buffer: BufferSection = BufferSection()
    dlq: DlqSettings = DlqSettings()
    cloud: CloudSettings = CloudSettings()
    forward: ForwardSettings = ForwardSettings()
    control_plane: ControlPlaneSettings = ControlPlaneSettings()
    pii: RedactSettings = RedactSettings()
    telemetry: TelemetrySection = TelemetrySection()
    webrtc: WebRtcSettings = WebRtcSettings()
    projects: tuple[ProjectConfig, ...] = ()

    @model_validator(mode="after")
    def _unique_projects(self) -> Config:
        seen: set[str] = set()
        for project in self.projects:
            if project.id in seen:
                raise ValueError(f"project id {project.id!r} is listed twice")
            seen.add(project.id)
        return self

    @property
    def air_gapped(self) -> bool:
        """No cloud endpoint: redacted chunks stay in local storage."""
        return not self.cloud.endpoint


SECTIONS: tuple[str, ...] = tuple(
    sorted((name for name in Config.model_fields if name != "projects"), key=len, reverse=True)
)


def _env_value(raw: str) -> Any:
    """An environment value read as a TOML value when it is one (42, true, [..]), else a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _secret_env_names(data: Mapping[str, Any]) -> set[str]:
    """Variables named by `*_env` settings hold secrets for a part, not config overrides."""
    names = {f.default for s in Config.model_fields.values() for f in _fields(s.annotation)}
    for section in data.values():
        if isinstance(section, dict):
            names |= _configured_env_names(section)
    return names


def _configured_env_names(table: Mapping[str, Any]) -> set[str]:
    """`*_env` values of a table and of the tables inside it (e.g. `[dlq.at_rest] keys_env`)."""
    names = {v for k, v in table.items() if k.endswith("_env") and isinstance(v, str)}
    for value in table.values():
        if isinstance(value, dict):
            names |= _configured_env_names(value)
    return names


def _fields(model: Any) -> list[Any]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [f for name, f in model.model_fields.items() if name.endswith("_env")]


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay `RUNNER_<SECTION>_<KEY>` variables on the file; unknown sections are errors."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    skip = ENV_NOT_CONFIG | _secret_env_names(data)
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in skip:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest == "projects":
            try:
                merged["projects"] = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise ConfigError(f"{name}: expected a JSON array of projects") from e
            continue
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(
                f"{name}: no such configuration section (known: {', '.join(SECTIONS)})"
            )
        key = rest[len(section) + 1 :]
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: expected a table")
        target[key] = _env_value(raw)
    return merged


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
        else:
            lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed runner.toml (plus environment overrides) into a `Config`."""
    merged = apply_env(dict(data), os.environ if environ is None else environ)
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from e


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read runner.toml (or `$RUNNER_CONFIG`) and the environment into one frozen `Config`."""
    env = os.environ if environ is None else environ
    chosen = path or Path(env.get("RUNNER_CONFIG", str(DEFAULT_CONFIG_PATH)))
    try:
        text = chosen.read_text(encoding="utf-8")
    except FileNotFoundError:
        if path is not None or "RUNNER_CONFIG" in env:
            raise ConfigError(f"{chosen}: no such file") from None
        text = ""  # no file at the default place: built-in defaults plus the environment
    except OSError as e:
        raise ConfigError(f"{chosen}: cannot read ({e.strerror})") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{chosen}: not valid TOML ({e})") from e
    return parse_config(data, env)
