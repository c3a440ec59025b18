"""Tokens, hashes, masks and labels (the actions of PROTOCOL §3), and span merging."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from runner.redact.tokens import (
    TOKEN_RE,
    Tokenizer,
    TokenKeys,
    label,
    mask,
    merge_spans,
    normalise,
    splice,
)

KEY = bytes(range(32))


def test_same_value_same_token_within_a_tenant() -> None:
    """Tokens are deterministic per tenant and differ across tenants."""
    tok = Tokenizer(TokenKeys(KEY))
    a = tok.token("acme", "EMAIL_ADDRESS", "priya@example.com")
    assert a == tok.token("acme", "EMAIL_ADDRESS", "priya@example.com")
    assert a != tok.token("globex", "EMAIL_ADDRESS", "priya@example.com")
    assert TOKEN_RE.fullmatch(a) is not None
    assert a.startswith("<EMAIL_ADDRESS:")


def test_normalisation_joins_spellings_of_one_value() -> None:
    """Case of emails, separators of cards and the +91 of mobiles do not change the token."""
    tok = Tokenizer(TokenKeys(KEY))
    assert tok.token("t", "EMAIL_ADDRESS", "Priya@Example.COM ") == tok.token(
        "t", "EMAIL_ADDRESS", "priya@example.com"
    )
    assert tok.token("t", "CREDIT_CARD", "4111-1111-1111-1111") == tok.token(
        "t", "CREDIT_CARD", "4111111111111111"
    )
    assert tok.token("t", "IN_MOBILE", "+91 98765 43210") == tok.token(
        "t", "IN_MOBILE", "09876543210"
    )
    assert normalise("IN_PAN", "abcpe 1234f") == "ABCPE1234F"


def test_entity_type_is_part_of_the_token() -> None:
    """The same digits as two entity types give two tokens."""
    tok = Tokenizer(TokenKeys(KEY))
    assert tok.token("t", "BANK_ACCOUNT", "123456789") != tok.token("t", "US_SSN", "123456789")


def test_hash_is_not_the_token() -> None:
    """A hash uses a separate key: it cannot be looked up in the vault as a token."""
    tok = Tokenizer(TokenKeys(KEY))
    token = tok.token("t", "EMAIL_ADDRESS", "a@b.co")
    hashed = tok.hash("t", "EMAIL_ADDRESS", "a@b.co")
    assert hashed.startswith("<EMAIL_ADDRESS#")
    assert hashed[-17:-1] != token[-17:-1]


def test_mask_and_label() -> None:
    """mask keeps length and whitespace; redact leaves the entity type only."""
    assert mask("+91 98765 43210") == "*** ***** *****"
    assert mask("😀a") == "***"
    assert label("IN_PAN") == "<IN_PAN>"


def test_overlapping_findings_merge_to_their_union() -> None:
    """Overlaps become one span typed by the strongest finding; neighbours stay apart."""
    merged = merge_spans(
        [(4, 19, "IN_MOBILE", 0.7), (0, 19, "PHONE_NUMBER", 0.6), (25, 30, "X", 0.5)]
    )
    assert merged == [(0, 19, "IN_MOBILE"), (25, 30, "X")]
    assert splice("abcdefgh", [(0, 2, "X"), (5, 6, "")]) == "Xcdegh"


def test_master_key_must_be_long_enough() -> None:
    """A short master key is refused."""
    try:
        TokenKeys(b"short")
    except ValueError:
        return
    raise AssertionError("short key accepted")


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_mask_is_the_regex_mask(text: str) -> None:
    """ASCII text is masked with a translation table: the same as masking with `\\S`."""
    assert mask(text) == re.sub(r"\S", "*", text)
    assert mask("".join(map(chr, range(128)))) == re.sub(r"\S", "*", "".join(map(chr, range(128))))
