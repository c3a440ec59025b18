"""PROTOCOL §1 data-channel framing: `frag` messages, cut and joined (pure code)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.errors import ProtocolError
from runner.ingest.rtc_frames import Defragmenter, fragment, parse_frag


def join(pieces: list[bytes], max_bytes: int = 1 << 24) -> bytes | None:
    defrag = Defragmenter(max_bytes)
    out = None
    for piece in pieces:
        frag = parse_frag(piece)
        assert frag is not None
        out = defrag.feed(frag)
    return out


def feed_all(defrag: Defragmenter, frags: list[dict[str, Any]]) -> None:
    for frag in frags:
        defrag.feed(frag)


@given(data=st.binary(min_size=0, max_size=5000), limit=st.integers(min_value=96, max_value=700))
def test_fragments_fit_the_limit_and_join_back(data: bytes, limit: int) -> None:
    """Every piece fits the limit; the pieces join back to the message, byte for byte."""
    pieces = fragment(data, limit)
    assert all(len(p) <= limit for p in pieces)
    if len(data) <= limit:
        assert pieces == [data]
    else:
        assert join(pieces) == data


def test_b64_slices_can_also_be_joined_before_decoding() -> None:
    """Slices are cut at multiples of 3 bytes, so joining the b64 strings first works too."""
    data = bytes(range(256)) * 40
    pieces = [orjson.loads(p) for p in fragment(data, 500, "m1")]
    assert [p["i"] for p in pieces] == list(range(len(pieces)))
    assert {p["n"] for p in pieces} == {len(pieces)}
    assert base64.b64decode("".join(p["b64"] for p in pieces)) == data


def test_a_message_that_outgrows_the_cap_is_refused_before_it_is_whole() -> None:
    """Joining stops with 4413 as soon as the fragments exceed max_bytes."""
    frags = [parse_frag(piece) or {} for piece in fragment(b"x" * 10_000, 1000)]
    defrag = Defragmenter(4000)
    with pytest.raises(ProtocolError) as refused:
        feed_all(defrag, frags)
    assert refused.value.close_code == 4413
    assert defrag.pending_bytes == 0, "the partial message is dropped"
    assert defrag.pending_bytes <= 4000 + 1000


@pytest.mark.parametrize(
    "frags",
    [
        [{"id": "a", "i": 1, "n": 2, "b64": "eHg="}],
        [{"id": "a", "i": 0, "n": 3, "b64": "eHg="}, {"id": "b", "i": 1, "n": 3, "b64": "eHg="}],
        [{"id": "a", "i": 0, "n": 3, "b64": "eHg="}, {"id": "a", "i": 2, "n": 3, "b64": "eHg="}],
        [{"id": "a", "i": 0, "n": 2, "b64": "eHg="}, {"id": "a", "i": 1, "n": 3, "b64": "eHg="}],
        [{"id": "a", "i": 0, "n": 2, "b64": "not base64!"}],
        [{"id": "", "i": 0, "n": 2, "b64": "eHg="}],
        [{"id": "a", "i": True, "n": 2, "b64": "eHg="}],
        [{"id": "a", "i": 2, "n": 2, "b64": "eHg="}],
    ],
)
def test_malformed_fragments_are_refused(frags: list[dict[str, object]]) -> None:
    """Out of order, another id, a changed n, bad base64 or bad fields: close 4400."""
    defrag = Defragmenter(1 << 20)
    with pytest.raises(ProtocolError) as refused:
        feed_all(defrag, [{"type": "frag", **frag} for frag in frags])
    assert refused.value.close_code == 4400


def test_only_frag_messages_are_parsed_as_fragments() -> None:
    """A batch whose text mentions "frag" is not a fragment."""
    assert parse_frag(b'{"type":"batch","seq":1,"events":[{"t":"frag"}]}') is None
    with pytest.raises(ProtocolError):
        parse_frag(b'{"type":"frag", broken')
