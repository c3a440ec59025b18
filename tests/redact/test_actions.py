"""Policy modes and per-entity actions, end to end through a worker's state."""

from __future__ import annotations

from typing import Any

import pytest

from runner.redact.vault import SqliteVault
from runner.redact.worker import WorkerState
from tests.redact.conftest import Redact
from tests.redact.support import Dom, custom, input_event

EMAIL = "priya.sharma@example.com"


def text_of(out: list[Any]) -> str:
    body = out[0]["data"]["node"]["childNodes"][1]["childNodes"][1]
    value: str = body["childNodes"][0]["childNodes"][0]["textContent"]
    return value


def page(text: str) -> list[Any]:
    dom = Dom()
    return [dom.snapshot(dom.el("p", {}, dom.text(text)))]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("mask", "Mail " + "*" * len(EMAIL) + " now"),
        ("redact", "Mail <EMAIL_ADDRESS> now"),
    ],
)
def test_mask_and_redact_actions(redact: Redact, action: str, expected: str) -> None:
    """mask keeps the length with `*`; redact leaves the entity label."""
    out, _ = redact(page(f"Mail {EMAIL} now"), text="detect", actions={"default": action})
    assert text_of(out) == expected


def test_token_action_writes_the_vault(redact: Redact, vault: SqliteVault) -> None:
    """A token is deterministic within the tenant and its original is in the vault."""
    out, _ = redact(page(f"Mail {EMAIL} now"), text="detect")
    token = text_of(out)[5:-4]
    again, _ = redact(page(f"{EMAIL}"), text="detect")
    assert text_of(again) == token
    assert [e.original for e in vault.lookup(token, "acme")] == [EMAIL]
    other, _ = redact(page(f"{EMAIL}"), text="detect", tenant="globex")
    assert text_of(other) != token


def test_hash_action_is_not_stored(redact: Redact, vault: SqliteVault) -> None:
    """A hash is deterministic but never reaches the vault."""
    out, _ = redact(page(EMAIL), text="detect", actions={"EMAIL_ADDRESS": "hash"})
    assert text_of(out).startswith("<EMAIL_ADDRESS#")
    assert vault.count() == 0


def test_drop_event_removes_the_event_but_never_a_snapshot(redact: Redact) -> None:
    """drop_event removes the event holding the entity; a FullSnapshot falls back to redact."""
    dom = Dom()
    field = dom.el("input", {"type": "text", "name": "note"})
    events = [
        dom.snapshot(field, dom.el("p", {}, dom.text("card 4111 1111 1111 1111"))),
        input_event(field["id"], "card 4111 1111 1111 1111"),
        input_event(field["id"], "nothing here"),
    ]
    out, outcome = redact(
        events,
        text="detect",
        mask_all_inputs=False,
        actions={"CREDIT_CARD": "drop_event", "default": "token"},
    )
    assert outcome.kept == 2
    assert outcome.dropped == 1
    assert out[0]["type"] == 2
    assert "<CREDIT_CARD>" in str(out[0])
    assert out[1]["data"]["text"] == "nothing here"


def test_allow_values_stay_visible(redact: Redact) -> None:
    """An allow-listed value is kept in mask_all text and not replaced in detect mode."""
    out, _ = redact(page("Welcome"), allow_values=("Welcome",))
    assert text_of(out) == "Welcome"
    out, _ = redact(
        page("ops@bank.example is our desk"), text="detect", allow_values=("ops@bank.example",)
    )
    assert text_of(out) == "ops@bank.example is our desk"


def test_min_score_and_entities_select_what_is_detected(redact: Redact) -> None:
    """Entities outside the policy list, or under min_score, are left alone."""
    out, _ = redact(page(f"PAN ABCPE1234F {EMAIL}"), text="detect", entities=("EMAIL_ADDRESS",))
    assert text_of(out).startswith("PAN ABCPE1234F <EMAIL_ADDRESS:")
    out, _ = redact(page("IFSC SBIN0001234"), text="detect", min_score=0.99)
    assert text_of(out) == "IFSC SBIN0001234"
    out, _ = redact(page("IFSC SBIN0001234"), text="detect")
    assert text_of(out).startswith("IFSC <IN_IFSC:")


def test_mask_all_inputs_false_only_matters_in_detect_mode(redact: Redact) -> None:
    """Inputs are masked in mask_all mode whatever mask_all_inputs says."""
    dom = Dom()
    field = dom.el("input", {"type": "text", "name": "note"})
    events = [dom.snapshot(field), input_event(field["id"], "hello there")]
    out, _ = redact(events, mask_all_inputs=False)
    assert out[1]["data"]["text"] == "***** *****"
    out, _ = redact(events, text="detect", mask_all_inputs=False, session="s2")
    assert out[1]["data"]["text"] == "hello there"


def test_deny_keys_from_the_policy(redact: Redact) -> None:
    """A tenant's own deny key masks that key's value wherever it appears."""
    out, _ = redact(
        [custom("t", {"customerRef": "CR-99812", "other": "CR-99812"})],
        text="detect",
        deny_keys=("customer_ref",),
    )
    assert out[0]["data"]["payload"] == {"customerRef": "********", "other": "CR-99812"}


def test_session_end_frees_the_mirror(state: WorkerState, redact: Redact) -> None:
    """After end_session the session's nodes are unknown again (so inputs are masked)."""
    dom = Dom()
    field = dom.el("input", {"type": "text", "name": "note"})
    redact([dom.snapshot(field)], text="detect", mask_all_inputs=False)
    assert state.end_session("acme", "s1")
    out, _ = redact([input_event(field["id"], "hello")], text="detect", mask_all_inputs=False)
    assert out[0]["data"]["text"] == "*****"
