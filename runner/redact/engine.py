"""Presidio's AnalyzerEngine on a blank spaCy tokenizer: offline, bounded, batched and cached.

- **Offline.** No model download, no network: the tokenizer is `spacy.blank("en")` (lemmas are
  the lower-cased tokens, so context words work), and tldextract (used by Presidio's email
  recognizer) gets an extractor that reads only its bundled suffix list snapshot.
- **Bounded.** Presidio's per-pattern regex timeout is cut from 60 s to `regex_timeout_s`; a
  string whose analysis timed out or failed is reported as UNANALYZED, which callers mask whole.
  Strings over `max_string_bytes` are not analysed at all (also UNANALYZED).
- **Fast.** One combined pre-filter skips strings no recognizer can match (pattern recognizers
  all need a digit or an `@`); results are cached per (policy profile, context, text); the
  strings that remain are joined, up to `join_strings` per call, with a separator that keeps
  matches and context words from crossing between strings.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import unicodedata
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import presidio_analyzer.analyzer_engine as presidio_engine_module
import presidio_analyzer.pattern_recognizer as presidio_pattern_module
import spacy
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import SpacyRecognizer
from spacy.attrs import IDX, LEMMA, LOWER
from spacy.lang.en.stop_words import STOP_WORDS

from runner.redact.errors import ModelMissingError
from runner.redact.recognizers import (
    NER_ENTITIES,
    PATTERN_ENTITIES,
    PHONE_ENTITY,
    SEGMENT_MARK,
    RegionPhoneRecognizer,
    pattern_recognizers,
)
from runner.redact.rules import AnalysisProfile
from runner.redact.settings import RedactSettings

TLDEXTRACT_ENV = "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"
UNANALYZED = "UNANALYZED"
"""Pseudo-entity for a string that could not be analysed; it is masked whole."""
_FILLER = " ".join(["\ua66e"] * 6)
SEPARATOR = f"\n{SEGMENT_MARK} {_FILLER} {SEGMENT_MARK}\n"
"""Between joined strings: line breaks and letters stop every pattern, the paragraph mark
bounds our context windows, and six filler words push earlier strings out of Presidio's
five-word context window."""
_PATTERN_PREFILTER = re.compile(
    r"@"  # email, UPI
    r"|\d(?:[ \-./()+]{0,3}\d){5}"  # 6+ digits in a number: phone, card, Aadhaar, IBAN, dates
    r"|[A-Za-z]\d{4}"  # PAN, GSTIN, vehicle registration, passport, voter id
    r"|[A-Z]{4}0[A-Z0-9]{6}"  # IFSC
    r"|(?:CD|CC|UN)[1-9]\d"  # diplomatic vehicle registration
    r"|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"  # IPv4
    r"|[0-9A-Fa-f]{0,4}::?[0-9A-Fa-f]{1,4}:"  # IPv6
    r"|(?i:dob|d\.o\.b|birth|born)"  # the only context that makes a short date a DOB
    r"|(?:bc1|\b[13])[a-zA-HJ-NP-Z0-9]{25,}"  # crypto wallet addresses
)
"""A necessary condition of every pattern recognizer at the policy threshold: a string without
any of these cannot produce a finding (a test checks this against Presidio itself)."""
_FAST_PREFILTER = re.compile(
    r"[\d@:DdBb](?:"
    r"(?<=@)"
    r"|(?<=\d)(?:[ \-./()+]{0,3}\d){5}"
    r"|(?<=[A-Za-z]\d)\d{3}"
    r"|(?<=[A-Z]{4}0)[A-Z0-9]{6}"
    r"|(?<=(?:CD|CC|UN)[1-9])\d"
    r"|(?<=\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
    r"|(?<=:):?[0-9A-Fa-f]{1,4}:"
    r"|(?<=[Dd])(?i:ob|\.o\.b)"
    r"|(?<=[Bb])(?i:irth|orn)"
    r"|(?:(?<=bc1)|(?<=\b[13]))[a-zA-HJ-NP-Z0-9]{25,}"
    r")"
)
"""`_PATTERN_PREFILTER` rewritten to accept the same strings several times faster: every
alternative starts at one character class (digits, `@`, `:`, `d`, `b`: where its match, or an
equivalent one, must begin), so the regex engine skips every other character in C, and
lookbehinds re-check what came before. A test checks that both accept the same strings."""
_NER_EXTRA = re.compile(r"[A-Z\x80-\U0010ffff]")
"""With an NER model, capitals and non-ASCII text may also hold names and places."""
_CLEAN_MAX = 50_000
_CLEAN_TEXT_MAX = 256
_PRESIDIO_LOGGER = "presidio-analyzer"
_VOCAB_LIMIT = 1_000_000


class Finding(NamedTuple):
    """One detected span of one string."""

    start: int
    end: int
    entity: str
    score: float


def make_offline() -> None:
    """Make tldextract (Presidio's email validation) use only its bundled suffix-list snapshot.

    The environment variable covers extractors created later; the module-level extractor,
    created when tldextract was first imported, is replaced because it read the variable then.
    """
    os.environ[TLDEXTRACT_ENV] = ""
    import tldextract.tldextract as tx

    tx.TLD_EXTRACTOR = tx.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)
    # Load the snapshot now: the first email match would otherwise load it inside Presidio's
    # regex loop, whose timeout clock counts that time too (a false "timed out").
    tx.TLD_EXTRACTOR("example.com")


class _TimeoutCounter(logging.Handler):
    """Counts Presidio's "regex timed out" warnings: Presidio swallows the timeout itself."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "timed out" in str(record.msg):
            self.count += 1


def _presidio_log_counter() -> _TimeoutCounter:
    """Route Presidio's stdlib logger to one counter per process (and nowhere else).

    Presidio's warnings would otherwise reach stderr unformatted; none carries payload text,
    but nothing of Presidio's is logged on purpose: the parent logs counts.
    """
    logger = logging.getLogger(_PRESIDIO_LOGGER)
    for handler in logger.handlers:
        if isinstance(handler, _TimeoutCounter):
            return handler
    counter = _TimeoutCounter()
    logger.handlers = [counter]
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    return counter


class _CheapCopy(list[RecognizerResult]):
    """Results whose `copy.deepcopy` copies only what the context enhancer changes.

    The enhancer deep-copies every result (explanations, metadata) before raising scores; the
    engine never looks at the originals again, so a copy of each result, of its metadata and
    of its explanation (the only objects the enhancer writes to) is as good and far cheaper.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[RecognizerResult]:
        out: list[RecognizerResult] = []
        for result in self:
            clone = copy.copy(result)
            if result.recognition_metadata is not None:
                clone.recognition_metadata = dict(result.recognition_metadata)
            if result.analysis_explanation is not None:
                clone.analysis_explanation = copy.copy(result.analysis_explanation)
            out.append(clone)
        return out


class FastContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's lemma context enhancer without its linear scans and deep copies (same
    results).

    Finding a match's token walked every token of the text for every finding, and context
    words were looked up in a list; on joined text both grow with the batch. A bisection over
    token offsets and a set give the same answers. The results are copied shallowly
    (`_CheapCopy`) instead of deeply.
    """

    def __init__(self) -> None:
        super().__init__()
        self._keywords_of: NlpArtifacts | None = None
        self._keywords: frozenset[str] = frozenset()

    def enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: NlpArtifacts,
        recognizers: list[EntityRecognizer],
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        """Presidio's enhancement, on cheap copies of the results."""
        return super().enhance_using_context(
            text, _CheapCopy(raw_results), nlp_artifacts, recognizers, context
        )

    @staticmethod
    def _find_index_of_match_token(
        word: str, start: int, tokens: Any, tokens_indices: list[int]
    ) -> int:
        i = bisect_right(tokens_indices, start) - 1
        if i < 0:
            return 0
        if start >= tokens_indices[i] + len(tokens[i]):
            i += 1
        if i >= len(tokens_indices):
            raise ValueError("match is past the last token")
        return i

    def _extract_surrounding_words(
        self, nlp_artifacts: NlpArtifacts, word: str, start: int
    ) -> list[str]:
        if not nlp_artifacts.tokens:
            return [""]
        if self._keywords_of is not nlp_artifacts:
            self._keywords_of = nlp_artifacts
            self._keywords = frozenset(nlp_artifacts.keywords)
        keywords = self._keywords
        lemmas = nlp_artifacts.lemmas
        index = self._find_index_of_match_token(
            word, start, nlp_artifacts.tokens, nlp_artifacts.tokens_indices
        )
        found: list[str] = []
        for step, count in ((-1, self.context_prefix_count), (1, self.context_suffix_count)):
            i, remaining = index, count + 1
            while 0 <= i < len(lemmas) and remaining > 0:
                lemma = lemmas[i].lower()
                if lemma in keywords:
                    found.append(lemma)
                    remaining -= 1
                i += step
        return list(set(found))


class LocalNlpEngine(SpacyNlpEngine):
    """spaCy without downloads: a blank English tokenizer, or an installed pipeline for NER."""

    def __init__(self, model: str | None) -> None:
        super().__init__(models=[{"lang_code": "en", "model_name": model or "blank:en"}])
        self.model = model
        self._punct: dict[str, bool] = {}

    def load(self) -> None:
        """Build the pipeline; refuse a model that is not installed (never download one)."""
        if self.model is None:
            nlp = spacy.blank("en")
        else:
            if not (spacy.util.is_package(self.model) or Path(self.model).is_dir()):
                raise ModelMissingError(
                    f"[pii] ner_model = {self.model!r} is not an installed spaCy pipeline. "
                    "Install the official wheel from your artifact mirror into the Runner's "
                    f"environment (pip install {self.model}-<version>-py3-none-any.whl) or "
                    "remove ner_model to run pattern-only."
                )
            nlp = spacy.load(self.model, exclude=["parser"])
        self.nlp = {"en": nlp}  # type: ignore[assignment]

    def get_supported_entities(self) -> list[str]:
        """PERSON and LOCATION with a model, nothing without."""
        return sorted(NER_ENTITIES) if self.model else []

    @property
    def vocab_size(self) -> int:
        """Strings interned by spaCy so far (it never forgets them on its own)."""
        return len(self.nlp["en"].vocab.strings) if self.nlp else 0

    def is_stopword(self, word: str, language: str) -> bool:
        """spaCy's English stop words (a set lookup; does not grow the vocabulary)."""
        return word.lower() in STOP_WORDS

    def is_punct(self, word: str, language: str) -> bool:
        """spaCy's definition: every character is Unicode punctuation."""
        found = self._punct.get(word)
        if found is None:
            found = bool(word) and all(unicodedata.category(c).startswith("P") for c in word)
            if len(self._punct) > 100_000:
                self._punct.clear()
            self._punct[word] = found
        return found

    def _doc_to_nlp_artifact(self, doc: Any, language: str) -> NlpArtifacts:
        strings = doc.vocab.strings
        if self.model:
            arr = doc.to_array([LEMMA, LOWER, IDX]).tolist()
            lemmas = [strings[lem].lower() or strings[low] for lem, low, _ in arr]
        else:
            arr = doc.to_array([LOWER, LOWER, IDX]).tolist()
            lemmas = [strings[low] for _, low, _ in arr]
        entities: list[Any] = []
        scores: list[float] = []
        if self.model:
            entities, scores = self._get_updated_entities(
                self._get_entities(doc), self._get_scores_for_entities(doc)
            )
        return NlpArtifacts(
            entities=entities,
            tokens=doc,
            tokens_indices=[row[2] for row in arr],
            lemmas=lemmas,
            nlp_engine=self,
            language=language,
            scores=scores,
        )


class DetectionEngine:
    """Finds PII spans in many strings at once. Built by `build_engine`; not thread-safe."""

    def __init__(
        self,
        analyzer: AnalyzerEngine,
        nlp: LocalNlpEngine,
        settings: RedactSettings,
        timeouts: _TimeoutCounter,
    ) -> None:
        self._analyzer = analyzer
        self._nlp = nlp
        self._settings = settings
        self._timeouts = timeouts
        self._ner_prefilter = _NER_EXTRA if nlp.model else None
        self._min_len = 2 if nlp.model else 6
        self._cache: OrderedDict[tuple[int, str, str], tuple[Finding, ...]] = OrderedDict()
        self._clean: set[str] = set()
        """Short strings the pre-filter rejected (DOM text repeats: a set lookup is cheaper)."""
        self._profile_ids: dict[AnalysisProfile, int] = {}
        self._phones: dict[tuple[str, ...], EntityRecognizer] = {}
        self.supported = PATTERN_ENTITIES | (NER_ENTITIES if nlp.model else frozenset())
        self.stats: dict[str, int] = dict.fromkeys(
            ("calls", "analysed", "cache_hits", "prefiltered", "timeouts", "failures", "oversize"),
            0,
        )

    def analyze(
        self, items: Sequence[tuple[str, str]], profile: AnalysisProfile
    ) -> list[tuple[Finding, ...]]:
        """Findings for each (text, context words) item, in order; context words only help."""
        out: list[tuple[Finding, ...]] = [()] * len(items)
        if not profile.entities:
            return out
        pid = self._profile_ids.setdefault(profile, len(self._profile_ids))
        cache = self._cache
        todo: dict[tuple[int, str, str], list[int]] = {}
        max_len = self._settings.max_string_bytes
        clean = self._clean
        for i, (text, context) in enumerate(items):
            if text in clean:
                self.stats["prefiltered"] += 1
                continue
            if not self.might_hold_pii(text):
                self.stats["prefiltered"] += 1
                if len(text) <= _CLEAN_TEXT_MAX:
                    if len(clean) >= _CLEAN_MAX:
                        clean.clear()
                    clean.add(text)
                continue
            if len(text) > max_len // 4 and len(text.encode("utf-8", "surrogatepass")) > max_len:
                self.stats["oversize"] += 1
                out[i] = (Finding(0, len(text), UNANALYZED, 1.0),)
                continue
            key = (pid, context, text)
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
                self.stats["cache_hits"] += 1
                out[i] = hit
            else:
                todo.setdefault(key, []).append(i)
        if todo:
            for key, findings in self._analyze_all(list(todo), profile).items():
                for i in todo[key]:
                    out[i] = findings
        return out

    def _analyze_all(
        self, keys: list[tuple[int, str, str]], profile: AnalysisProfile
    ) -> dict[tuple[int, str, str], tuple[Finding, ...]]:
        results: dict[tuple[int, str, str], tuple[Finding, ...]] = {}
        chunk: list[tuple[int, str, str]] = []
        chars = 0
        limit_n, limit_chars = self._settings.join_strings, self._settings.join_chars
        for key in keys:
            size = len(key[1]) + len(key[2]) + len(SEPARATOR) + 2
            if chunk and (len(chunk) >= limit_n or chars + size > limit_chars):
                results.update(self._run(chunk, profile))
                chunk, chars = [], 0
            chunk.append(key)
            chars += size
        if chunk:
            results.update(self._run(chunk, profile))
        if self._nlp.vocab_size > _VOCAB_LIMIT:
            self._nlp.load()
        return results

    def _run(
        self, chunk: list[tuple[int, str, str]], profile: AnalysisProfile
    ) -> dict[tuple[int, str, str], tuple[Finding, ...]]:
        pieces: list[str] = []
        value_starts: list[int] = []
        piece_starts: list[int] = []
        pos = 0
        for _, context, text in chunk:
            prefix = f"{context}: " if context else ""
            piece = prefix + text
            if SEGMENT_MARK in piece:
                piece = piece.replace(SEGMENT_MARK, "\u2028")
            piece_starts.append(pos)
            value_starts.append(pos + len(prefix))
            pieces.append(piece)
            pos += len(piece) + len(SEPARATOR)
        joined = SEPARATOR.join(pieces)
        before = self._timeouts.count
        self.stats["calls"] += 1
        self.stats["analysed"] += len(chunk)
        try:
            raw = self._analyzer.analyze(
                text=joined,
                language="en",
                entities=sorted(profile.entities),
                score_threshold=profile.min_score,
                ad_hoc_recognizers=self._phone(profile),
                allow_list=sorted(profile.allow_values) or None,
            )
        except Exception:  # noqa: BLE001 - Presidio's messages can quote the text; fail closed
            self.stats["failures"] += 1
            return {key: (Finding(0, len(key[2]), UNANALYZED, 1.0),) for key in chunk}
        if self._timeouts.count != before:
            self.stats["timeouts"] += self._timeouts.count - before
            return {key: (Finding(0, len(key[2]), UNANALYZED, 1.0),) for key in chunk}
        found: list[list[Finding]] = [[] for _ in chunk]
        for r in raw:
            i = bisect_right(piece_starts, r.start) - 1
            if i < 0:
                continue
            start = value_starts[i]
            end = start + len(chunk[i][2])
            s, e = max(r.start, start) - start, min(r.end, end) - start
            if e > s:
                found[i].append(Finding(s, e, r.entity_type, float(r.score)))
        results = {key: tuple(sorted(f)) for key, f in zip(chunk, found, strict=True)}
        cap = self._settings.cache_size
        if cap:
            for key, findings in results.items():
                self._cache[key] = findings
            while len(self._cache) > cap:
                self._cache.popitem(last=False)
        return results

    def _phone(self, profile: AnalysisProfile) -> list[EntityRecognizer] | None:
        if PHONE_ENTITY not in profile.entities:
            return None
        recognizer = self._phones.get(profile.phone_regions)
        if recognizer is None:
            recognizer = RegionPhoneRecognizer(profile.phone_regions)
            self._phones[profile.phone_regions] = recognizer
        return [recognizer]

    def analyze_one(self, text: str, profile: AnalysisProfile) -> tuple[Finding, ...]:
        """Findings for one string, through the pre-filter and the cache."""
        return self.analyze([(text, "")], profile)[0]

    def might_hold_pii(self, text: str) -> bool:
        """The pre-filter: False means no recognizer can find anything in `text`."""
        if len(text) < self._min_len:
            return False
        if _FAST_PREFILTER.search(text) is not None:
            return True
        return self._ner_prefilter is not None and self._ner_prefilter.search(text) is not None

    def presidio(self, text: str, profile: AnalysisProfile) -> list[RecognizerResult]:
        """Plain Presidio on one string: no pre-filter, cache or joining (the naive baseline,
        and the reference the tests compare the fast path with)."""
        return list(
            self._analyzer.analyze(
                text=text,
                language="en",
                entities=sorted(profile.entities),
                score_threshold=profile.min_score,
                ad_hoc_recognizers=self._phone(profile),
                allow_list=sorted(profile.allow_values) or None,
            )
        )


def build_engine(settings: RedactSettings) -> DetectionEngine:
    """Build the analyzer with every recognizer; raises ModelMissingError for a missing model."""
    make_offline()
    # Presidio reads these module globals at match time; they are ints only by annotation.
    setattr(presidio_pattern_module, "REGEX_TIMEOUT_SECONDS", settings.regex_timeout_s)  # noqa: B010
    setattr(presidio_engine_module, "REGEX_TIMEOUT_SECONDS", settings.regex_timeout_s)  # noqa: B010
    timeouts = _presidio_log_counter()
    nlp = LocalNlpEngine(settings.ner_model)
    nlp.load()
    recognizers: list[EntityRecognizer] = pattern_recognizers()
    if settings.ner_model:
        recognizers.append(SpacyRecognizer(supported_entities=sorted(NER_ENTITIES)))
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
    analyzer = AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp,
        supported_languages=["en"],
        context_aware_enhancer=FastContextEnhancer(),
    )
    return DetectionEngine(analyzer, nlp, settings, timeouts)
