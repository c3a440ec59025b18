"""The egress check on final bytes, and what the worker does when it fires."""

from __future__ import annotations

import orjson
import pytest

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
