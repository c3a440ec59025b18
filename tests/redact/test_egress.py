"""The egress check on final bytes, and what the worker does when it fires."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.redact.egress import luhn_ok, scan, scrub, verhoeff_ok
from tests.redact.conftest import Redact
from tests.redact.support import Dom, egress_only_card


@pytest.mark.parametrize(
    ("data", "kinds"),
    [
        (b'"card 4111 1111 1111 1111"', ["card"]),
        (b'{"n":4111111111111111}', ["card"]),
        (b'"amex 3782 822463 10005"', ["card"]),
        (b'"mail priya@example.com"', ["email"]),
        (b'"id 2345 6789 0124"', ["aadhaar"]),
        (b'"PAN ABCPE1234F"', ["pan"]),
        (b'"4111 1111 1111 1112"', []),
        (b'"logo@2x.png"', []),
        (b'{"timestamp":1700000000000}', []),
        (b'"M10-126-114-165-168-7-10-7-23"', []),
        (b'"<CREDIT_CARD:4111111111111111>"', []),
        (b'"%3CEMAIL_ADDRESS:4111111111111111%3E"', []),
    ],
)
def test_shapes_that_count_and_those_that_do_not(data: bytes, kinds: list[str]) -> None:
    """Valid cards, emails, Aadhaar and PAN shapes are hits; look-alikes and tokens are not."""
    assert [h.kind for h in scan(data)] == kinds


def test_scrub_keeps_json_valid_and_removes_the_hit() -> None:
    """Scrubbing a hit in place leaves valid JSON of the same length with no hit left."""
    data = orjson.dumps(
        {"n": 4111111111111111, "s": "x priya@example.com y", "a": "2345 6789 0124"}
    )
    out = scrub(data, scan(data))
    assert len(out) == len(data)
    assert scan(out) == []
    parsed = orjson.loads(out)
    assert parsed["n"] == 9999999999999999
    assert "@" not in parsed["s"]


def test_checksums() -> None:
    """Luhn and Verhoeff agree with known values."""
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert verhoeff_ok("2363")
    assert not verhoeff_ok("2364")


def test_a_hit_re_redacts_the_batch_with_everything_masked(redact: Redact) -> None:
    """PII that only the egress check sees (a card-shaped number no detector matches) makes
    the whole batch come out masked."""
    card = egress_only_card()
    dom = Dom()
    snap = dom.snapshot(
        dom.el("p", {}, dom.text(f"ref {card}")), dom.el("p", {}, dom.text("hello 42"))
    )
    out, outcome = redact([snap], text="detect")
    assert outcome.egress_hits == 1
    body = out[0]["data"]["node"]["childNodes"][1]["childNodes"][1]
    assert body["childNodes"][0]["childNodes"][0]["textContent"] == "*** " + "*" * 13
    assert body["childNodes"][1]["childNodes"][0]["textContent"] == "***** **"


def test_allowed_values_and_entities_outside_the_policy_are_not_hits() -> None:
    """The check follows the policy: allow-listed values and unlisted entity types pass."""
    data = b'"ops@bank.example and ABCPE1234F"'
    assert scan(data, frozenset({"email", "pan"}), frozenset({"ops@bank.example"})) != []
    assert scan(data, frozenset({"email"}), frozenset({"ops@bank.example"})) == []


def test_a_hit_outside_any_text_slot_is_scrubbed(redact: Redact) -> None:
    """A card inside CSS (never a text slot) is overwritten in place; the JSON stays valid."""
    dom = Dom()
    style = dom.el("style", {}, dom.text(".x::after { content: 'priya@example.com' }"))
    out, outcome = redact([dom.snapshot(head=(style,))])
    assert outcome.egress_hits == 1
    assert "priya@example.com" not in orjson.dumps(out).decode()


_REFERENCE = re.compile(
    rb"(?P<card>(?<![0-9.\-])(?:[2-68][0-9]{12,18}"
    rb"|[2-68][0-9]{3}(?P<sep>[ -])[0-9]{4}(?P=sep)[0-9]{4}(?P=sep)[0-9]{1,7}"
    rb"|3[0-9]{3}[ -][0-9]{6}[ -][0-9]{5})(?![0-9]))"
    rb"|(?P<email>[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*"
    rb"\.(?P<tld>[A-Za-z]{2,24})(?![A-Za-z0-9\-]))"
    rb"|(?P<aadhaar>(?<![0-9.\-])[2-9][0-9]{3}(?P<asep>[ -]?)[0-9]{4}(?P=asep)[0-9]{4}(?![0-9]))"
    rb"|(?P<pan>(?<![A-Za-z0-9])[A-Z]{3}[ABCFGHJLPT][A-Z][0-9]{4}[A-Z](?![A-Za-z0-9]))"
)
"""The definition of every shape, as one regex over the whole buffer: slow (it tries its
lookbehinds at every byte), but with nothing to get wrong about where to look."""


def _reference_hits(data: bytes) -> list[tuple[str, int, int]]:
    out = []
    for m in _REFERENCE.finditer(data):
        kind = next(k for k in ("card", "email", "aadhaar", "pan") if m.group(k) is not None)
        value = m.group(0)
        digits = bytes(c for c in value if 48 <= c <= 57).decode()
        if kind == "card" and not luhn_ok(digits):
            continue
        if kind == "aadhaar" and (digits == digits[::-1] or not verhoeff_ok(digits)):
            continue
        if kind == "email" and m.group("tld").lower() in (b"png", b"css", b"js"):
            continue
        if re.search(rb"<[A-Z_]+[:#][0-9a-f]{16}>|%3C[A-Z_]+(?:%3A|:|#|%23)[0-9a-f]{16}%3E", data):
            continue  # token look-alikes: covered by the parametrised cases above
        out.append((kind, m.start(), m.end()))
    return out


_PIECES = [
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "5555555555554444",
    "3782 822463 10005",
    "2345 6789 0124",
    "234567890124",
    "priya@example.com",
    "x.y-z@a.b.co",
    "ABCPE1234F",
    "1700000000000",
    "99999999999999999999",
]
_NOISE = st.text(alphabet="0123456789 -.@abcXYZ_:<>#", max_size=12)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES) | _NOISE, max_size=8))
def test_scan_finds_everything_the_whole_buffer_definition_finds(parts: list[str]) -> None:
    """The class-view search looks in the right places: every shape the one-regex definition
    finds over the whole buffer is inside a hit (a hit may also be found that the single
    alternation would have hidden behind another shape)."""
    data = "".join(parts).encode()
    hits = scan(data)
    for kind, start, end in _reference_hits(data):
        assert any(h.start <= start and end <= h.end for h in hits), (kind, data)


def test_shapes_are_found_independently_and_past_nineteen_digits() -> None:
    """One shape does not hide another, and a run too long to be a card is not one."""
    digits_local = b'"4111111111111111@example.com"'
    assert [h.kind for h in scan(digits_local, frozenset({"email"}))] == ["email"]
    assert scan(b'"41111111111111111111"') == []
    assert [h.kind for h in scan(b'"ts 1700000000000 card 4111111111111111"')] == ["card"]
    assert [h.kind for h in scan(b'{"a":"ABCPE1234F","b":"ABCPE1234F1"}')] == ["pan"]


def test_the_fallback_masks_allowed_values_and_text_masked_while_walking(redact: Redact) -> None:
    """In mask_all, text is masked while walking (no slot kept) and an allowed value is kept
    as a slot: an egress hit still ends with both masked, and every string is counted."""
    dom = Dom()
    style = dom.el("style", {}, dom.text(".x::after { content: 'priya@example.com' }"))
    body = (
        dom.el("p", {}, dom.text("Welcome")),
        dom.el("p", {"title": "hello there"}, dom.text("plain words")),
    )
    out, outcome = redact([dom.snapshot(*body, head=(style,))], allow_values=("Welcome",))
    assert outcome.egress_hits == 1
    assert outcome.stats["slots"] == 3
    text = orjson.dumps(out).decode()
    assert "Welcome" not in text
    assert "priya@example.com" not in text
    assert "***** *****" in text
    page = [dom.snapshot(dom.el("p", {}, dom.text("Welcome")))]
    clean, quiet = redact(page, allow_values=("Welcome",))
    assert quiet.egress_hits == 0
    assert "Welcome" in orjson.dumps(clean).decode()
