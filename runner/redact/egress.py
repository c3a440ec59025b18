"""The last check before a redacted batch is stored: does anything still look like PII?

It looks for Luhn-valid card numbers, email addresses, Verhoeff-valid Aadhaar numbers and PAN
shapes in the serialised bytes. It is deliberately independent of Presidio, so a bug in the
walker, a recognizer or the policy does not also blind the check. A hit means the batch is
re-redacted with everything masked; `scrub` is the last resort for a hit that survives that
(it sits outside any text slot), replacing the characters in place so the JSON stays valid.

How it stays cheap (it runs on every batch): one `bytes.translate` pass maps the batch to
character classes (digits → `0`, space and hyphen → `s`/`h`, capitals → `A`, other e-mail
local-part characters → `a`), and fixed strings are searched in that class view: twelve
digits in a row or grouped `0000 0000 0000` / `0000 000000 00000` (every card and Aadhaar
shape contains one), `@`, and `AAAAA0000A` (PAN). Each is a literal search at memory speed;
only where one is found does the exact shape regex run on the original bytes. A single
alternation of the three would be several times slower (Python's regex engine only skips
ahead quickly for a literal prefix). Every shape is searched for independently, so one shape
can never hide another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runner.redact.rules import EGRESS_KIND_OF_ENTITY

_TOKENS = re.compile(
    rb"<[A-Z][A-Z0-9_]{1,40}[:#][0-9a-f]{16}>"
    rb"|%3C[A-Z][A-Z0-9_]{1,40}(?:%3A|:|#|%23)[0-9a-f]{16}%3E"
)
_DIGIT_SHAPES = re.compile(
    rb"(?<![0-9.\-])(?:(?P<card>[2-68][0-9]{12,18}"
    rb"|[2-68][0-9]{3}(?P<sep>[ -])[0-9]{4}(?P=sep)[0-9]{4}(?P=sep)[0-9]{1,7}"
    rb"|3[0-9]{3}[ -][0-9]{6}[ -][0-9]{5})"
    rb"|(?P<aadhaar>[2-9][0-9]{3}(?P<asep>[ -]?)[0-9]{4}(?P=asep)[0-9]{4}))(?![0-9])"
)
"""Cards and Aadhaar numbers (a card shape wins where both fit, as in the old combined scan)."""
_EMAIL = re.compile(
    rb"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*"
    rb"\.(?P<tld>[A-Za-z]{2,24})(?![A-Za-z0-9\-])"
)
_PAN = re.compile(rb"(?<![A-Za-z0-9])[A-Z]{3}[ABCFGHJLPT][A-Z][0-9]{4}[A-Z](?![A-Za-z0-9])")


def _class_table() -> bytes:
    table = bytearray(b"." * 256)
    for c in b"abcdefghijklmnopqrstuvwxyz._%+":
        table[c] = ord("a")
    for c in range(ord("A"), ord("Z") + 1):
        table[c] = ord("A")
    for c in b"0123456789":
        table[c] = ord("0")
    table[ord(" ")] = ord("s")
    table[ord("-")] = ord("h")
    table[ord("@")] = ord("@")
    return bytes(table)


_CLASSES = _class_table()
_DIGIT_RUN_SEED = re.compile(rb"0000(?:0{8}|[sh]0000[sh]0000|[sh]000000[sh]00000)")
"""In the class view: where a card or Aadhaar number may be (literal prefix `0000`)."""
_RUN_TAIL = re.compile(rb"[0sh]*")
_RUN_CHARS = frozenset(b"0sh")
_LOCAL_CHARS = frozenset(b"0Aah")
_PAN_SEED = b"AAAAA0000A"
_LOCAL_MAX = 64
_DOMAIN_WINDOW = 256
_NOT_PII_FIRST = b"01"
_TOKEN_MAX = 72
_TIMESTAMP_MAX = 13
"""A digit run that starts with 0 or 1 and is at most 13 characters holds no card or Aadhaar:
both must start 2-9 after a non-digit, and a start after a space inside the run would leave
fewer than the 12 digits they need (epoch-millisecond timestamps are such runs)."""

_KINDS = ("card", "email", "aadhaar", "pan")
ALL_KINDS = frozenset(_KINDS)
KIND_OF_ENTITY = EGRESS_KIND_OF_ENTITY
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


def scan(
    data: bytes, kinds: frozenset[str] = ALL_KINDS, allowed: frozenset[str] = frozenset()
) -> list[Hit]:
    """Every PII-shaped span in serialised output of the given kinds; tokens and values the
    policy allows (or that sit inside an allowed value) excluded."""
    if not data or not kinds:
        return []
    classes = data.translate(_CLASSES)
    found: list[tuple[str, re.Match[bytes]]] = []
    if "card" in kinds or "aadhaar" in kinds:
        found += _digit_shapes(data, classes)
    if "email" in kinds:
        found += _emails(data, classes)
    if "pan" in kinds:
        found += _pans(data, classes)
    hits: list[Hit] = []
    seen: set[tuple[int, int, str]] = set()
    for kind, m in found:
        span = (m.start(), m.end())
        if kind not in kinds or (span[0], span[1], kind) in seen or not _valid(kind, m):
            continue
        seen.add((span[0], span[1], kind))
        if allowed:
            as_text = m.group(0).decode("utf-8", "replace")
            if any(as_text in a for a in allowed):
                continue
        if _inside_token(data, span):
            continue
        hits.append(Hit(kind, span[0], span[1]))
    hits.sort(key=lambda h: (h.start, h.end))
    return hits


def _digit_shapes(data: bytes, classes: bytes) -> list[tuple[str, re.Match[bytes]]]:
    """Cards and Aadhaar numbers, looked for only in digit runs that hold twelve digits."""
    out: list[tuple[str, re.Match[bytes]]] = []
    pos = 0
    while (seed := _DIGIT_RUN_SEED.search(classes, pos)) is not None:
        lo = seed.start()
        while lo > 0 and classes[lo - 1] in _RUN_CHARS:
            lo -= 1
        tail = _RUN_TAIL.match(classes, seed.end())
        hi = pos = tail.end() if tail is not None else seed.end()
        while classes[lo] != 48:  # the run may start with separators: skip to its first digit
            lo += 1
        if data[lo] in _NOT_PII_FIRST and hi - lo <= _TIMESTAMP_MAX:
            continue
        for m in _DIGIT_SHAPES.finditer(data, lo, hi):
            out.append(("card" if m.group("card") is not None else "aadhaar", m))
    return out


def _emails(data: bytes, classes: bytes) -> list[tuple[str, re.Match[bytes]]]:
    """E-mail addresses, matched from the start of the local part before each `@`."""
    out: list[tuple[str, re.Match[bytes]]] = []
    at = classes.find(b"@")
    while at >= 0:
        lo, floor = at, max(0, at - _LOCAL_MAX)
        while lo > floor and classes[lo - 1] in _LOCAL_CHARS:
            lo -= 1
        if lo < at:
            m = _EMAIL.match(data, lo, at + _DOMAIN_WINDOW)
            if m is not None:
                out.append(("email", m))
        at = classes.find(b"@", at + 1)
    return out


def _pans(data: bytes, classes: bytes) -> list[tuple[str, re.Match[bytes]]]:
    """PAN shapes: five capitals, four digits, a capital, standing alone."""
    out: list[tuple[str, re.Match[bytes]]] = []
    at = classes.find(_PAN_SEED)
    while at >= 0:
        m = _PAN.match(data, at)
        if m is not None:
            out.append(("pan", m))
        at = classes.find(_PAN_SEED, at + 1)
    return out


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
