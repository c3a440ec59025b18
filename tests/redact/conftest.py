"""Fixtures for the PII engine: one detection engine per test run, in-process worker states."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.policy.model import PiiPolicy
from runner.redact.engine import DetectionEngine, build_engine
from runner.redact.messages import BatchOutcome, BatchRequest
from runner.redact.rules import CompiledPolicy, compile_policy
from runner.redact.settings import RedactSettings
from runner.redact.tokens import Tokenizer, TokenKeys
from runner.redact.vault import SqliteVault
from runner.redact.worker import WorkerState

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus" / "rrweb"
TOKEN_KEY = bytes(range(32))
VAULT_KEY = bytes(range(32, 64))


def corpus_files() -> list[Path]:
    """The recorded rrweb streams (empty when the corpus is absent)."""
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.glob("*.json") if not p.name.startswith("_"))


@pytest.fixture
def corpus_dir() -> Path:
    """../shared/corpus/rrweb from the repo root, or a skip saying it is absent."""
    if not CORPUS.is_dir():
        pytest.skip(f"rrweb corpus not found at {CORPUS} (it lives in ../shared next to the repo)")
    return CORPUS


@pytest.fixture(scope="session")
def engine() -> DetectionEngine:
    """The pattern-only detection engine, built once (it is pure CPU and keeps only caches)."""
    return build_engine(RedactSettings())


def policy(**fields: Any) -> PiiPolicy:
    """A PII policy with the given fields (the rest are the strict defaults)."""
    return PiiPolicy(**fields)


@pytest.fixture
def compiled(engine: DetectionEngine) -> Callable[..., CompiledPolicy]:
    """Compile a policy built from keyword fields."""

    def make(**fields: Any) -> CompiledPolicy:
        return compile_policy(policy(**fields), engine.supported)

    return make


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[SqliteVault]:
    """An open vault file in a temp dir."""
    v = SqliteVault(tmp_path / "vault.sqlite3", VAULT_KEY)
    v.open()
    yield v
    v.close()


@pytest.fixture
def state(engine: DetectionEngine, vault: SqliteVault) -> WorkerState:
    """A worker's state in this process, with a real vault."""
    return WorkerState(RedactSettings(), engine, Tokenizer(TokenKeys(TOKEN_KEY)), vault)


Redact = Callable[..., tuple[list[Any], BatchOutcome]]


@pytest.fixture
def redact(state: WorkerState) -> Redact:
    """Redact events in-process: returns (parsed output events, outcome)."""

    def run(
        events: list[Any],
        pii: PiiPolicy | None = None,
        session: str = "s1",
        tenant: str = "acme",
        **fields: Any,
    ) -> tuple[list[Any], BatchOutcome]:
        chosen = pii or policy(**fields)
        from runner.redact.rules import fingerprint

        outcome = state.redact(
            BatchRequest(
                tenant, session, chosen, fingerprint(chosen), 30, orjson.loads(orjson.dumps(events))
            )
        )
        return orjson.loads(outcome.events_json), outcome

    return run


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key variables from the developer's shell leak into key-loading tests."""
    for name in list(os.environ):
        if name.startswith(("RUNNER_", "TRACEFLOW_PII_")):
            monkeypatch.delenv(name)
