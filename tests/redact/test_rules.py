"""The compiled policy: deny keys, block selectors, field names, DOM mirror bounds."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from runner.redact.dom import DomWalker
from runner.redact.mirror import Element, MirrorStore, SessionMirror
from runner.redact.payloads import Collector
from runner.redact.rules import (
    CompiledPolicy,
    autocomplete_entity,
    field_entity,
    key_context,
    parse_selector,
)


@pytest.mark.parametrize(
    ("key", "denied"),
    [
        ("password", True),
        ("userPassword", True),
        ("new-password2", True),
        ("x-auth-token", True),
        ("card_number", True),
        ("cardNumber", True),
        ("aadhaarNo", True),
        ("Set-Cookie", True),
        ("pin", True),
        ("pincode", False),
        ("company", False),
        ("span", False),
        ("amount", False),
    ],
)
def test_deny_keys_match_words_not_substrings_of_short_keys(
    compiled: Callable[..., CompiledPolicy], key: str, denied: bool
) -> None:
    """Deny keys match whole words or joined words; long ones also inside a longer key."""
    assert compiled().is_denied(key) is denied


def test_selectors() -> None:
    """Tags, ids, classes and attribute tests match; descendant selectors match their last part."""
    attrs = {"class": "a sensitive-data", "id": "acct", "data-pii": "yes", "type": "text"}
    for sel, hit in [
        (".sensitive-data", True),
        ("div.sensitive-data", True),
        ("span.sensitive-data", False),
        ("#acct", True),
        ("[data-pii]", True),
        ("[data-pii=no]", False),
        ("[type^=te]", True),
        ("form .sensitive-data", True),
        ("div:not(.x)", True),
    ]:
        compound = parse_selector(sel)
        assert compound is not None, sel
        assert compound.matches("div", attrs) is hit, sel
    assert parse_selector(">>>") is None


def test_bad_selectors_are_counted(compiled: Callable[..., CompiledPolicy]) -> None:
    """Selectors that cannot be parsed are counted so the Runner can warn about them."""
    policy = compiled(block_selectors=(".ok", "[[", ""))
    assert policy.bad_selectors == 1
    assert len(policy.block) == 1


def test_field_names_and_autocomplete() -> None:
    """Field and key names say which entity a value is; card autocomplete is secret."""
    assert field_entity("firstName") == "PERSON"
    assert field_entity("customer_name") == "PERSON"
    assert field_entity("fileName") is None
    assert field_entity("mobileNo") == "PHONE_NUMBER"
    assert field_entity("email") == "EMAIL_ADDRESS"
    assert field_entity("ifsc_code") == "IN_IFSC"
    assert autocomplete_entity("section-a shipping street-address") == ("LOCATION", False)
    assert autocomplete_entity("cc-number") == ("CREDIT_CARD", True)
    assert autocomplete_entity("one-time-code") == (None, True)
    assert key_context("aadhaarNumber") == "aadhaar number"


def _el(parent: int, blocked: bool = False) -> Element:
    return Element(parent, "div", "", "", "", "", "", (), blocked, False)


def test_mirror_flags_follow_ancestors() -> None:
    """A node under a blocked element is blocked; unknown nodes are reported unknown."""
    m = SessionMirror(100)
    m.add_element(1, _el(-1))
    m.add_element(2, _el(1, blocked=True))
    m.add_element(3, _el(2))
    m.add_text(4, 3)
    assert m.flags(4).blocked
    assert m.flags(4).known
    assert not m.flags(1).blocked
    assert not m.flags(99).known


def test_mirror_is_bounded_per_session_and_per_worker() -> None:
    """A session over its cap starts over; the worker budget evicts least recently used sessions."""
    m = SessionMirror(10)
    for i in range(25):
        m.add_text(i, 0)
    assert m.size <= 10
    assert m.overflows == 2
    store = MirrorStore(session_nodes=1000, worker_nodes=1500)
    for s in ("a", "b", "c"):
        mirror = store.get("t", s)
        for i in range(600):
            mirror.add_text(i, 0)
    assert store.trim() == 1
    assert store.sessions == 2
    assert store.nodes <= 1500
    assert store.drop("t", "c")
    assert not store.drop("t", "a")


def test_the_worker_node_total_is_kept_up_to_date_by_each_batch() -> None:
    """Trimming with the batch's mirror (no recount over every session) keeps the same total as
    a recount, through growth, resets, session drops and evictions, and holds the budget."""
    rng = random.Random(3)  # noqa: S311 - reproducible test data
    store = MirrorStore(session_nodes=50, worker_nodes=120)
    for _ in range(400):
        mirror = store.get("t", f"s{rng.randint(0, 6)}")
        before = mirror.size
        for _ in range(rng.randint(0, 30)):
            node = rng.randint(0, 80)
            if rng.random() < 0.5:
                mirror.add_text(node, 0)
            else:
                mirror.add_element(node, _el(0))
        if rng.random() < 0.1:
            mirror.remove(rng.randint(0, 80))
        if rng.random() < 0.05:
            mirror.reset()
        store.trim(mirror, before)
        assert store.nodes <= 120 or store.sessions == 1
        if rng.random() < 0.05:
            store.drop("t", f"s{rng.randint(0, 6)}")
        total = store.nodes
        assert store.trim() == 0
        assert store.nodes == total


def test_the_plain_element_path_matches_the_selector_path(compiled: Any) -> None:
    """Without block selectors the walker builds elements straight from the attributes; that
    gives what matching the selector view gives, rr-block and rr-mask included."""
    policy = compiled()
    walker = DomWalker(Collector(policy, 65_536), SessionMirror(100))
    assert not policy.block
    samples: list[dict[str, Any]] = [
        {},
        {"class": "rr-block x"},
        {"class": "a rr-mask"},
        {"class": "rr-blocked"},
        {"type": "PassWord", "name": "pin", "id": "p", "autocomplete": "cc-number"},
        {"class": True, "type": 3, "name": None},
    ]
    for attrs in samples:
        fast = walker._make_element(7, "input", attrs)
        slow = walker._element(7, "input", walker._selector_view(attrs))
        assert fast == slow, attrs
