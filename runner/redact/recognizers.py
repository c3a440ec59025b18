"""The recognizers: Presidio's built-ins that apply to banking, plus what Indian and European banks
need and Presidio lacks, written as Presidio recognizers.

Built-in (Presidio): EMAIL_ADDRESS, CREDIT_CARD (Luhn), IBAN_CODE (mod 97), IP_ADDRESS, US_SSN,
IN_PAN, IN_AADHAAR (Verhoeff), IN_VEHICLE_REGISTRATION, IN_VOTER, IN_PASSPORT, and
PHONE_NUMBER restricted to the policy's regions. Optional when a policy names them: CRYPTO,
UK_NINO, US_ITIN. UK_NHS is left out on purpose: its 10-digit checksum matches Indian mobile
numbers at score 1.0. Presidio's own GSTIN recognizer is replaced by one that checks the
GSTIN check character.

Ours: IN_IFSC, IN_UPI_ID, IN_MOBILE, IN_GSTIN, BANK_ACCOUNT and DATE_OF_BIRTH. The last two
need a context word (account, a/c, IFSC …; DOB, born …) in the same string before the value.
"""

from __future__ import annotations

import re
from typing import Any

from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    CryptoRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    InAadhaarRecognizer,
    InPanRecognizer,
    InPassportRecognizer,
    InVehicleRegistrationRecognizer,
    InVoterRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UkNinoRecognizer,
    UsItinRecognizer,
    UsSsnRecognizer,
)

SEGMENT_MARK = "\u2029"
"""Paragraph separator: the engine puts it between strings analysed in one call; context
windows of our recognizers never look past it."""
CASE_SENSITIVE = int(re.DOTALL | re.MULTILINE)
CONTEXT_WINDOW = 64


def _window(text: str, start: int) -> str:
    """The text before `start` within the same analysed string, lower-cased."""
    lo = max(0, start - CONTEXT_WINDOW)
    mark = text.rfind(SEGMENT_MARK, lo, start)
    return text[(mark + 1 if mark >= 0 else lo) : start].lower()


class InIfscRecognizer(PatternRecognizer):
    """Indian Financial System Code: 4 letters (bank), `0`, 6 letters or digits (branch)."""

    PATTERNS = [Pattern("IFSC", r"\b[A-Z]{4}0[A-Z0-9]{6}\b", 0.6)]
    CONTEXT = ["ifsc", "branch", "bank", "neft", "rtgs", "imps"]

    def __init__(self) -> None:
        super().__init__(
            supported_entity="IN_IFSC",
            patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
            global_regex_flags=CASE_SENSITIVE,
            name="InIfscRecognizer",
        )


UPI_HANDLES = frozenset(
    [
        "ybl",
        "ibl",
        "axl",
        "okaxis",
        "okhdfcbank",
        "okicici",
        "oksbi",
        "paytm",
        "ptyes",
        "ptaxis",
        "pthdfc",
        "ptsbi",
        "upi",
        "apl",
        "yapl",
        "rapl",
        "abfspay",
        "axisbank",
        "axisb",
        "hdfcbank",
        "icici",
        "sbi",
        "pnb",
        "kotak",
        "kmbl",
        "idfcbank",
        "idfcfirst",
        "federal",
        "fbl",
        "indus",
        "rbl",
        "yesbank",
        "yesbankltd",
        "barodampay",
        "boi",
        "cnrb",
        "unionbankofindia",
        "uboi",
        "aubank",
        "dbs",
        "freecharge",
        "jio",
        "airtel",
        "ikwik",
        "mahb",
        "centralbank",
        "citi",
        "hsbc",
        "sc",
        "equitas",
        "jupiteraxis",
        "slice",
        "fam",
        "naviaxis",
        "waaxis",
        "wahdfcbank",
        "wasbi",
        "waicici",
        "postbank",
        "ippb",
        "indianbank",
        "iob",
        "ucobank",
        "kbl",
        "kvb",
        "tjsb",
        "dlb",
        "csbpay",
        "superyes",
        "timecosmos",
        "pingpay",
    ]
)


class InUpiRecognizer(PatternRecognizer):
    """UPI virtual payment addresses (`name@bank`): not an email (no dot-domain after the `@`)."""

    PATTERNS = [
        Pattern(
            "UPI id",
            r"(?<![\w.\-@])[A-Za-z0-9][A-Za-z0-9.\-_]{1,255}@[A-Za-z][A-Za-z0-9]{1,63}"
            r"(?![\w@\-])(?!\.[A-Za-z0-9])",
            0.4,
        )
    ]
    CONTEXT = ["upi", "vpa", "pay", "gpay", "phonepe", "paytm", "bhim"]

    def __init__(self) -> None:
        super().__init__(
            supported_entity="IN_UPI_ID",
            patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
            name="InUpiRecognizer",
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        """A known payment-app handle makes the match certain; others need context."""
        return True if pattern_text.rpartition("@")[2].lower() in UPI_HANDLES else None


class InMobileRecognizer(PatternRecognizer):
    """Indian mobile numbers: +91/0091/0 prefixed, or 10 digits starting 6-9 (with context)."""

    PATTERNS = [
        Pattern(
            "IN mobile +91", r"(?<![\d+])(?:\+91|0091)[\s\-]?[6-9](?:[\s\-]?\d){9}(?!\d)", 0.75
        ),
        Pattern("IN mobile 0-prefixed", r"(?<![\d+])0[6-9]\d{9}(?!\d)", 0.4),
        Pattern("IN mobile spaced", r"(?<![\d+])[6-9]\d{4}[\s\-]\d{5}(?!\d)", 0.4),
        Pattern("IN mobile bare", r"(?<![\d+])[6-9]\d{9}(?!\d)", 0.3),
    ]
    CONTEXT = ["mobile", "phone", "contact", "whatsapp", "call", "tel", "cell", "sms"]

    def __init__(self) -> None:
        super().__init__(
            supported_entity="IN_MOBILE",
            patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
            name="InMobileRecognizer",
        )

    def invalidate_result(self, pattern_text: str) -> bool:
        """Runs of one or two repeated digits (9999999999) are placeholders, not numbers."""
        digits = [c for c in pattern_text if c.isdigit()][-10:]
        return len(set(digits)) <= 2


_GSTIN_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def gstin_check_char(first14: str) -> str:
    """The GSTIN check character for the first 14 characters (base-36, weights 1 and 2)."""
    total = 0
    for i, ch in enumerate(first14.upper()):
        product = _GSTIN_CHARS.index(ch) * (2 if i % 2 else 1)
        total += product // 36 + product % 36
    return _GSTIN_CHARS[(36 - total % 36) % 36]


class InGstinRecognizer(PatternRecognizer):
    """GSTIN: state code, PAN, entity number, `Z`, check character (verified)."""

    PATTERNS = [
        Pattern(
            "GSTIN",
            r"\b(?:0[1-9]|[12]\d|3[0-8]|97|99)[A-Z]{5}\d{4}[A-Z][1-9A-Z]Z[0-9A-Z]\b",
            0.3,
        )
    ]
    CONTEXT = ["gstin", "gst"]

    def __init__(self) -> None:
        super().__init__(
            supported_entity="IN_GSTIN",
            patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
            name="InGstinRecognizer",
        )

    def validate_result(self, pattern_text: str) -> bool:
        """True only when the check character matches."""
        value = pattern_text.upper()
        return (
            len(value) == 15
            and all(c in _GSTIN_CHARS for c in value)
            and gstin_check_char(value[:14]) == value[14]
        )


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class ExtraCardRecognizer(PatternRecognizer):
    """Cards Presidio's pattern misses: Mastercard 2-series, RuPay 81/82, 15-digit JCB,
    18/19-digit Maestro/UnionPay/RuPay, and 12-digit Maestro (only with a card word before it).
    All Luhn-checked."""

    _G = r"[ \-]?"
    PATTERNS = [
        Pattern(
            "mastercard 2-series", rf"(?<![\d\-.])2[2-7]\d{{2}}(?:{_G}\d{{4}}){{3}}(?![\d\-])", 0.6
        ),
        Pattern("rupay 81/82", rf"(?<![\d\-.])8[12]\d{{2}}(?:{_G}\d{{4}}){{3}}(?![\d\-])", 0.6),
        Pattern("jcb 15", r"(?<![\d\-.])(?:2131|1800)\d{11}(?![\d\-])", 0.6),
        Pattern("card 18-19", r"(?<![\d\-.])[2-6]\d{17,18}(?![\d\-])", 0.6),
        Pattern(
            "card 4x4+3",
            rf"(?<![\d\-.])[2-6]\d{{3}}(?:{_G}\d{{4}}){{3}}{_G}\d{{2,3}}(?![\d\-])",
            0.6,
        ),
        Pattern("maestro 12", r"(?<![\d\-.])[56]\d{11}(?![\d\-])", 0.2),
    ]
    CONTEXT = ["card", "debit", "credit", "maestro", "rupay", "unionpay"]

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CREDIT_CARD",
            patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
            name="ExtraCardRecognizer",
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        """Luhn over the digits; a valid 12-digit number still needs its context word."""
        digits = "".join(c for c in pattern_text if c.isdigit())
        if not _luhn(digits):
            return False
        return None if len(digits) == 12 else True


class _NeedsContext(PatternRecognizer):
    """A pattern that counts only with one of its context words shortly before it."""

    CONTEXT_RE: re.Pattern[str]
    SCORE_WITH_CONTEXT = 0.7

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: Any = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        """Keep only matches with a context word before them (same string), at a fixed score."""
        kept: list[RecognizerResult] = []
        for result in super().analyze(text, entities, nlp_artifacts, regex_flags):
            if self.CONTEXT_RE.search(_window(text, result.start)):
                result.score = max(result.score, self.SCORE_WITH_CONTEXT)
                kept.append(result)
        return kept


class BankAccountRecognizer(_NeedsContext):
    """Bank account numbers (9-18 digits) after words like account, a/c, acct, bank."""

    PATTERNS = [
        Pattern("account digits", r"(?<![\w.])\d{9,18}(?![\w.])", 0.05),
        Pattern("account grouped", r"(?<![\w.])\d{2,6}(?:[ \-]\d{2,6}){1,4}(?![\w.])", 0.05),
    ]
    CONTEXT_RE = re.compile(
        r"(?:\baccount|\ba/c\b|\bacct\b|\bacc\s*(?:no|num|number)\b|\bbank\b|\bsavings\b"
        r"|\bbeneficiary\b|\bcurrent\s+a)"
    )

    def __init__(self) -> None:
        super().__init__(
            supported_entity="BANK_ACCOUNT",
            patterns=list(self.PATTERNS),
            context=[],
            name="BankAccountRecognizer",
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        """9 to 18 digits, not all one digit."""
        digits = [c for c in pattern_text if c.isdigit()]
        if not 9 <= len(digits) <= 18 or len(set(digits)) == 1:
            return False
        return None


_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MON = r"(?:0?[1-9]|1[0-2])"
_YEAR = r"(?:19|20)\d{2}"


class DateOfBirthRecognizer(_NeedsContext):
    """Dates (numeric or with a month name) after words like DOB, date of birth, born."""

    PATTERNS = [
        Pattern("date d/m/y", rf"\b{_DAY}[/\-.]{_MON}[/\-.]{_YEAR}\b", 0.05),
        Pattern("date m/d/y", rf"\b{_MON}[/\-.]{_DAY}[/\-.]{_YEAR}\b", 0.05),
        Pattern("date y-m-d", rf"\b{_YEAR}[/\-.]{_MON}[/\-.]{_DAY}\b", 0.05),
        Pattern(
            "date d month y", rf"\b{_DAY}(?:st|nd|rd|th)?[\s\-]+{_MONTH}[\s\-,]+{_YEAR}\b", 0.05
        ),
        Pattern("date month d y", rf"\b{_MONTH}\s+{_DAY}(?:st|nd|rd|th)?,?\s+{_YEAR}\b", 0.05),
    ]
    CONTEXT_RE = re.compile(
        r"(?:\bdob\b|\bd\.o\.b|date\s+of\s+birth|\bbirth\s*date|\bbirthday|\bborn\b|\bbirth\b)"
    )
    SCORE_WITH_CONTEXT = 0.75

    def __init__(self) -> None:
        super().__init__(
            supported_entity="DATE_OF_BIRTH",
            patterns=list(self.PATTERNS),
            context=[],
            name="DateOfBirthRecognizer",
        )


class RegionPhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer for the policy's regions only; international format scores
    higher (a `+44 20 …` number needs no context word to be believed)."""

    INTERNATIONAL_SCORE = 0.6

    def __init__(self, regions: tuple[str, ...]) -> None:
        super().__init__(supported_regions=regions, name=f"PhoneRecognizer[{','.join(regions)}]")

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        """Phone numbers valid in the configured regions."""
        results: list[RecognizerResult] = super().analyze(text, entities, nlp_artifacts)
        for result in results:
            if text.startswith(("+", "00"), result.start):
                result.score = max(result.score, self.INTERNATIONAL_SCORE)
        return results


def _in_passport() -> PatternRecognizer:
    # Presidio scores this 0.1, so even with a context word (max(0.1 + 0.35, 0.4) = 0.45) it never
    # reaches the default policy threshold of 0.5; 0.2 lets "passport no. J8369854" through.
    base: list[Pattern] = InPassportRecognizer.PATTERNS
    return InPassportRecognizer(patterns=[Pattern(p.name, p.regex, 0.2) for p in base])


def pattern_recognizers() -> list[EntityRecognizer]:
    """Every pattern recognizer except the phone one (which depends on the policy's regions)."""
    return [
        EmailRecognizer(),
        CreditCardRecognizer(),
        ExtraCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        UsSsnRecognizer(),
        InPanRecognizer(),
        InAadhaarRecognizer(),
        InVehicleRegistrationRecognizer(),
        InVoterRecognizer(),
        _in_passport(),
        InIfscRecognizer(),
        InUpiRecognizer(),
        InMobileRecognizer(),
        InGstinRecognizer(),
        BankAccountRecognizer(),
        DateOfBirthRecognizer(),
        CryptoRecognizer(),
        UkNinoRecognizer(),
        UsItinRecognizer(),
    ]


PHONE_ENTITY = "PHONE_NUMBER"
NER_ENTITIES = frozenset({"PERSON", "LOCATION"})
PATTERN_ENTITIES = frozenset(
    {
        "EMAIL_ADDRESS",
        "CREDIT_CARD",
        "IBAN_CODE",
        "IP_ADDRESS",
        "US_SSN",
        "IN_PAN",
        "IN_AADHAAR",
        "IN_VEHICLE_REGISTRATION",
        "IN_VOTER",
        "IN_PASSPORT",
        "IN_IFSC",
        "IN_UPI_ID",
        "IN_MOBILE",
        "IN_GSTIN",
        "BANK_ACCOUNT",
        "DATE_OF_BIRTH",
        "CRYPTO",
        "UK_NINO",
        "US_ITIN",
        PHONE_ENTITY,
    }
)
"""Entity types detected without an NER model (a test checks it against the recognizers)."""
