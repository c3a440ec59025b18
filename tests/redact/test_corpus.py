"""Every real rrweb recording redacts without error and stays replayable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.policy.model import PiiPolicy
from runner.redact.messages import BatchRequest
from runner.redact.rules import fingerprint
from runner.redact.worker import WorkerState
from tests.redact.conftest import corpus_files
from tests.redact.support import event_kinds, node_ids, shape, text_lengths

FILES = corpus_files()


def _redact(state: WorkerState, path: Path, pii: PiiPolicy) -> tuple[list[Any], list[Any]]:
    events = orjson.loads(path.read_bytes())
    req = BatchRequest(
        "acme",
        f"{pii.text}-{path.stem}",
        pii,
        fingerprint(pii),
        30,
        orjson.loads(path.read_bytes()),
    )
    return events, orjson.loads(state.redact(req).events_json)


@pytest.mark.parametrize("index", range(len(FILES)) if FILES else [0])
@pytest.mark.parametrize("mode", ["mask_all", "detect"])
def test_recording_keeps_events_types_node_ids_and_shape(
    state: WorkerState, corpus_dir: Path, index: int, mode: str
) -> None:
    """Same event count, types, node ids and JSON structure after redaction, in both modes."""
    path = FILES[index]
    before, after = _redact(state, path, PiiPolicy(text=mode))  # type: ignore[arg-type]
    assert len(after) == len(before)
    assert event_kinds(after) == event_kinds(before)
    assert node_ids(after) == node_ids(before)
    assert shape(after) == shape(before)


def test_masked_text_keeps_its_length(state: WorkerState, corpus_dir: Path) -> None:
    """In mask_all mode every DOM text node keeps its length, so replays keep their layout."""
    for path in FILES:
        before, after = _redact(state, path, PiiPolicy())
        assert text_lengths(after) == text_lengths(before), path.name
