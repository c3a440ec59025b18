"""The last check before a redacted batch is stored: does anything still look like PII?

One pass of one regex over the serialised bytes (tokens blanked out first) looks for
Luhn-valid card numbers, email addresses, Verhoeff-valid Aadhaar numbers and PAN shapes. It
is deliberately independent of Presidio, so a bug in the walker, a recognizer or the policy
does not also blind the check. A hit means the batch is re-redacted with everything masked;
`scrub` is the last resort for a hit that survives that (it sits outside any text slot),
replacing the characters in place so the JSON stays valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKENS = re.compile(
    rb"<[A-Z][A-Z0-9_]{1,40}[:#][0-9a-f]{16}>"
    rb"|%3C[A-Z][A-Z0-9_]{1,40}(?:%3A|:|#|%23)[0-9a-f]{16}%3E"
)
_SHAPES = re.compile(
    rb"(?P<card>(?<![0-9.\-])(?:[2-68][0-9]{12,18}"
    rb"|[2-68][0-9]{3}(?P<sep>[ -])[0-9]{4}(?P=sep)[0-9]{4}(?P=sep)[0-9]{1,7}"
    rb"|3[0-9]{3}[ -][0-9]{6}[ -][0-9]{5})(?![0-9]))"
    rb"|(?P<email>[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*"
    rb"\.(?P<tld>[A-Za-z]{2,24})(?![A-Za-z0-9\-]))"
    rb"|(?P<aadhaar>(?<![0-9.\-])[2-9][0-9]{3}(?P<asep>[ -]?)[0-9]{4}(?P=asep)[0-9]{4}(?![0-9]))"
    rb"|(?P<pan>(?<![A-Za-z0-9])[A-Z]{3}[ABCFGHJLPT][A-Z][0-9]{4}[A-Z](?![A-Za-z0-9]))"
)
_KINDS = ("card", "email", "aadhaar", "pan")
_DIGIT_RUN = re.compile(rb"[0-9](?:[ \-]?[0-9]){11,18}")
_PAN_CORE = re.compile(rb"[A-Z]{5}[0-9]{4}[A-Z]")
_NOT_PII_FIRST = b"01"
_TOKEN_MAX = 72
_TIMESTAMP_MAX = 13
"""A run that starts with 0 or 1 and is at most 13 characters holds no card or Aadhaar:
both must start 2-9 and a later start would need 12 more digits."""
ALL_KINDS = frozenset(_KINDS)
KIND_OF_ENTITY = {
    "CREDIT_CARD": "card",
    "EMAIL_ADDRESS": "email",
    "IN_AADHAAR": "aadhaar",
    "IN_PAN": "pan",
}
"""The egress check looks only for what the tenant's policy detects."""
_FILE_EXTENSIONS = frozenset(
    b"png jpg jpeg gif svg webp avif ico bmp css js mjs map json html htm woff woff2 ttf otf "
    b"eot mp4 webm mp3 wav pdf txt xml".split()
)
_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


@dataclass(frozen=True, slots=True)
class Hit:
    """One suspicious span of the output (its kind and where; never its value)."""

    kind: str
    start: int
    end: int


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def verhoeff_ok(digits: str) -> bool:
    """The Verhoeff check of Aadhaar numbers."""
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[i % 8][ord(ch) - 48]]
    return c == 0


def kinds_for(entities: frozenset[str]) -> frozenset[str]:
    """The shapes to check for a policy's entity list."""
    return frozenset(k for e, k in KIND_OF_ENTITY.items() if e in entities)


def _candidates(data: bytes, kinds: frozenset[str]) -> list[tuple[int, int]]:
    """Windows worth running the full shapes on: around long digit runs, `@` and PAN shapes.

    The full regex is slow over whole batches (it tries its lookbehinds at every byte); these
    three scans are fast and every full match lies inside one of their windows.
    """
    windows: list[tuple[int, int]] = []
    if kinds & {"card", "aadhaar"}:
        for m in _DIGIT_RUN.finditer(data):
            if data[m.start()] in _NOT_PII_FIRST and m.end() - m.start() <= _TIMESTAMP_MAX:
                continue  # 1…: epoch timestamps and ids; no card or Aadhaar starts with 0 or 1
            windows.append((m.start() - 1, m.end() + 1))
    if "email" in kinds:
        at = data.find(b"@")
        while at >= 0:
            windows.append((at - 65, at + 256))
            at = data.find(b"@", at + 1)
    if "pan" in kinds:
        windows += [(m.start() - 1, m.end() + 1) for m in _PAN_CORE.finditer(data)]
    return windows


def scan(
    data: bytes, kinds: frozenset[str] = ALL_KINDS, allowed: frozenset[str] = frozenset()
) -> list[Hit]:
    """Every PII-shaped span in serialised output of the given kinds; tokens and values the
    policy allows (or that sit inside an allowed value) excluded."""
    if not data or not kinds:
        return []
    seen: set[tuple[int, int]] = set()
    hits: list[Hit] = []
    for lo, hi in _candidates(data, kinds):
        lo, hi = max(0, lo), min(len(data), hi)
        for m in _SHAPES.finditer(data, lo, hi):
            span = (m.start(), m.end())
            if span in seen:
                continue
            seen.add(span)
            kind = next(k for k in _KINDS if m.group(k) is not None)
            if kind not in kinds or not _valid(kind, m):
                continue
            if allowed:
                as_text = m.group(0).decode("utf-8", "replace")
                if any(as_text in a for a in allowed):
                    continue
            if _inside_token(data, span):
                continue
            hits.append(Hit(kind, span[0], span[1]))
    hits.sort(key=lambda h: h.start)
    return hits


def _inside_token(data: bytes, span: tuple[int, int]) -> bool:
    """Is the span part of a token such as <CREDIT_CARD:4111…> (hex digits can look like a card)?"""
    lo = max(0, span[0] - _TOKEN_MAX)
    for opener in (b"<", b"%3C"):
        at = data.rfind(opener, lo, span[0] + 1)
        if at >= 0:
            m = _TOKENS.match(data, at)
            if m is not None and m.end() >= span[1]:
                return True
    return False


def _valid(kind: str, m: re.Match[bytes]) -> bool:
    value = m.group(0)
    if kind in ("card", "aadhaar"):
        digits = bytes(c for c in value if 48 <= c <= 57).decode()
        if kind == "card":
            return luhn_ok(digits)
        return digits != digits[::-1] and verhoeff_ok(digits)
    if kind == "email":
        return (m.group("tld") or b"").lower() not in _FILE_EXTENSIONS
    return True


def scrub(data: bytes, hits: list[Hit]) -> bytes:
    """Overwrite each hit in place: digits become 9 (valid in JSON numbers and strings, and
    never a valid card or Aadhaar), everything else `*`. Lengths and JSON validity are kept."""
    out = bytearray(data)
    for hit in hits:
        for i in range(hit.start, hit.end):
            c = out[i]
            if 48 <= c <= 57:
                out[i] = 57
            elif c not in (32, 45):
                out[i] = 42
    return bytes(out)
