"""True and false positives of every recognizer, through the real engine at the default policy."""

from __future__ import annotations

import random

import pytest

from runner.redact.engine import DetectionEngine
from runner.redact.recognizers import PATTERN_ENTITIES, gstin_check_char, pattern_recognizers
from runner.redact.rules import AnalysisProfile
from tests.redact.support import aadhaar, gstin, pan, verhoeff_digit

DEFAULT = AnalysisProfile(
    entities=frozenset(PATTERN_ENTITIES),
    min_score=0.5,
    phone_regions=("IN",),
    allow_values=frozenset(),
)


def spans(
    engine: DetectionEngine, text: str, entity: str, profile: AnalysisProfile = DEFAULT
) -> list[str]:
    """The substrings of `text` found as `entity`."""
    return [text[f.start : f.end] for f in engine.analyze_one(text, profile) if f.entity == entity]


CASES: list[tuple[str, str, str | None]] = [
    # (entity, text, expected span or None for "must not be found")
    ("IN_IFSC", "IFSC: SBIN0001234", "SBIN0001234"),
    ("IN_IFSC", "branch code HDFC0CAGSBK", "HDFC0CAGSBK"),
    ("IN_IFSC", "order SBIN1001234 shipped", None),
    ("IN_IFSC", "sbin0001234 in lower case", None),
    ("IN_UPI_ID", "pay to rahul.sharma@okaxis now", "rahul.sharma@okaxis"),
    ("IN_UPI_ID", "UPI: 9876543210@ybl", "9876543210@ybl"),
    ("IN_UPI_ID", "mail john@example.com today", None),
    ("IN_UPI_ID", "see @media screen rules", None),
    ("IN_MOBILE", "call +91 98765 43210", "+91 98765 43210"),
    ("IN_MOBILE", "+91-9876543210", "+91-9876543210"),
    ("IN_MOBILE", "mobile: 9876543210", "9876543210"),
    ("IN_MOBILE", "order 9876543210 placed", None),
    ("IN_MOBILE", "mobile 5876543210", None),
    ("IN_MOBILE", "mobile 9999999999", None),
    ("IN_GSTIN", "GSTIN 27AAPFU0939F1ZV", "27AAPFU0939F1ZV"),
    ("IN_GSTIN", "GSTIN 27AAPFU0939F1ZX", None),
    ("BANK_ACCOUNT", "Account no. 123456789012", "123456789012"),
    ("BANK_ACCOUNT", "credit to a/c 50100234567891", "50100234567891"),
    ("BANK_ACCOUNT", "invoice 123456789012", None),
    ("BANK_ACCOUNT", "account 111111111111", None),
    ("DATE_OF_BIRTH", "DOB: 12/05/1990", "12/05/1990"),
    ("DATE_OF_BIRTH", "born on 5 March 1988", "5 March 1988"),
    ("DATE_OF_BIRTH", "date of birth 1990-05-12", "1990-05-12"),
    ("DATE_OF_BIRTH", "paid on 12/05/2023", None),
    ("IN_PAN", "PAN ABCPE1234F", "ABCPE1234F"),
    ("IN_PAN", "code ABCDE", None),
    ("IN_PASSPORT", "passport no. J8369854", "J8369854"),
    ("IN_PASSPORT", "ref J8369854", None),
    ("CREDIT_CARD", "card 4111 1111 1111 1111", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "card 4111 1111 1111 1112", None),
    ("IBAN_CODE", "IBAN GB82 WEST 1234 5698 7654 32", "GB82 WEST 1234 5698 7654 32"),
    ("IBAN_CODE", "IBAN GB82 WEST 1234 5698 7654 33", None),
    ("EMAIL_ADDRESS", "write to priya.k@bank.co.in", "priya.k@bank.co.in"),
    ("EMAIL_ADDRESS", "logo@2x.png", None),
    ("IP_ADDRESS", "from 203.0.113.7", "203.0.113.7"),
    ("US_SSN", "SSN 536-22-8726", "536-22-8726"),
    ("PHONE_NUMBER", "London +44 20 7946 0958", "+44 20 7946 0958"),
]


@pytest.mark.parametrize(("entity", "text", "expected"), CASES)
def test_recognizer_true_and_false_positives(
    engine: DetectionEngine, entity: str, text: str, expected: str | None
) -> None:
    """Each recognizer finds its value and leaves look-alikes alone."""
    found = spans(engine, text, entity)
    if expected is None:
        assert found == []
    else:
        assert expected in found


def test_aadhaar_needs_a_valid_verhoeff_check_digit(engine: DetectionEngine) -> None:
    """A valid Aadhaar is found with or without spaces; one wrong digit is not."""
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    number = aadhaar(rng)
    spaced = f"{number[:4]} {number[4:8]} {number[8:]}"
    assert spans(engine, f"id {number}", "IN_AADHAAR") == [number]
    assert spans(engine, f"id {spaced}", "IN_AADHAAR") == [spaced]
    wrong = number[:-1] + str((int(number[-1]) + 1) % 10)
    assert spans(engine, f"id {wrong}", "IN_AADHAAR") == []


def test_generated_identifiers_are_found(engine: DetectionEngine) -> None:
    """Generated PANs, GSTINs and Aadhaar numbers are all detected."""
    rng = random.Random(11)  # noqa: S311 - reproducible test data
    for _ in range(20):
        for entity, value in (
            ("IN_PAN", pan(rng)),
            ("IN_GSTIN", gstin(rng)),
            ("IN_AADHAAR", aadhaar(rng)),
        ):
            assert value in spans(engine, f"value {value} end", entity)


def test_uk_nhs_is_not_loaded_so_indian_mobiles_are_not_nhs_numbers(
    engine: DetectionEngine,
) -> None:
    """UK_NHS (whose checksum matches 10-digit Indian mobiles) is not among the recognizers."""
    names = {type(r).__name__ for r in pattern_recognizers()}
    assert "NhsRecognizer" not in names
    assert "UK_NHS" not in engine.supported


def test_phone_regions_follow_the_policy(engine: DetectionEngine) -> None:
    """A French national-format number is a phone only when the policy includes region FR."""
    text = "phone 06 12 34 56 78"
    india = DEFAULT
    france = AnalysisProfile(india.entities, 0.5, ("FR", "IN"), frozenset())
    assert spans(engine, text, "PHONE_NUMBER", india) == []
    assert spans(engine, text, "PHONE_NUMBER", france) == ["06 12 34 56 78"]


def test_pattern_entities_match_the_recognizers() -> None:
    """The documented entity list is exactly what the recognizers detect (plus the phone one)."""
    entities = {e for r in pattern_recognizers() for e in r.supported_entities}
    assert entities | {"PHONE_NUMBER"} == PATTERN_ENTITIES


def test_gstin_check_character_is_the_published_algorithm() -> None:
    """The check character of a published GSTIN is reproduced."""
    assert gstin_check_char("27AAPFU0939F1Z") == "V"


def test_verhoeff_helper_agrees_with_presidio(engine: DetectionEngine) -> None:
    """The tests' Verhoeff generator and Presidio's validator agree."""
    body = "23456789012"
    assert spans(engine, f"x {body}{verhoeff_digit(body)}", "IN_AADHAAR")
