"""The actions of PROTOCOL §3: token, mask, redact, hash (drop_event is the walker's).

A token is `<ENTITY:16 hex>`: HMAC-SHA256 with the tenant's token key over the entity type
and the normalised value (lower-cased email, digits-only card, upper-case PAN …), so the
same value gives the same token within a tenant (journeys stay joinable) and different
tokens across tenants. A hash is `<ENTITY#16 hex>` under a second, separate tenant key: not
reversible and never stored. Tenant keys are derived from one master key with HKDF-SHA256.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TOKEN_RE = re.compile(r"<([A-Z][A-Z0-9_]{1,40})([:#])([0-9a-f]{16})>")
"""A token or hash as it appears in redacted output."""
MASK_CHAR = "*"

_DIGITS = frozenset(
    {"CREDIT_CARD", "IN_AADHAAR", "US_SSN", "BANK_ACCOUNT", "US_ITIN", "PHONE_NUMBER", "IN_MOBILE"}
)
_UPPER_COMPACT = frozenset(
    {"IBAN_CODE", "IN_PAN", "IN_IFSC", "IN_GSTIN", "IN_VOTER", "IN_PASSPORT", "UK_NINO"}
) | {"IN_VEHICLE_REGISTRATION"}
_LOWER = frozenset({"EMAIL_ADDRESS", "IN_UPI_ID", "IP_ADDRESS"})
_SPACES = re.compile(r"\s+")
_NOT_DIGIT = re.compile(r"\D")
_COMPACT = re.compile(r"[\s\-./]")
_PHONES = frozenset({"PHONE_NUMBER", "IN_MOBILE"})
_NON_SPACE = re.compile(r"\S")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def normalise(entity: str, value: str) -> str:
    """The form of a value that is tokenized: equal for different spellings of one value."""
    if entity in _DIGITS:
        digits = _NOT_DIGIT.sub("", value)
        if entity in _PHONES:
            if len(digits) == 12 and digits.startswith("91"):
                digits = digits[2:]
            elif len(digits) == 13 and digits.startswith("091"):
                digits = digits[3:]
            elif len(digits) == 11 and digits.startswith("0"):
                digits = digits[1:]
        return digits or value.strip()
    if entity in _UPPER_COMPACT:
        return _COMPACT.sub("", value).upper()
    if entity in _LOWER:
        return value.strip().lower()
    return _SPACES.sub(" ", value.strip()).casefold()


_ASCII_MASK = "".join(c if c.isspace() else MASK_CHAR for c in map(chr, range(128)))
"""`mask` for ASCII text as a translation table (the same as the regex, several times faster)."""


def mask(text: str) -> str:
    """Same length (in UTF-16 units, as the browser counts), every non-space character `*`."""
    if text.isascii():
        return text.translate(_ASCII_MASK)
    return _NON_SPACE.sub(MASK_CHAR, _ASTRAL.sub("**", text))


def label(entity: str) -> str:
    """The `redact` action: the entity type only."""
    return f"<{entity}>"


class TokenKeys:
    """Per-tenant token and hash keys, derived from the master key with HKDF-SHA256."""

    def __init__(self, master: bytes) -> None:
        if len(master) < 32:
            raise ValueError("the token master key must be at least 32 bytes")
        self._master = master
        self._derived: dict[tuple[str, str], bytes] = {}

    def key(self, tenant: str, purpose: str) -> bytes:
        """The tenant's key for `purpose` ("token" or "hash")."""
        found = self._derived.get((tenant, purpose))
        if found is None:
            found = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=f"traceflow/{purpose}/v1/{tenant}".encode(),
            ).derive(self._master)
            if len(self._derived) > 10_000:
                self._derived.clear()
            self._derived[(tenant, purpose)] = found
        return found


class Tokenizer:
    """Keyed deterministic tokens and hashes for one Runner."""

    def __init__(self, keys: TokenKeys) -> None:
        self._keys = keys

    def _digest(self, tenant: str, purpose: str, entity: str, value: str) -> str:
        message = f"{entity}\x00{normalise(entity, value)}".encode("utf-8", "surrogatepass")
        key = self._keys.key(tenant, purpose)
        return hmac.new(key, message, hashlib.sha256).hexdigest()[:16]

    def token(self, tenant: str, entity: str, value: str) -> str:
        """`<ENTITY:hex>`, reversible through the vault."""
        return f"<{entity}:{self._digest(tenant, 'token', entity, value)}>"

    def hash(self, tenant: str, entity: str, value: str) -> str:
        """`<ENTITY#hex>`, not reversible."""
        return f"<{entity}#{self._digest(tenant, 'hash', entity, value)}>"


def merge_spans(findings: Iterable[tuple[int, int, str, float]]) -> list[tuple[int, int, str]]:
    """Overlapping findings become one span over their union, typed by the strongest finding."""
    ordered = sorted(findings, key=lambda f: (f[0], -f[3], -(f[1] - f[0])))
    merged: list[tuple[int, int, str, float]] = []
    for start, end, entity, score in ordered:
        if merged and start < merged[-1][1]:
            m_start, m_end, m_entity, m_score = merged[-1]
            if score > m_score or (score == m_score and end - start > m_end - m_start):
                m_entity, m_score = entity, score
            merged[-1] = (m_start, max(m_end, end), m_entity, m_score)
        else:
            merged.append((start, end, entity, score))
    return [(s, e, ent) for s, e, ent, _ in merged]


def splice(text: str, replacements: Sequence[tuple[int, int, str]]) -> str:
    """`text` with each (start, end) span replaced; spans are sorted and do not overlap."""
    out: list[str] = []
    pos = 0
    for start, end, new in replacements:
        out.append(text[pos:start])
        out.append(new)
        pos = end
    out.append(text[pos:])
    return "".join(out)
