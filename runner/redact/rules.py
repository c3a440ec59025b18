"""A tenant's `pii` policy compiled into fast matchers: deny keys, block selectors, field rules.

Compiling happens once per policy version in each worker; the walker then asks
cheap questions ("is this key denied?", "does this element match a block
selector?", "what does a field named `mobileNo` hold?") millions of times.
Pure code, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache

import orjson

from runner.policy.model import Action, PiiPolicy

EGRESS_KIND_OF_ENTITY = {
    "CREDIT_CARD": "card",
    "EMAIL_ADDRESS": "email",
    "IN_AADHAAR": "aadhaar",
    "IN_PAN": "pan",
}
"""The shapes of the egress check, by the entity a policy must detect for it to look."""
ALWAYS_REMOVED_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization"})
"""Headers removed outright, whatever the policy says."""

_WORD_SPLIT = re.compile(r"[^0-9A-Za-z]+|(?<=[a-z0-9])(?=[A-Z])")
_SUBSTRING_MIN = 5

_AUTOCOMPLETE_ENTITY = {
    "name": "PERSON",
    "honorific-prefix": "PERSON",
    "given-name": "PERSON",
    "additional-name": "PERSON",
    "family-name": "PERSON",
    "nickname": "PERSON",
    "street-address": "LOCATION",
    "address-line1": "LOCATION",
    "address-line2": "LOCATION",
    "address-line3": "LOCATION",
    "address-level1": "LOCATION",
    "address-level2": "LOCATION",
    "address-level3": "LOCATION",
    "address-level4": "LOCATION",
    "postal-code": "LOCATION",
    "email": "EMAIL_ADDRESS",
    "tel": "PHONE_NUMBER",
    "tel-national": "PHONE_NUMBER",
    "tel-local": "PHONE_NUMBER",
    "bday": "DATE_OF_BIRTH",
    "bday-day": "DATE_OF_BIRTH",
    "bday-month": "DATE_OF_BIRTH",
    "bday-year": "DATE_OF_BIRTH",
}
_SECRET_AUTOCOMPLETE = frozenset({"current-password", "new-password", "one-time-code"})

_FIELD_WORDS: dict[str, str] = {
    **dict.fromkeys(
        ("firstname", "lastname", "fullname", "surname", "givenname", "middlename", "fname"),
        "PERSON",
    ),
    **dict.fromkeys(("lname", "customername", "accountholder", "holdername"), "PERSON"),
    **dict.fromkeys(("nominee", "fathername", "mothername", "spousename"), "PERSON"),
    **dict.fromkeys(("address", "street", "addressline", "pincode", "postcode"), "LOCATION"),
    **dict.fromkeys(("zipcode", "zip", "postalcode"), "LOCATION"),
    **dict.fromkeys(("email", "emailaddress", "mail", "emailid"), "EMAIL_ADDRESS"),
    **dict.fromkeys(("phone", "mobile", "mobileno", "phoneno", "msisdn", "tel"), "PHONE_NUMBER"),
    **dict.fromkeys(("mobilenumber", "phonenumber", "whatsapp"), "PHONE_NUMBER"),
    **dict.fromkeys(("dob", "birthdate", "dateofbirth", "birthday"), "DATE_OF_BIRTH"),
    **dict.fromkeys(("ifsc", "ifsccode"), "IN_IFSC"),
    **dict.fromkeys(("upi", "vpa", "upiid"), "IN_UPI_ID"),
    **dict.fromkeys(("iban",), "IBAN_CODE"),
    **dict.fromkeys(("accountno", "accountnumber", "acctno", "bankaccount"), "BANK_ACCOUNT"),
    **dict.fromkeys(("gstin", "gst"), "IN_GSTIN"),
    **dict.fromkeys(("passport", "passportno", "passportnumber"), "IN_PASSPORT"),
    **dict.fromkeys(("ssn",), "US_SSN"),
}
_NAME_WORD = "name"
_NAME_NOT_PERSON = frozenset(
    {"file", "class", "tag", "user", "host", "domain", "field", "event", "key", "type", "app"}
)
_NAME_NOT_PERSON |= frozenset({"product", "plan", "branch", "bank", "company", "display", "font"})


@lru_cache(maxsize=65_536)
def key_words(name: str) -> tuple[str, ...]:
    """`mobileNo`, `mobile_no`, `Mobile-No` → ("mobile", "no")."""
    return tuple(w.lower() for w in _WORD_SPLIT.split(name[:128]) if w)


@lru_cache(maxsize=65_536)
def key_context(name: str) -> str:
    """A key as plain words for Presidio's context enhancer: `aadhaarNumber` → `aadhaar number`."""
    return " ".join(key_words(name))[:64]


@lru_cache(maxsize=65_536)
def field_entity(name: str) -> str | None:
    """The entity a field (JSON key, query parameter, form field name) holds, by its name."""
    words = key_words(name)
    if not words:
        return None
    joined = "".join(words)
    if joined in _FIELD_WORDS:
        return _FIELD_WORDS[joined]
    if words[-1] == _NAME_WORD and len(words) <= 3 and not _NAME_NOT_PERSON & set(words):
        return "PERSON"
    return None


def autocomplete_entity(autocomplete: str) -> tuple[str | None, bool]:
    """(entity, secret) for an `autocomplete` attribute value such as `section-a billing tel`."""
    entity: str | None = None
    for token in autocomplete.lower().split():
        if token.startswith("cc-") or token in _SECRET_AUTOCOMPLETE:
            return "CREDIT_CARD" if token.startswith("cc-") else None, True
        entity = _AUTOCOMPLETE_ENTITY.get(token, entity)
    return entity, False


@dataclass(frozen=True, slots=True)
class AnalysisProfile:
    """What the detection engine looks for; also the key of its result cache."""

    entities: frozenset[str]
    min_score: float
    phone_regions: tuple[str, ...]
    allow_values: frozenset[str]


@dataclass(frozen=True, slots=True)
class _AttrTest:
    name: str
    op: str
    value: str

    def test(self, attrs: dict[str, str]) -> bool:
        have = attrs.get(self.name)
        if have is None:
            return False
        v = self.value
        match self.op:
            case "":
                return True
            case "=":
                return have == v
            case "~=":
                return v in have.split()
            case "^=":
                return bool(v) and have.startswith(v)
            case "$=":
                return bool(v) and have.endswith(v)
            case "*=":
                return bool(v) and v in have
            case "|=":
                return have == v or have.startswith(v + "-")
        return False


@dataclass(frozen=True, slots=True)
class _Compound:
    tag: str
    ids: tuple[str, ...]
    classes: frozenset[str]
    attrs: tuple[_AttrTest, ...]

    def matches(self, tag: str, attrs: dict[str, str]) -> bool:
        if self.tag and self.tag != tag:
            return False
        if self.ids and any(attrs.get("id") != i for i in self.ids):
            return False
        if self.classes and not self.classes <= set(attrs.get("class", "").split()):
            return False
        return all(t.test(attrs) for t in self.attrs)


_PART = re.compile(
    r"""\#(?P<id>[-\w]+)
      | \.(?P<cls>[-\w]+)
      | \[\s*(?P<an>[-\w:]+)\s*
          (?:(?P<op>[~^$*|]?=)\s*
             (?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\]\s]*))\s*(?:[iIsS]\s*)?)?\]
      | ::?[-\w]+(?:\((?:[^()]|\([^()]*\))*\))?""",
    re.VERBOSE,
)
_TAG = re.compile(r"^(?:\*|[A-Za-z][-\w]*)")


def _last_compound(selector: str) -> str:
    """The rightmost compound of a complex selector (`.a > .b input` → `input`)."""
    depth, start = 0, 0
    for i, ch in enumerate(selector):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif depth == 0 and (ch.isspace() or ch in ">+~"):
            start = i + 1
    return selector[start:].strip()


def parse_selector(selector: str) -> _Compound | None:
    """Parse one selector into its rightmost compound; None when it cannot be understood.

    Matching only the rightmost compound blocks a superset of what the full
    selector would (`.secret input` blocks every input): over-blocking is the
    safe direction. Pseudo-classes are ignored for the same reason.
    """
    text = _last_compound(selector.strip())
    if not text:
        return None
    tag_m = _TAG.match(text)
    tag = tag_m.group(0).lower() if tag_m and tag_m.group(0) != "*" else ""
    pos = tag_m.end() if tag_m else 0
    ids: list[str] = []
    classes: set[str] = set()
    tests: list[_AttrTest] = []
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            return None
        if m.group("id"):
            ids.append(m.group("id"))
        elif m.group("cls"):
            classes.add(m.group("cls"))
        elif m.group("an"):
            value = m.group("dq") or m.group("sq") or m.group("bare") or ""
            tests.append(_AttrTest(m.group("an").lower(), m.group("op") or "", value))
        pos = m.end()
    if not (tag or ids or classes or tests):
        return None
    return _Compound(tag, tuple(ids), frozenset(classes), tuple(tests))


@dataclass(slots=True)
class CompiledPolicy:
    """One tenant `pii` policy, ready for the walker. Built by `compile_policy`."""

    fingerprint: str
    detect: bool
    mask_all_inputs: bool
    actions: dict[str, Action]
    default_action: Action
    allow_values: frozenset[str]
    profile: AnalysisProfile
    deny_exact: frozenset[str]
    deny_substrings: tuple[str, ...]
    block: tuple[_Compound, ...]
    mask: tuple[_Compound, ...]
    selector_attrs: frozenset[str]
    bad_selectors: int
    unknown_entities: tuple[str, ...] = ()
    _deny_memo: dict[str, bool] = field(default_factory=dict)
    egress_kinds: frozenset[str] = frozenset()
    """The shapes the egress check looks for under this policy (see `egress.kinds_for`)."""
    attr_memo: dict[object, int] = field(default_factory=dict)
    """The walker's classification of attribute names under this policy (see `dom`)."""

    def action_for(self, entity: str) -> Action:
        """The policy's action for one entity type."""
        return self.actions.get(entity, self.default_action)

    def is_denied(self, key: str) -> bool:
        """Is `key` (attribute, JSON key, query parameter, header) one whose value is secret?"""
        hit = self._deny_memo.get(key)
        if hit is None:
            words = key_words(key)
            joined = "".join(words)
            hit = (
                joined in self.deny_exact
                or any(w in self.deny_exact for w in words)
                or any(s in joined for s in self.deny_substrings)
            )
            if len(self._deny_memo) > 50_000:
                self._deny_memo.clear()
            self._deny_memo[key] = hit
        return hit

    def blocks(self, tag: str, attrs: dict[str, str]) -> bool:
        """Does the element match a block selector (or rrweb's own `rr-block` class)?"""
        if "rr-block" in attrs.get("class", "").split():
            return True
        return any(c.matches(tag, attrs) for c in self.block)

    def flags(self, tag: str, attrs: dict[str, str]) -> tuple[bool, bool]:
        """(blocked, masked) for an element."""
        return self.blocks(tag, attrs), self.masks(tag, attrs)

    def masks(self, tag: str, attrs: dict[str, str]) -> bool:
        """Does the element's text have to be masked (a mask selector, or rrweb's `rr-mask`)?"""
        return any(c.matches(tag, attrs) for c in self.mask)


def canonical(policy: PiiPolicy) -> bytes:
    """The policy as canonical JSON (sorted keys): what is fingerprinted and sent to workers."""
    return orjson.dumps(policy.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


def fingerprint(policy: PiiPolicy, raw: bytes | None = None) -> str:
    """A short stable digest of the policy, used as a cache key across processes."""
    return hashlib.sha256(canonical(policy) if raw is None else raw).hexdigest()[:16]


RR_MASK = _Compound("", (), frozenset({"rr-mask"}), ())
"""rrweb's own `rr-mask` class: masks under every policy."""


def _compounds(selectors: tuple[str, ...]) -> tuple[list[_Compound], int]:
    """The parsed selectors (comma lists split) and how many could not be parsed."""
    parsed: list[_Compound] = []
    bad = 0
    for sel in (s for raw in selectors for s in raw.split(",")):
        if not sel.strip():
            continue
        compound = parse_selector(sel)
        if compound is None:
            bad += 1
        else:
            parsed.append(compound)
    return parsed, bad


def compile_policy(policy: PiiPolicy, supported: frozenset[str], fp: str = "") -> CompiledPolicy:
    """Compile a policy against the entity types the engine can detect."""
    deny_words = {"".join(key_words(k)) for k in policy.deny_keys if key_words(k)}
    block, bad_block = _compounds(policy.block_selectors)
    mask, bad_mask = _compounds(policy.mask_selectors)
    bad = bad_block + bad_mask
    selector_attrs = frozenset(t.name for c in (*block, *mask) for t in c.attrs)
    entities = frozenset(e for e in policy.entities if e in supported)
    unknown = tuple(sorted(set(policy.entities) - supported))
    default_action = policy.actions.get("default", "token")
    return CompiledPolicy(
        fingerprint=fp or fingerprint(policy),
        detect=policy.text == "detect",
        mask_all_inputs=policy.mask_all_inputs,
        actions=dict(policy.actions),
        default_action=default_action,
        allow_values=frozenset(policy.allow_values),
        profile=AnalysisProfile(
            entities=entities,
            min_score=policy.min_score,
            phone_regions=tuple(sorted({r.upper() for r in policy.phone_regions})) or ("IN",),
            allow_values=frozenset(policy.allow_values),
        ),
        deny_exact=frozenset(deny_words),
        deny_substrings=tuple(sorted(w for w in deny_words if len(w) >= _SUBSTRING_MIN)),
        block=tuple(block),
        mask=(RR_MASK, *mask),
        selector_attrs=selector_attrs,
        bad_selectors=bad,
        unknown_entities=unknown,
        egress_kinds=frozenset(k for e, k in EGRESS_KIND_OF_ENTITY.items() if e in entities),
    )
