"""Chunking and encoding (sans-IO): ids, limits, the NDJSON of PROTOCOL §2, per-session parts."""

from __future__ import annotations

import base64

import orjson
import pytest

from runner.forward.chunker import (
    Chunk,
    ChunkBuilder,
    MalformedEntry,
    StreamEntry,
    chunk_id_for,
    decode,
    encode,
    encode_raw,
    encode_sessions,
    from_manifest,
)

DAY_MS = 1_764_000_000_000  # 2025-11-24T16:00:00Z


def entry(
    entry_id: str, session: str = "s1", seq: int = 1, n: int = 2, pv: int = 3, t: int = DAY_MS
) -> StreamEntry:
    events = [{"type": 3, "timestamp": t + i, "data": {"source": 1, "i": i}} for i in range(n)]
    return StreamEntry(
        id=entry_id,
        session_id=session,
        project="web",
        seq=seq,
        policy_version=pv,
        count=n,
        received_ms=t,
        events=orjson.dumps(events),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def builder(clock: Clock, max_bytes: int = 1 << 20, max_events: int = 1000) -> ChunkBuilder:
    return ChunkBuilder("acme", max_bytes, max_events, 0.5, clock, lambda: DAY_MS)


def test_chunk_id_depends_only_on_tenant_and_entry_ids() -> None:
    """The same entries give the same id; other entries or another tenant give another."""
    ids = ["1-0", "1-1", "2-0"]
    assert chunk_id_for("acme", ids) == chunk_id_for("acme", list(ids))
    assert chunk_id_for("acme", ids) != chunk_id_for("acme", ids[:2])
    assert chunk_id_for("acme", ids) != chunk_id_for("other", ids)
    assert len(chunk_id_for("acme", ids)) == 32


def test_builder_cuts_by_events_bytes_policy_and_linger() -> None:
    """A chunk closes at its event or byte limit, on a policy change, and when linger runs out."""
    clock = Clock()
    b = builder(clock, max_events=4)
    assert b.add(entry("1-0", n=2)) == []
    sealed = b.add(entry("1-1", n=2))
    assert [c.ids for c in sealed] == [["1-0", "1-1"]]
    assert b.add(entry("2-0", n=1)) == []
    sealed = b.add(entry("2-1", n=1, pv=4))
    assert [(c.ids, c.policy_version) for c in sealed] == [(["2-0"], 3)]
    assert b.time_left() == pytest.approx(0.5)
    clock.now += 0.6
    assert b.due()
    last = b.seal()
    assert last is not None
    assert (last.ids, last.policy_version) == (["2-1"], 4)
    assert b.seal() is None
    small = builder(clock, max_bytes=4096)
    big = entry("3-0", n=200)
    assert [c.ids for c in small.add(big)] == [["3-0"]], "an oversized batch is its own chunk"


def test_encode_writes_protocol_ndjson_in_session_and_seq_order() -> None:
    """Line 1 is the chunk header; then one line per event, sessions grouped, seqs ascending."""
    entries = (entry("5-0", "s2", seq=2), entry("5-1", "s1", seq=7, n=1), entry("5-2", "s2", seq=1))
    chunk = Chunk(
        chunk_id_for("acme", [e.id for e in entries]),
        "acme",
        3,
        "2025-11-24T16:00:00.000+00:00",
        entries,
    )
    header, lines = decode(encode(chunk, "runner-1", 3))
    assert header == {
        "chunk_id": chunk.chunk_id,
        "tenant": "acme",
        "runner_id": "runner-1",
        "created_at": "2025-11-24T16:00:00.000+00:00",
        "policy_version": 3,
        "count": 5,
    }
    assert [(x["session_id"], x["seq"], x["i"]) for x in lines] == [
        ("s1", 7, 0), ("s2", 1, 0), ("s2", 1, 1), ("s2", 2, 0), ("s2", 2, 1),
    ]  # fmt: skip
    assert lines[0]["project"] == "web"
    assert lines[0]["event"] == {"type": 3, "timestamp": DAY_MS, "data": {"source": 1, "i": 0}}


def test_manifest_rebuilds_the_same_chunk() -> None:
    """A chunk rebuilt from its manifest has the same id, entries and header time."""
    entries = (entry("7-0"), entry("7-1", seq=2))
    chunk = Chunk(
        chunk_id_for("acme", ["7-0", "7-1"]), "acme", 3, "2025-01-01T00:00:00.000+00:00", entries
    )
    rebuilt, missing = from_manifest("acme", chunk.manifest(), {e.id: e for e in entries})
    assert missing == []
    assert rebuilt is not None
    assert encode(rebuilt, "r", 3) == encode(chunk, "r", 3)
    partial, missing = from_manifest("acme", chunk.manifest(), {"7-0": entries[0]})
    assert partial is None
    assert missing == ["7-1"]


def test_session_parts_carry_their_own_count_and_day() -> None:
    """Air-gapped parts: one frame per session, header count = that session's events."""
    entries = (entry("9-0", "s1", n=2), entry("9-1", "s2", n=3, t=DAY_MS + 86_400_000))
    chunk = Chunk("c" * 32, "acme", 3, "x", entries)
    parts = {p.session_id: p for p in encode_sessions(chunk, "r", 3)}
    assert parts.keys() == {"s1", "s2"}
    assert (parts["s1"].date, parts["s1"].events) == ("2025-11-24", 2)
    assert parts["s2"].date == "2025-11-25"
    header, lines = decode(parts["s2"].body)
    assert header["count"] == 3
    assert {x["session_id"] for x in lines} == {"s2"}


def test_malformed_events_are_refused_and_kept_raw() -> None:
    """Events that are not a JSON array cannot be encoded; the raw form keeps their bytes."""
    bad = StreamEntry(id="1-0", session_id="s", project="web", seq=1, count=1, events=b"{not json")
    chunk = Chunk("d" * 32, "acme", 0, "x", (bad,))
    with pytest.raises(MalformedEntry):
        encode(chunk, "r", 3)
    _, lines = decode(encode_raw(chunk, "r", 3))
    assert base64.b64decode(lines[0]["raw_events_b64"]) == b"{not json"
    with pytest.raises(MalformedEntry):
        StreamEntry.from_fields("1-1", {b"sid": b"s"})


def test_replay_entries_travel_alone_under_their_original_id() -> None:
    """A re-queued dead letter becomes its own chunk with the dead letter's id and body."""
    b = builder(Clock())
    b.add(entry("1-0"))
    replay = StreamEntry.from_fields(
        "2-0", {b"rp": b"f" * 32, b"pv": b"3", b"n": b"5", b"t": b"1", b"body": b"zz"}
    )
    sealed = b.add(replay)
    assert [c.ids for c in sealed] == [["1-0"], ["2-0"]]
    assert (sealed[1].chunk_id, sealed[1].body, sealed[1].replay_of) == ("f" * 32, b"zz", "f" * 32)
    assert replay.size == 2
