"""Fixtures for policy sync: a signer, a running control plane, managers that stop themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, Protocol

import pytest

from runner.policy.settings import ControlPlaneSettings
from runner.policy.store import PolicyStore
from runner.policy.sync import AuditHook, PolicyManager
from tests.policy.support import CP_TOKEN, CP_TOKEN_ENV, ControlPlane, Signer

RUNNER_ID = "runner-test"


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
async def control_plane() -> AsyncIterator[ControlPlane]:
    cp = ControlPlane()
    await cp.start()
    yield cp
    await cp.stop()


@pytest.fixture
def policies_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    return folder


def settings(
    endpoint: str, signer: Signer | None, folder: Path, **overrides: Any
) -> ControlPlaneSettings:
    """Settings for tests: polls only when asked (long interval), fast folder checks."""
    values: dict[str, Any] = {
        "endpoint": endpoint,
        "keys": signer.pins if signer is not None else {},
        "poll_interval_s": 3600.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "request_timeout_s": 2.0,
        "policies_dir": folder,
        "watch_interval_s": 0.05,
        "token_env": CP_TOKEN_ENV,
    }
    values.update(overrides)
    return ControlPlaneSettings.model_validate(values)


class MakeManager(Protocol):
    def __call__(
        self,
        settings: ControlPlaneSettings,
        *,
        store: PolicyStore | None = None,
        audit: AuditHook | None = None,
        data_dir: Path | None = None,
        start: bool = True,
    ) -> Awaitable[PolicyManager]: ...


@pytest.fixture
async def make_manager(tmp_path: Path) -> AsyncIterator[MakeManager]:
    """Build (and start) PolicyManagers; every one is stopped after the test."""
    made: list[PolicyManager] = []

    async def make(
        settings: ControlPlaneSettings,
        *,
        store: PolicyStore | None = None,
        audit: AuditHook | None = None,
        data_dir: Path | None = None,
        start: bool = True,
    ) -> PolicyManager:
        manager = PolicyManager(
            settings,
            data_dir or tmp_path / "data",
            store or PolicyStore(),
            runner_id=RUNNER_ID,
            audit=audit,
            environ={CP_TOKEN_ENV: CP_TOKEN},
        )
        made.append(manager)
        if start:
            await manager.start()
        return manager

    yield make
    for manager in made:
        await manager.stop()
