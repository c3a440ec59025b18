"""What the parent and the worker processes send each other (kept light: the parent never
imports Presidio or spaCy; only the workers do)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from runner.policy.model import PiiPolicy
from runner.redact.settings import RedactSettings


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What a worker process needs to build its state (sent once, at spawn)."""

    settings: RedactSettings
    token_key: bytes
    vault_keys: tuple[bytes, ...]
    """The vault's KEK keyring, current first; empty when the vault is off."""
    vault_path: Path | None


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One batch for one session, as the parent sends it."""

    tenant: str
    session_id: str
    policy: PiiPolicy
    fingerprint: str
    retention_days: int
    events: list[Any]


class BatchWire(NamedTuple):
    """One batch as it crosses the pipe to a worker: the events as JSON bytes (serialising and
    parsing JSON is several times cheaper than pickling nested dicts) and the policy as its
    canonical JSON, which the worker parses only for a fingerprint it has not compiled yet."""

    tenant: str
    session_id: str
    fingerprint: str
    policy_json: bytes
    retention_days: int
    events_json: bytes
    events_key: str = ""
    """Set: `events_json` is an object (the ingest frame) and the events are this member."""
    events_count: int = -1
    """With `events_key`: how many events the member must hold (else the batch is refused)."""


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """The redacted batch and its counts."""

    events_json: bytes
    kept: int
    dropped: int
    entities: dict[str, int]
    egress_hits: int
    egress_kinds: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)


class UnencodableBatch(Exception):
    """The redacted events cannot be written as JSON (hostile nesting or numbers)."""
