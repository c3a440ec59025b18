"""The detection engine: offline, bounded, pre-filtered, cached, batched with unchanged findings."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import spacy
from faker import Faker
from hypothesis import given, settings
from hypothesis import strategies as st
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

from runner.redact.engine import (
    _FAST_PREFILTER,
    _PATTERN_PREFILTER,
    SEPARATOR,
    UNANALYZED,
    DetectionEngine,
    FastContextEnhancer,
    LocalNlpEngine,
    build_engine,
    make_offline,
)
from runner.redact.errors import ModelMissingError
from runner.redact.recognizers import PATTERN_ENTITIES, pattern_recognizers
from runner.redact.rules import AnalysisProfile
from runner.redact.settings import RedactSettings
from tests.redact.conftest import REPO
from tests.redact.support import aadhaar, gstin, indian_mobile, pan

PROFILE = AnalysisProfile(frozenset(PATTERN_ENTITIES), 0.5, ("IN",), frozenset())

OFFLINE_SCRIPT = r"""
import json, os, socket, sys
events = []
# What reaches another host. (urllib3 binds ::1 at import to probe IPv6 support: no traffic.)
OUTBOUND = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto",
            "socket.sendmsg", "socket.gethostbyaddr", "urllib.Request", "http.client.connect"}
def hook(name, args):
    if name in OUTBOUND:
        events.append(name)
sys.addaudithook(hook)
os.environ.pop("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", None)
from runner.redact.engine import build_engine
from runner.redact.recognizers import PATTERN_ENTITIES, pattern_recognizers
from runner.redact.rules import AnalysisProfile
from runner.redact.settings import RedactSettings
engine = build_engine(RedactSettings())
profile = AnalysisProfile(frozenset(PATTERN_ENTITIES), 0.5, ("IN",), frozenset())
texts = ["mail priya@bank.co.in", "ops@example.org", "x@y.museum", "a@b.invalidtld"]
found = [[f.entity for f in engine.analyze_one(t, profile)] for t in texts]
during = list(events)
probe = socket.socket()
probe.settimeout(0.5)
try:
    probe.connect(("127.0.0.1", 9))
except OSError:
    pass
probe.close()
print(json.dumps({"found": found, "during": during, "after_probe": events[len(during):],
                  "env": os.environ.get("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS")}))
"""


def test_no_outbound_connection_is_attempted(tmp_path: Path) -> None:
    """Building the engine and validating emails (tldextract) opens no socket; a probe proves
    the audit hook would have seen one."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "c")}
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["during"] == []
    assert "socket.connect" in report["after_probe"]
    assert report["env"] == ""
    assert report["found"][0] == ["EMAIL_ADDRESS"]
    assert report["found"][1] == ["EMAIL_ADDRESS"]
    assert not (tmp_path / "c" / "python-tldextract").exists()


def test_hostile_input_is_bounded_and_reported_unanalyzed(engine: DetectionEngine) -> None:
    """A string that makes the email regex backtrack times out quickly and comes back whole."""
    hostile = "a." * 4000 + "@"
    started = time.monotonic()
    findings = engine.analyze([(hostile, ""), ("order 4111 1111 1111 1111", "")], PROFILE)
    assert time.monotonic() - started < 5.0
    assert findings[0] == ((0, len(hostile), UNANALYZED, 1.0),)
    assert findings[1][0].entity == UNANALYZED
    assert engine.stats["timeouts"] >= 1


def test_oversize_strings_are_not_analysed(engine: DetectionEngine) -> None:
    """A string over max_string_bytes is reported UNANALYZED without calling Presidio."""
    calls = engine.stats["calls"]
    big = "9" * (RedactSettings().max_string_bytes + 1)
    assert engine.analyze_one(big, PROFILE)[0].entity == UNANALYZED
    assert engine.stats["calls"] == calls


def test_prefilter_skips_strings_without_digits_or_at(engine: DetectionEngine) -> None:
    """Text that no pattern recognizer can match never reaches Presidio."""
    calls = engine.stats["calls"]
    assert engine.analyze([("Home", ""), ("Open an account today", ""), ("abc", "")], PROFILE) == [
        (),
        (),
        (),
    ]
    assert engine.stats["calls"] == calls


def test_repeated_strings_come_from_the_cache(engine: DetectionEngine) -> None:
    """The second analysis of the same string is a cache hit with the same findings."""
    text = f"card 4111 1111 1111 1111 ref {random.randint(0, 10**9)}"  # noqa: S311
    first = engine.analyze_one(text, PROFILE)
    hits, calls = engine.stats["cache_hits"], engine.stats["calls"]
    assert engine.analyze_one(text, PROFILE) == first
    assert engine.stats["cache_hits"] == hits + 1
    assert engine.stats["calls"] == calls


def test_no_entities_means_no_work(engine: DetectionEngine) -> None:
    """A policy with no detectable entities finds nothing and calls nothing."""
    empty = AnalysisProfile(frozenset(), 0.5, ("IN",), frozenset())
    assert engine.analyze_one("card 4111 1111 1111 1111", empty) == ()


def _mixed_strings(n: int) -> list[tuple[str, str]]:
    fake = Faker(["en_IN", "en_US", "en_GB"])
    Faker.seed(5)
    rng = random.Random(5)  # noqa: S311 - reproducible test data
    out: list[tuple[str, str]] = []
    makers: list[Callable[[], str]] = [
        lambda: f"Email {fake.email()} today",
        lambda: f"card {fake.credit_card_number()}",
        lambda: f"Aadhaar {aadhaar(rng)}",
        lambda: f"PAN {pan(rng)} GSTIN {gstin(rng)}",
        lambda: indian_mobile(rng),
        lambda: f"IBAN {fake.iban()}",
        lambda: fake.phone_number(),
        lambda: f"{fake.address()} {rng.randint(1, 99)}",
        lambda: "mobile",  # a context word alone; the next string must not borrow it
        lambda: str(rng.randint(6_000_000_000, 9_999_999_999)),
        lambda: (
            f"Order #{rng.randint(1000, 99999)} shipped on "
            f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
        ),
        lambda: f"account {rng.randint(10**9, 10**12)}",
    ]
    for i in range(n):
        out.append((makers[i % len(makers)](), "phone" if i % 17 == 0 else ""))
    return out


def test_joined_analysis_finds_exactly_what_per_string_analysis_finds(
    engine: DetectionEngine,
) -> None:
    """Joining strings per Presidio call changes no finding, not even through context words."""
    items = _mixed_strings(240)
    single = build_engine(RedactSettings(join_strings=1, cache_size=0))
    expected = [single.analyze([item], PROFILE)[0] for item in items]
    joined = build_engine(RedactSettings(join_strings=64, cache_size=0))
    assert joined.analyze(items, PROFILE) == expected
    assert joined.stats["calls"] < single.stats["calls"] / 10


def test_separator_blocks_context_from_the_previous_string(engine: DetectionEngine) -> None:
    """A context word at the end of one string does not boost a number in the next one."""
    joined = build_engine(RedactSettings(cache_size=0))
    found = joined.analyze([("call my mobile", ""), ("9876543210", "")], PROFILE)
    assert found[1] == ()
    assert "\u2029" in SEPARATOR


def test_context_words_from_the_key_count(engine: DetectionEngine) -> None:
    """The key a value sits under is context: a bare 10-digit number under `mobile` is found."""
    found = engine.analyze([("9876543210", "mobile"), ("9876543210", "")], PROFILE)
    assert {f.entity for f in found[0]} >= {"IN_MOBILE"}
    assert found[1] == ()


def test_a_missing_ner_model_refuses_to_start() -> None:
    """Naming a spaCy pipeline that is not installed is a clear start-up error, no download."""
    with pytest.raises(ModelMissingError, match="not an installed spaCy pipeline"):
        build_engine(RedactSettings(ner_model="en_core_web_not_installed"))


def test_an_installed_ner_pipeline_adds_person_and_location(tmp_path: Path) -> None:
    """A local spaCy pipeline directory (here an entity ruler) turns on PERSON and LOCATION."""
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(  # type: ignore[attr-defined]
        [{"label": "PERSON", "pattern": "Ravi Kumar"}, {"label": "GPE", "pattern": "Mumbai"}]
    )
    nlp.to_disk(tmp_path / "ner")
    ner = build_engine(RedactSettings(ner_model=str(tmp_path / "ner")))
    profile = AnalysisProfile(PROFILE.entities | {"PERSON", "LOCATION"}, 0.5, ("IN",), frozenset())
    text = "Ravi Kumar moved to Mumbai"
    found = {(text[f.start : f.end], f.entity) for f in ner.analyze_one(text, profile)}
    assert found == {("Ravi Kumar", "PERSON"), ("Mumbai", "LOCATION")}
    assert {"PERSON", "LOCATION"} <= ner.supported


def test_prefilter_is_a_necessary_condition(engine: DetectionEngine, corpus_dir: Path) -> None:
    """No string the pre-filter skips gets a finding from plain Presidio (corpus text, generated
    PII, and near misses)."""
    strings = [text for text, _ in _mixed_strings(240)]
    strings += [
        "Q4 2024 results",
        "₹1,24,560.00",
        "12:30:45",
        "took 123ms",
        "v1.2.3",
        "born 5 March 1988",
        "SBIN0ABCDEF",
        "12CD345",
        "AB1234",
        "1.1.1.1",
    ]
    for path in sorted(corpus_dir.glob("*.json"))[::6]:
        stack: list[Any] = [orjson.loads(path.read_bytes())]
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                stack.extend(v.values())
            elif isinstance(v, list):
                stack.extend(v)
            elif isinstance(v, str) and len(v) < 2000:
                strings.append(v)
    skipped = [s for s in strings if not engine.might_hold_pii(s)]
    assert len(skipped) > len(strings) / 2
    assert [(s, engine.presidio(s, PROFILE)) for s in skipped if engine.presidio(s, PROFILE)] == []


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.text(max_size=12)
        | st.sampled_from(
            ["DOB", "d.o.b", "Born", "BIRTH", "fe80::1:", "::ab:", "bc1", "CD12", "UN93", "@"]
        )
        | st.from_regex(r"[A-Z]{4}0[A-Z0-9]{6}|[A-Za-z]\d{4}|\d{1,3}(\.\d{1,3}){3}", fullmatch=True)
        | st.from_regex(r"[13][a-km-zA-HJ-NP-Z1-9]{25,30}", fullmatch=True),
        max_size=5,
    )
)
def test_fast_prefilter_accepts_exactly_what_the_readable_one_accepts(parts: list[str]) -> None:
    """The rewritten pre-filter (every alternative entered at one character class) accepts the
    same strings as the readable definition (which a test above checks against Presidio)."""
    text = " ".join(parts)
    assert (_FAST_PREFILTER.search(text) is not None) == (
        _PATTERN_PREFILTER.search(text) is not None
    )


def test_only_d_and_b_fold_to_the_context_words_first_letters() -> None:
    """The fast pre-filter enters the DOB words at `d`, `D`, `b`, `B` only: no other character
    matches them case-insensitively."""
    folding = re.compile(r"(?i:[db])")
    assert [c for c in map(chr, range(0x110000)) if folding.fullmatch(c)] == ["B", "D", "b", "d"]


def test_fast_prefilter_on_the_corpus_strings(engine: DetectionEngine, corpus_dir: Path) -> None:
    """On every corpus string both pre-filters agree."""
    for path in sorted(corpus_dir.glob("*.json")):
        stack: list[Any] = [orjson.loads(path.read_bytes())]
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                stack.extend(v.values())
            elif isinstance(v, list):
                stack.extend(v)
            elif isinstance(v, str):
                fast = _FAST_PREFILTER.search(v) is not None
                assert fast == (_PATTERN_PREFILTER.search(v) is not None), v[:200]


def test_the_fast_context_enhancer_scores_like_presidios_own() -> None:
    """Bisection, a keyword set and shallow copies change no score: the engine's enhancer and
    Presidio's stock one give the same results, on single strings and on a joined text."""
    make_offline()

    def analyzer(enhancer: LemmaContextAwareEnhancer) -> AnalyzerEngine:
        nlp = LocalNlpEngine(None)
        nlp.load()
        registry = RecognizerRegistry(recognizers=pattern_recognizers(), supported_languages=["en"])
        return AnalyzerEngine(
            registry=registry,
            nlp_engine=nlp,
            supported_languages=["en"],
            context_aware_enhancer=enhancer,
        )

    stock, fast = analyzer(LemmaContextAwareEnhancer()), analyzer(FastContextEnhancer())
    texts = [f"{context}: {text}" if context else text for text, context in _mixed_strings(120)]
    texts.append(SEPARATOR.join(texts[:64]))
    entities = sorted(PATTERN_ENTITIES)
    for text in texts:
        found = [
            sorted(
                (r.entity_type, r.start, r.end, round(r.score, 9))
                for r in engine.analyze(text=text, language="en", entities=entities)
            )
            for engine in (stock, fast)
        ]
        assert found[0] == found[1], text
