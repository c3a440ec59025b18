"""What the parent and the worker processes send each other (kept light: the parent never
imports Presidio or spaCy; only the workers do)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.policy.model import PiiPolicy
from runner.redact.settings import RedactSettings


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What a worker process needs to build its state (sent once, at spawn)."""

    settings: RedactSettings
    token_key: bytes
    vault_key: bytes | None
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
