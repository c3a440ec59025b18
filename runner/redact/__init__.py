"""TEMPORARY STAND-IN written by the lead so ingest can be tested; helper-1 replaces this file
entirely with the real engine (same API). Masks every string value in every event."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from runner.policy.model import TenantPolicy
from runner.redact.settings import RedactSettings


@dataclass(frozen=True, slots=True)
class RedactRequest:
    tenant: str
    project: str
    session_id: str
    policy: TenantPolicy
    events: list[Any]


@dataclass(frozen=True, slots=True)
class RedactResult:
    events_json: bytes
    kept: int
    dropped: int
    entities: dict[str, int]
    egress_hits: int


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return "*" * len(value)
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, dict):
        return {
            k: v if k in ("type", "id", "source", "timestamp") else _mask(v)
            for k, v in value.items()
        }
    return value


class Redactor:
    def __init__(self, settings: RedactSettings, data_dir: Path) -> None:
        self._settings = settings

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def redact(self, req: RedactRequest) -> RedactResult:
        events = [_mask(e) for e in req.events]
        return RedactResult(orjson.dumps(events), len(events), 0, {}, 0)

    def end_session(self, tenant: str, session_id: str) -> None:
        return None
