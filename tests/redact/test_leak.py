"""The leak suite: real recordings plus generated PII in every text slot; nothing gets out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from runner.policy.model import PiiPolicy
from runner.redact.messages import BatchRequest
from runner.redact.rules import fingerprint
from runner.redact.worker import WorkerState
from tests.redact.conftest import corpus_files
from tests.redact.leakgen import STRUCTURAL_SLOTS, Planted, leaked, plant, recall_table

CHECKSUM_ENTITIES = frozenset({"EMAIL_ADDRESS", "IN_PAN", "IN_AADHAAR", "CREDIT_CARD", "IBAN_CODE"})
"""Entities with a checksum or unambiguous shape: detect mode must not leak them either."""
RECALL_FLOOR = {
    "EMAIL_ADDRESS": 1.0,
    "IN_PAN": 1.0,
    "IN_AADHAAR": 1.0,
    "IBAN_CODE": 1.0,
    "IN_MOBILE": 0.99,
    "CREDIT_CARD": 0.95,
}
"""Detect-mode recall below which the suite fails (measured without the egress check)."""


def _run(
    state: WorkerState, events: list[Any], pii: PiiPolicy, session: str, *, egress: bool = True
) -> bytes:
    req = BatchRequest("acme", session, pii, fingerprint(pii), 30, events)
    outcome = state.redact(req) if egress else state.detection_only(req)
    return outcome.events_json


def _streams(
    corpus: Path, seeds: range, every: int = 1
) -> list[tuple[str, list[Any], list[Planted]]]:
    streams = []
    paths = [p for p in sorted(corpus.glob("*.json")) if not p.name.startswith("_")]
    for seed in seeds:
        for i, path in enumerate(paths):
            if i % every:
                continue
            events, planted = plant(orjson.loads(path.read_bytes()), seed * 1000 + i)
            streams.append((f"{seed}-{path.stem[:40]}", events, planted))
    return streams


def _mask_all_leaks_nothing(state: WorkerState, corpus: Path, seeds: range) -> None:
    pii = PiiPolicy()
    for session, events, planted in _streams(corpus, seeds):
        out = _run(state, events, pii, session)
        assert leaked(out, planted) == [], session


def test_mask_all_leaks_nothing(state: WorkerState, corpus_dir: Path) -> None:
    """In the default mask_all mode no planted value of any type, in any slot, comes out."""
    _mask_all_leaks_nothing(state, corpus_dir, range(1))


def test_mask_all_leaks_nothing_more_seeds(state: WorkerState, corpus_dir: Path) -> None:
    """The same with four more sets of generated values."""
    _mask_all_leaks_nothing(state, corpus_dir, range(1, 5))


def _detect_mode(
    state: WorkerState, corpus: Path, seeds: range, every: int
) -> dict[str, tuple[int, int]]:
    pii = PiiPolicy(text="detect")
    all_planted: list[Planted] = []
    all_leaks: list[Planted] = []
    for session, events, planted in _streams(corpus, seeds, every):
        out = _run(state, events, pii, session)
        leaks = leaked(out, planted)
        bad = [p for p in leaks if p.entity in CHECKSUM_ENTITIES or p.slot in STRUCTURAL_SLOTS]
        assert bad == [], (session, [(p.entity, p.slot) for p in bad])
        measured = _run(state, events, pii, session + "-m", egress=False)
        all_planted += planted
        all_leaks += leaked(measured, planted)
    return recall_table(all_planted, all_leaks)


def _report(table: dict[str, tuple[int, int]]) -> None:
    print("\ndetect-mode recall (detection layer, egress check off):")
    for entity, (found, total) in sorted(table.items()):
        print(f"  {entity:16} {found:5}/{total:<5} {found / total:7.1%}")


def test_detect_mode_leaks_no_checksum_entity_and_no_structural_slot(
    state: WorkerState, corpus_dir: Path
) -> None:
    """In detect mode, cards, emails, PAN, Aadhaar and IBANs never leak, nor does anything in
    inputs, deny-key or field-named slots; recall per entity is reported and has floors.
    (Every fourth stream here; all of them in the slow run.)"""
    table = _detect_mode(state, corpus_dir, range(1), every=4)
    _report(table)
    for entity, floor in RECALL_FLOOR.items():
        found, total = table[entity]
        assert found / total >= floor, (entity, found, total)


def test_detect_mode_more_seeds(state: WorkerState, corpus_dir: Path) -> None:
    """The same over every stream with four more sets of generated values."""
    _report(_detect_mode(state, corpus_dir, range(1, 5), every=1))


def test_every_slot_kind_is_planted(corpus_dir: Path) -> None:
    """The generator covers every slot of PROTOCOL §1 for every entity type."""
    files = corpus_files()
    _, planted = plant(orjson.loads(files[0].read_bytes()), 1)
    slots = {p.slot for p in planted}
    assert len(slots) == 22
    assert len(planted) == 22 * 9
