"""The `[pii]` section of runner.toml: how the PII engine runs (not what it redacts).

What to redact is the tenant's policy (PROTOCOL §3 `pii`); these settings are the
operator's: worker processes, the optional NER model, where keys come from, and
the bounds that keep hostile input from stalling a worker. Keys themselves are
never read from runner.toml: only the path of a key file or the *name* of an
environment variable that holds one.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class RedactSettings(BaseModel):
    """Every field has a default, so an empty `[pii]` section is a working setup."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: int = Field(default=0, ge=0, le=64)
    """Worker processes; 0 means one per CPU core."""
    max_pending_per_worker: int = Field(default=8, ge=1, le=1024)
    """Batches queued or running per worker; more wait up to `queue_timeout_s`."""
    queue_timeout_s: float = Field(default=2.0, gt=0, le=300)
    """How long a batch waits for a worker slot before a retriable error (SDK retries)."""
    batch_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """A batch running longer than this kills and restarts its worker (retriable error)."""
    start_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    """Worker start-up (imports, optional NER model load) must finish within this."""

    ner_model: str | None = None
    """An installed spaCy pipeline (package name or directory) that adds PERSON/LOCATION."""
    regex_timeout_s: float = Field(default=0.25, gt=0, le=60)
    """Per-pattern regex budget; a string whose analysis times out is masked whole."""
    cache_size: int = Field(default=50_000, ge=0, le=10_000_000)
    """Analysis results kept per worker for repeated strings (0 disables the cache)."""
    join_strings: int = Field(default=64, ge=1, le=4096)
    """Short strings analysed together in one Presidio call."""
    join_chars: int = Field(default=8192, ge=256, le=1_048_576)
    """Upper bound on the characters of one joined Presidio call."""
    max_string_bytes: int = Field(default=32_768, ge=256, le=16 * 1024 * 1024)
    """Longer strings are not analysed: they are masked whole (fail closed)."""
    max_body_bytes: int = Field(default=65_536, ge=0, le=64 * 1024 * 1024)
    """Network bodies above this are replaced by a size note before analysis."""

    mirror_session_nodes: int = Field(default=100_000, ge=100, le=10_000_000)
    """DOM mirror nodes kept per session; past it the mirror restarts (unknown = sensitive)."""
    mirror_worker_nodes: int = Field(default=2_000_000, ge=1000, le=100_000_000)
    """DOM mirror nodes kept per worker across sessions; least recently used go first."""

    vault_enabled: bool = True
    """Store token → AES-256-GCM(original) locally so `runner detokenize` can reverse tokens."""
    vault_path: Path | None = None
    """SQLite vault file; default `<data_dir>/pii/vault.sqlite3`."""
    vault_key_file: Path | None = None
    """File holding the 32-byte key-encryption key (raw, hex or base64)."""
    vault_key_env: str = Field(default="TRACEFLOW_PII_VAULT_KEY", pattern=ENV_NAME_PATTERN)
    """Name of the environment variable holding the key-encryption key (wins over the file).
    Not `RUNNER_PII_…`: those names are configuration overrides of `[pii]` keys."""
    token_key_file: Path | None = None
    """File holding the 32-byte HMAC master key for tokens (per-tenant keys via HKDF)."""
    token_key_env: str = Field(default="TRACEFLOW_PII_TOKEN_KEY", pattern=ENV_NAME_PATTERN)
    """Name of the environment variable holding the token master key (wins over the file)."""
    generate_dev_keys: bool = True
    """With no key configured, create one under `<data_dir>/pii/` (0600) and log that it did."""
    vault_purge_interval_s: float = Field(default=3600.0, gt=0)
    """How often expired vault entries (past the tenant's retention) are deleted."""

    @field_validator("ner_model")
    @classmethod
    def _non_empty_model(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value

    def worker_count(self, cpu_count: int | None) -> int:
        """The number of worker processes to run on a machine with `cpu_count` cores."""
        return self.workers or max(1, cpu_count or 1)

    def resolved_vault_path(self, data_dir: Path) -> Path:
        """Where the vault lives."""
        return self.vault_path or data_dir / "pii" / "vault.sqlite3"
