"""How a batch reaches a worker: JSON bytes on an event-loop-driven pipe, same result."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from typing import Any

import orjson
import pytest

from runner.policy.model import PiiPolicy
from runner.redact.channel import Channel
from runner.redact.messages import BatchRequest, BatchWire, UnencodableBatch
from runner.redact.rules import canonical, fingerprint
from runner.redact.worker import WorkerState
from tests.redact.leakgen import leaked, plant
from tests.redact.support import Dom, input_event


def test_a_batch_as_json_bytes_redacts_exactly_like_the_parsed_batch(state: WorkerState) -> None:
    """BatchWire (events and policy as JSON) gives the same bytes and counts as BatchRequest,
    across batches of one session (the DOM mirror carries over either way)."""
    dom = Dom()
    pwd = dom.el("input", {"type": "password", "name": "pin"})
    note = dom.el("input", {"type": "text", "name": "fullName"})
    events, planted = plant([dom.snapshot(pwd, note)], seed=11)
    later = [input_event(pwd["id"], "hunter2"), input_event(note["id"], "Ravi Kumar")]
    for pii in (PiiPolicy(), PiiPolicy(text="detect", mask_all_inputs=False)):
        raw = canonical(pii)
        fp = fingerprint(pii, raw)
        assert fp == fingerprint(pii)
        for batch in (events, later):
            blob = orjson.dumps(batch)
            parsed = state.redact(BatchRequest("acme", "p", pii, fp, 30, orjson.loads(blob)))
            wired = state.redact(BatchWire("acme", "w", fp, raw, 30, blob))
            assert wired.events_json == parsed.events_json
            assert (wired.kept, wired.entities, wired.egress_hits) == (
                parsed.kept,
                parsed.entities,
                parsed.egress_hits,
            )
            if pii.text == "mask_all":
                assert leaked(wired.events_json, planted) == []


def test_the_ingest_frame_can_be_sent_as_it_came(state: WorkerState) -> None:
    """A batch sent as the frame it was parsed from gives the same result; a frame that does
    not hold the events it was sent for (count, shape, JSON) is refused, not redacted."""
    events, _ = plant([], seed=5)
    pii = PiiPolicy(text="detect")
    raw = canonical(pii)
    fp = fingerprint(pii, raw)
    frame_json = orjson.dumps({"type": "batch", "seq": 7, "events": events})
    parsed = state.redact(
        BatchRequest("acme", "p", pii, fp, 30, orjson.loads(orjson.dumps(events)))
    )
    framed = state.redact(BatchWire("acme", "f", fp, raw, 30, frame_json, "events", len(events)))
    assert framed.events_json == parsed.events_json
    bad = [
        BatchWire("acme", "f", fp, raw, 30, frame_json, "events", len(events) - 1),
        BatchWire("acme", "f", fp, raw, 30, b"[]", "events", 0),
        BatchWire("acme", "f", fp, raw, 30, b"{not json", "events", 0),
        BatchWire("acme", "f", fp, raw, 30, b'{"events": {}}', "events", 0),
    ]
    for wire in bad:
        with pytest.raises(UnencodableBatch):
            state.redact(wire)


def test_the_policy_json_is_compiled_once_per_fingerprint(state: WorkerState) -> None:
    """A worker parses a policy's JSON only for a fingerprint it has not compiled yet."""
    pii = PiiPolicy(text="detect", allow_values=("Home",))
    raw = canonical(pii)
    fp = fingerprint(pii, raw)
    first = state.compiled(raw, fp)
    assert state.compiled(b"not even json", fp) is first
    assert first.detect
    assert first.allow_values == frozenset({"Home"})


def _echo(conn: Any) -> None:
    """The worker's side: a plain blocking Connection that answers every message."""
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            conn.close()
            return
        conn.send(("echo", message))


async def test_the_channel_speaks_the_connection_framing_both_ways() -> None:
    """Small and large messages (bigger than the socket buffer: partial writes) go out in
    order and come back whole; the other end closing is reported once."""
    loop = asyncio.get_running_loop()
    parent, child = multiprocessing.Pipe(duplex=True)
    peer = threading.Thread(target=_echo, args=(child,), daemon=True)
    peer.start()
    sent = [("small", 1), ("big", b"x" * 3_000_000), ("after", list(range(1000)))]
    received: list[Any] = []
    all_back = asyncio.Event()
    closed = asyncio.Event()

    def on_message(message: Any) -> None:
        received.append(message)
        if len(received) == len(sent):
            all_back.set()

    channel = Channel(parent, loop, on_message, closed.set)
    for message in sent:
        channel.send(message)
    await asyncio.wait_for(all_back.wait(), 10)
    assert received == [("echo", m) for m in sent]
    channel.send(None)
    await asyncio.wait_for(closed.wait(), 5)
    assert channel.closed
    channel.send(("ignored", 0))
    channel.close()
    peer.join(5)
