"""Builders for rrweb events and generated PII, shared by the PII engine's tests."""

from __future__ import annotations

import itertools
import random
import string
from dataclasses import dataclass, field
from typing import Any

from faker import Faker

from runner.redact.egress import luhn_ok, verhoeff_ok
from runner.redact.recognizers import gstin_check_char

Event = dict[str, Any]
Node = dict[str, Any]


def verhoeff_digit(body: str) -> str:
    """The Verhoeff check digit to append to `body` (exactly one of the ten validates)."""
    return next(d for d in string.digits if verhoeff_ok(body + d))


def aadhaar(rng: random.Random) -> str:
    """A Verhoeff-valid, non-palindromic Aadhaar number (12 digits, first 2-9)."""
    while True:
        body = str(rng.randint(2, 9)) + "".join(rng.choice(string.digits) for _ in range(10))
        number = body + verhoeff_digit(body)
        if number != number[::-1]:
            return number


def pan(rng: random.Random) -> str:
    """A PAN: 3 letters, holder type, letter, 4 digits, letter."""
    letters = string.ascii_uppercase
    return (
        "".join(rng.choice(letters) for _ in range(3))
        + rng.choice("PCHABGJLFT")
        + rng.choice(letters)
        + f"{rng.randint(1, 9999):04d}"
        + rng.choice(letters)
    )


def gstin(rng: random.Random) -> str:
    """A GSTIN with a correct check character."""
    first14 = f"{rng.randint(1, 37):02d}" + pan(rng) + rng.choice("123456789") + "Z"
    return first14 + gstin_check_char(first14)


def indian_mobile(rng: random.Random) -> str:
    """+91 and a 10-digit number starting 6-9."""
    return "+91 " + str(rng.randint(6, 9)) + "".join(rng.choice(string.digits) for _ in range(9))


def card(fake: Faker) -> str:
    """A Luhn-valid card number from Faker, 13 to 19 digits.

    Faker also makes 12-digit Maestro numbers; without a card word near them they cannot be
    told from any other 12-digit number, so the leak suite leaves them out (the README says so).
    """
    while True:
        number = str(fake.credit_card_number())
        if len(number) >= 13 and luhn_ok(number):
            return number


def egress_only_card() -> str:
    """A Luhn-valid 13-digit number starting with 2: card-shaped for the egress check, but no
    card network's pattern, so the detectors leave it (a stand-in for what a detector misses)."""
    body = "200000000000"
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


@dataclass
class Dom:
    """Builds rrweb-serialised DOM nodes with fresh ids."""

    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def el(self, tag: str, attrs: dict[str, Any] | None = None, *children: Node) -> Node:
        """An element node."""
        return {
            "type": 2,
            "tagName": tag,
            "attributes": dict(attrs or {}),
            "childNodes": list(children),
            "id": next(self.ids),
        }

    def text(self, content: str) -> Node:
        """A text node."""
        return {"type": 3, "textContent": content, "id": next(self.ids)}

    def snapshot(self, *body: Node, head: tuple[Node, ...] = ()) -> Event:
        """A FullSnapshot event of html > (head, body)."""
        doc = {"type": 0, "id": next(self.ids), "childNodes": []}
        doctype = {"type": 1, "name": "html", "publicId": "", "systemId": "", "id": next(self.ids)}
        html = self.el(
            "html", {"lang": "en"}, self.el("head", {}, *head), self.el("body", {}, *body)
        )
        doc["childNodes"] = [doctype, html]
        return {
            "type": 2,
            "data": {"node": doc, "initialOffset": {"left": 0, "top": 0}},
            "timestamp": 1_700_000_000_000,
        }


def meta(href: str) -> Event:
    """A Meta event."""
    return {"type": 4, "data": {"href": href, "width": 1280, "height": 720}, "timestamp": 1}


def input_event(node_id: int, text: str) -> Event:
    """An Input event."""
    return {
        "type": 3,
        "data": {"source": 5, "text": text, "isChecked": False, "id": node_id},
        "timestamp": 2,
    }


def mutation(
    adds: list[dict[str, Any]] | None = None,
    texts: list[dict[str, Any]] | None = None,
    attributes: list[dict[str, Any]] | None = None,
    removes: list[dict[str, Any]] | None = None,
) -> Event:
    """A Mutation event."""
    return {
        "type": 3,
        "data": {
            "source": 0,
            "texts": texts or [],
            "attributes": attributes or [],
            "removes": removes or [],
            "adds": adds or [],
        },
        "timestamp": 3,
    }


def console(level: str, *args: Any) -> Event:
    """A console plugin event; arguments are JSON-stringified like rrweb's plugin does."""
    import orjson

    return {
        "type": 6,
        "data": {
            "plugin": "rrweb/console@1",
            "payload": {
                "level": level,
                "trace": ["app.js:1:2"],
                "payload": [orjson.dumps(a).decode() for a in args],
            },
        },
        "timestamp": 4,
    }


def network(*requests: dict[str, Any]) -> Event:
    """A network plugin event."""
    return {
        "type": 6,
        "data": {"plugin": "rrweb/network@1", "payload": {"requests": list(requests)}},
        "timestamp": 5,
    }


def custom(tag: str, payload: Any) -> Event:
    """A Custom event (back-end and mobile SDKs)."""
    return {"type": 5, "data": {"tag": tag, "payload": payload}, "timestamp": 6}


def node_ids(value: Any) -> list[int]:
    """Every node id in DOM trees and mutations, in order."""
    found: list[int] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if "id" in v and type(v["id"]) is int and ("type" in v or "parentId" in v):
                found.append(v["id"])
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, list):
            stack.extend(reversed(v))
    return found


def shape(value: Any) -> Any:
    """Containers, their sizes and order; scalars reduced to 'scalar' (a number may become a
    token string), booleans and nulls as themselves."""
    if isinstance(value, dict):
        return ("dict", [shape(v) for v in value.values()])
    if isinstance(value, list):
        return ("list", [shape(v) for v in value])
    if value is None or isinstance(value, bool):
        return value
    return "scalar"


def event_kinds(events: list[Any]) -> list[tuple[Any, Any]]:
    """(type, incremental source or plugin) per event."""
    kinds: list[tuple[Any, Any]] = []
    for e in events:
        data = e.get("data") if isinstance(e, dict) else None
        sub = data.get("source", data.get("plugin")) if isinstance(data, dict) else None
        kinds.append((e.get("type") if isinstance(e, dict) else None, sub))
    return kinds


def text_lengths(value: Any) -> list[int]:
    """Lengths of every DOM text node's content, in order."""
    found: list[int] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if v.get("type") == 3 and isinstance(v.get("textContent"), str) and "id" in v:
                found.append(len(v["textContent"]))
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, list):
            stack.extend(reversed(v))
    return found
