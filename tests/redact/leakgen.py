"""Generated PII planted in every text slot of an rrweb session (the leak suite and the bench).

`plant(events, seed)` returns a copy of a recorded stream with Faker PII (en_IN, en_US,
en_GB: names, emails, phones, PAN, Aadhaar, cards, IBANs, addresses) added in every place
PROTOCOL §1 lists: text nodes, attributes (title, placeholder, data-*, value, href query),
Mutation adds, text and attribute changes, Input events, Meta href, console arguments,
network URLs, headers and bodies, and Custom payloads. Every planted value is fresh, so a
value found in the output names the slot it leaked from.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
from faker import Faker

from tests.redact.support import aadhaar, card, indian_mobile, pan

ENTITIES = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "IN_MOBILE",
    "IN_PAN",
    "IN_AADHAAR",
    "CREDIT_CARD",
    "IBAN_CODE",
    "LOCATION",
)
LABELS = {
    "PERSON": "Name:",
    "EMAIL_ADDRESS": "Email:",
    "PHONE_NUMBER": "Phone:",
    "IN_MOBILE": "Mobile:",
    "IN_PAN": "PAN:",
    "IN_AADHAAR": "Aadhaar:",
    "CREDIT_CARD": "Card:",
    "IBAN_CODE": "IBAN:",
    "LOCATION": "Address:",
}
KEYS = {
    "PERSON": "fullName",
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "IN_MOBILE": "mobile",
    "IN_PAN": "panNumber",
    "IN_AADHAAR": "aadhaar",
    "CREDIT_CARD": "cardNumber",
    "IBAN_CODE": "iban",
    "LOCATION": "address",
}
STRUCTURAL_SLOTS = frozenset({"input", "value_attr", "custom_keyed", "network_json_keyed"})
"""Slots whose protection comes from structure (input masking, deny keys, field names)."""


@dataclass(frozen=True, slots=True)
class Planted:
    """One generated value and where it went."""

    entity: str
    value: str
    slot: str

    def encodings(self) -> set[str]:
        """Every form the value could take in the output bytes."""
        v = self.value
        once = orjson.dumps(v).decode()[1:-1]
        twice = orjson.dumps(once).decode()[1:-1]
        return {v, once, twice, quote(v), quote_plus(v)}


POOL = 400
"""Values generated per entity type; each session draws its values from them without repeats
(Faker takes ~0.4 ms a value, too slow to make every value afresh for every session)."""


@cache
def _pool(entity: str) -> tuple[str, ...]:
    """A fixed pool of distinct generated values of one entity type."""
    rng = random.Random(entity)  # noqa: S311 - reproducible test data
    fake = Faker(["en_IN", "en_US", "en_GB"])
    fake.seed_instance(len(entity))
    # Faker's en_GB IBANs are 21 characters (a real GB IBAN has 22) and fail validation, so
    # IBANs come from locales whose IBANs are well-formed (euro area and Ireland).
    ibans = Faker(["de_DE", "fr_FR", "nl_NL", "es_ES", "it_IT", "en_IE"])
    ibans.seed_instance(7)
    locales = [fake[loc] for loc in ("en_IN", "en_US", "en_GB")]
    makers: dict[str, Callable[[], str]] = {
        "PERSON": lambda: str(rng.choice(locales).name()),
        "EMAIL_ADDRESS": lambda: str(rng.choice(locales).email()),
        "PHONE_NUMBER": lambda: str(rng.choice(locales).phone_number()),
        "IN_MOBILE": lambda: indian_mobile(rng),
        "IN_PAN": lambda: pan(rng),
        "IN_AADHAAR": lambda: aadhaar(rng),
        "CREDIT_CARD": lambda: card(fake),
        "IBAN_CODE": lambda: str(ibans.iban()),
        "LOCATION": lambda: str(rng.choice(locales).address()),
    }
    values: dict[str, None] = {}
    while len(values) < POOL:
        values[makers[entity]()] = None
    return tuple(values)


class PiiFactory:
    """Distinct PII values of each entity type for one session, deterministic per seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible test data
        self._left: dict[str, list[str]] = {}

    def value(self, entity: str) -> str:
        """A value of one entity type not used before in this session."""
        left = self._left.get(entity)
        if left is None:
            left = list(_pool(entity))
            self.rng.shuffle(left)
            self._left[entity] = left
        return left.pop()


def _max_id(events: Iterable[Any]) -> int:
    best = 0
    stack: list[Any] = list(events)
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            nid = v.get("id")
            if type(nid) is int and nid > best:
                best = nid
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return best


def _find_body(node: Any) -> dict[str, Any] | None:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if n.get("tagName") == "body" and isinstance(n.get("childNodes"), list):
                return n
            children = n.get("childNodes")
            if isinstance(children, list):
                stack.extend(children)
    return None


def plant(events: list[Any], seed: int) -> tuple[list[Any], list[Planted]]:
    """A copy of `events` with generated PII in every text slot, and what was planted where."""
    out: list[Any] = orjson.loads(orjson.dumps(events))
    factory = PiiFactory(seed)
    ids = iter(range(_max_id(out) + 1000, 10**9))
    planted: list[Planted] = []

    def put(entity: str, slot: str) -> str:
        value = factory.value(entity)
        planted.append(Planted(entity, value, slot))
        return value

    def text(value: str) -> dict[str, Any]:
        return {"type": 3, "textContent": value, "id": next(ids)}

    def element(tag: str, attrs: dict[str, Any], *children: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": 2,
            "tagName": tag,
            "attributes": attrs,
            "childNodes": list(children),
            "id": next(ids),
        }

    snapshot = next((e for e in out if isinstance(e, dict) and e.get("type") == 2), None)
    body = _find_body(snapshot["data"]["node"]) if snapshot else None
    if snapshot is None or body is None:
        body = element("body", {})
        html = element("html", {}, element("head", {}), body)
        snapshot = {
            "type": 2,
            "data": {
                "node": {"type": 0, "childNodes": [html], "id": next(ids)},
                "initialOffset": {"left": 0, "top": 0},
            },
            "timestamp": 1,
        }
        out.insert(0, snapshot)
    container = element("div", {"class": "generated"})
    body["childNodes"].append(container)
    inputs: dict[str, int] = {}
    mutable_texts: dict[str, int] = {}
    for entity in ENTITIES:
        label = LABELS[entity]
        field = element(
            "input", {"type": "text", "name": "note", "value": put(entity, "value_attr")}
        )
        inputs[entity] = field["id"]
        mutable = text(f"{label} pending")
        mutable_texts[entity] = mutable["id"]
        container["childNodes"].extend(
            [
                element(
                    "p",
                    {
                        "title": put(entity, "attr_title"),
                        "data-info": put(entity, "attr_data"),
                        "placeholder": f"e.g. {put(entity, 'attr_placeholder')}",
                    },
                    text(f"{label} {put(entity, 'text')}"),
                ),
                element("span", {}, text(put(entity, "text_bare"))),
                element(
                    "a",
                    {
                        "href": "https://bank.example/acct?ref=ab12&q="
                        + quote(put(entity, "href_query"))
                    },
                    text("open"),
                ),
                element("label", {}, mutable),
                field,
            ]
        )
    tail: list[Any] = []
    for entity in ENTITIES:
        label = LABELS[entity]
        added = element(
            "li",
            {"title": put(entity, "mutation_add_attr")},
            text(f"{label} {put(entity, 'mutation_add')}"),
        )
        tail.append(
            {
                "type": 3,
                "timestamp": 10,
                "data": {
                    "source": 0,
                    "removes": [],
                    "adds": [{"parentId": container["id"], "nextId": None, "node": added}],
                    "texts": [
                        {
                            "id": mutable_texts[entity],
                            "value": f"{label} {put(entity, 'mutation_text')}",
                        }
                    ],
                    "attributes": [
                        {
                            "id": inputs[entity],
                            "attributes": {"title": put(entity, "mutation_attr")},
                        }
                    ],
                },
            }
        )
        tail.append(
            {
                "type": 3,
                "timestamp": 11,
                "data": {
                    "source": 5,
                    "text": put(entity, "input"),
                    "isChecked": False,
                    "id": inputs[entity],
                },
            }
        )
        tail.append(
            {
                "type": 4,
                "timestamp": 12,
                "data": {
                    "href": "https://bank.example/search?q=" + quote(put(entity, "meta_href")),
                    "width": 1280,
                    "height": 720,
                },
            }
        )
        tail.append(
            {
                "type": 6,
                "timestamp": 13,
                "data": {
                    "plugin": "rrweb/console@1",
                    "payload": {
                        "level": "log",
                        "trace": ["app.js:10:5"],
                        "payload": [
                            orjson.dumps(f"{label} {put(entity, 'console')}").decode(),
                            orjson.dumps({"data": put(entity, "console_obj")}).decode(),
                        ],
                    },
                },
            }
        )
        request = {
            "url": "https://api.bank.example/lookup?q=" + quote(put(entity, "network_url")),
            "method": "POST",
            "status": 200,
            "initiatorType": "fetch",
            "requestHeaders": {
                "Content-Type": "application/json",
                "X-Customer-Info": put(entity, "network_header"),
            },
            "requestBody": orjson.dumps(
                {
                    "note": put(entity, "network_json"),
                    KEYS[entity]: put(entity, "network_json_keyed"),
                }
            ).decode(),
            "responseBody": "q=" + quote_plus(put(entity, "network_form")) + "&ok=1",
        }
        tail.append(
            {
                "type": 6,
                "timestamp": 14,
                "data": {"plugin": "rrweb/network@1", "payload": {"requests": [request]}},
            }
        )
        tail.append(
            {
                "type": 5,
                "timestamp": 15,
                "data": {
                    "tag": "profile",
                    "payload": {
                        "comment": f"{label} {put(entity, 'custom')}",
                        KEYS[entity]: put(entity, "custom_keyed"),
                    },
                },
            }
        )
    out.extend(tail)
    return out, planted


def leaked(output: bytes | str, planted: Iterable[Planted]) -> list[Planted]:
    """The planted values that appear in the output in any encoding."""
    text = output.decode() if isinstance(output, bytes) else output
    return [p for p in planted if any(enc in text for enc in p.encodings())]


def recall_table(planted: list[Planted], leaks: list[Planted]) -> dict[str, tuple[int, int]]:
    """entity → (found, planted), over every slot."""
    leaked_ids = {id(p) for p in leaks}
    table: dict[str, tuple[int, int]] = {}
    for p in planted:
        found, total = table.get(p.entity, (0, 0))
        table[p.entity] = (found + (id(p) not in leaked_ids), total + 1)
    return table
