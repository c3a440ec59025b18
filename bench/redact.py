"""Benchmark of the PII engine (issue 3).

    .venv/bin/python bench/redact.py [--sessions 40] [--naive-strings 4000] [--no-pool]

Input: every rrweb recording of ../shared/corpus/rrweb (one batch per stream) plus generated
banking sessions (a dashboard snapshot, then pointer moves, scrolls, typing, balance updates,
toasts, console logs and API calls with JSON bodies, ~8 % of strings holding PII), cut into
batches of 100 events like an SDK sends them.

Prints, for one core (the engine in this process): events/s and strings/s in mask_all and
detect mode (from cold caches, then once more with every string seen before; the last column
is the rate per second of CPU, steadier than wall-clock time on a shared machine), next to a
naive baseline on the same strings with the same recognizers and NLP
engine: Presidio `AnalyzerEngine.analyze` + `AnonymizerEngine.anonymize` once per string. It
checks that the engine's findings equal the baseline's on every analysed string. Then the
whole engine through `Redactor` with its worker processes (both cores), and the detect-mode
recall per entity type from the leak-suite generator.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from presidio_anonymizer import AnonymizerEngine  # noqa: E402
from presidio_anonymizer.entities import OperatorConfig  # noqa: E402

from runner.policy.model import PiiPolicy, TenantPolicy  # noqa: E402
from runner.redact import Redactor, RedactRequest  # noqa: E402
from runner.redact.engine import DetectionEngine, build_engine  # noqa: E402
from runner.redact.messages import BatchRequest, BatchWire  # noqa: E402
from runner.redact.mirror import SessionMirror  # noqa: E402
from runner.redact.payloads import SECRET, Collector  # noqa: E402
from runner.redact.rrweb import Walker  # noqa: E402
from runner.redact.rules import canonical, compile_policy, fingerprint  # noqa: E402
from runner.redact.settings import RedactSettings  # noqa: E402
from runner.redact.tokens import Tokenizer, TokenKeys  # noqa: E402
from runner.redact.worker import WorkerState  # noqa: E402
from runner.telemetry.logging import configure  # noqa: E402
from tests.redact.leakgen import leaked, plant, recall_table  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus" / "rrweb"
KEY = bytes(range(32))
NAV = ["Home", "Accounts", "Cards", "Payments", "Loans", "Investments", "Support", "Log out"]
MERCHANTS = ["Amazon Pay", "Swiggy", "BigBasket", "IRCTC", "Uber India", "Reliance Digital"]

Batch = tuple[str, list[Any]]


def _session(seed: int) -> list[Any]:
    """One generated banking session."""
    from faker import Faker

    from tests.redact.support import Dom, aadhaar, indian_mobile

    rng = random.Random(seed)
    fake = Faker(["en_IN", "en_GB"])
    fake.seed_instance(seed)
    dom = Dom()
    nav = dom.el(
        "nav",
        {"class": "top"},
        *(dom.el("a", {"href": f"/{n.lower()}", "class": "nav"}, dom.text(n)) for n in NAV),
    )
    rows = []
    for _ in range(40):
        pii = rng.random() < 0.08
        desc = (
            f"UPI/{fake.user_name()}@okaxis/{rng.randint(10**11, 10**12)}"
            if pii
            else rng.choice(MERCHANTS)
        )
        rows.append(
            dom.el(
                "tr",
                {"class": "txn"},
                dom.el("td", {}, dom.text(str(fake.date_this_year()))),
                dom.el("td", {"title": desc}, dom.text(desc)),
                dom.el("td", {"class": "amt"}, dom.text(f"₹{rng.randint(10, 90000):,}.00")),
            )
        )
    note = dom.el("input", {"type": "text", "name": "remarks"})
    balance = dom.text("₹1,24,560.00")
    snap = dom.snapshot(
        nav,
        dom.el("h1", {}, dom.text(f"Welcome back, {fake.first_name()}")),
        dom.el("div", {"class": "balance"}, balance),
        dom.el("table", {"class": "txns"}, *rows),
        dom.el("form", {}, note, dom.el("button", {"type": "submit"}, dom.text("Pay"))),
        dom.el("footer", {}, dom.text("© 2024 Example Bank. All rights reserved.")),
    )
    events: list[Any] = [
        {
            "type": 4,
            "data": {"href": "https://bank.example/dashboard", "width": 1440, "height": 900},
            "timestamp": 1,
        },
        snap,
    ]
    body_id = snap["data"]["node"]["childNodes"][1]["childNodes"][1]["id"]
    for i in range(400):
        r = rng.random()
        t = 1000 + i * 50
        if r < 0.40:
            events.append(
                {
                    "type": 3,
                    "timestamp": t,
                    "data": {
                        "source": 1,
                        "positions": [
                            {
                                "x": rng.randint(0, 1400),
                                "y": rng.randint(0, 900),
                                "id": body_id,
                                "timeOffset": -k * 16,
                            }
                            for k in range(4)
                        ],
                    },
                }
            )
        elif r < 0.55:
            events.append(
                {
                    "type": 3,
                    "timestamp": t,
                    "data": {"source": 3, "id": 1, "x": 0, "y": rng.randint(0, 3000)},
                }
            )
        elif r < 0.62:
            events.append(
                {
                    "type": 3,
                    "timestamp": t,
                    "data": {"source": 2, "type": 2, "id": rng.randint(1, 300), "x": 5, "y": 9},
                }
            )
        elif r < 0.72:
            typed = fake.sentence()[: rng.randint(3, 30)]
            events.append(
                {
                    "type": 3,
                    "timestamp": t,
                    "data": {"source": 5, "text": typed, "isChecked": False, "id": note["id"]},
                }
            )
        elif r < 0.82:
            events.append(
                {
                    "type": 3,
                    "timestamp": t,
                    "data": {
                        "source": 0,
                        "adds": [],
                        "removes": [],
                        "attributes": [],
                        "texts": [
                            {"id": balance["id"], "value": f"₹{rng.randint(1000, 10**6):,}.00"}
                        ],
                    },
                }
            )
        elif r < 0.88:
            toast = dom.el(
                "div",
                {"class": "toast"},
                dom.text(
                    rng.choice(
                        [
                            "Payment successful",
                            "Session expires in 2 minutes",
                            "OTP sent to your mobile",
                            f"Beneficiary {fake.name()} added",
                        ]
                    )
                ),
            )
            events.append(
                {
                    "type": 3,
                    "timestamp": t,
                    "data": {
                        "source": 0,
                        "texts": [],
                        "attributes": [],
                        "removes": [],
                        "adds": [{"parentId": body_id, "nextId": None, "node": toast}],
                    },
                }
            )
        elif r < 0.94:
            msg = f"fetch /api/txns took {rng.randint(20, 900)}ms"
            if rng.random() < 0.1:
                msg = f"customer {fake.email()} mobile {indian_mobile(rng)}"
            events.append(
                {
                    "type": 6,
                    "timestamp": t,
                    "data": {
                        "plugin": "rrweb/console@1",
                        "payload": {
                            "level": "log",
                            "trace": ["main.js:120:9"],
                            "payload": [orjson.dumps(msg).decode()],
                        },
                    },
                }
            )
        else:
            body = {
                "account": "XXXX1234",
                "amount": rng.randint(1, 10**5),
                "currency": "INR",
                "beneficiary": {"name": fake.name(), "ifsc": "HDFC0001234"},
            }
            if rng.random() < 0.2:
                body["kyc"] = {"aadhaar": aadhaar(rng), "email": fake.email()}
            events.append(
                {
                    "type": 6,
                    "timestamp": t,
                    "data": {
                        "plugin": "rrweb/network@1",
                        "payload": {
                            "requests": [
                                {
                                    "url": "https://api.bank.example/v1/transfer?ref="
                                    + str(rng.randint(1, 10**6)),
                                    "method": "POST",
                                    "status": 200,
                                    "initiatorType": "fetch",
                                    "requestHeaders": {
                                        "Content-Type": "application/json",
                                        "Authorization": "Bearer x",
                                    },
                                    "requestBody": orjson.dumps(body).decode(),
                                    "responseBody": orjson.dumps(
                                        {"ok": True, "id": rng.randint(1, 10**9)}
                                    ).decode(),
                                }
                            ]
                        },
                    },
                }
            )
    return events


def build_input(sessions: int) -> list[Batch]:
    """(session id, events) batches: the corpus, one batch per stream, then generated sessions."""
    batches: list[Batch] = []
    if CORPUS.is_dir():
        for path in sorted(CORPUS.glob("*.json")):
            if not path.name.startswith("_"):
                batches.append((f"corpus-{path.stem[:50]}", orjson.loads(path.read_bytes())))
    for s in range(sessions):
        events = _session(s)
        for i in range(0, len(events), 100):
            batches.append((f"gen-{s}", events[i : i + 100]))
    return batches


def _copies(batches: list[Batch]) -> list[Batch]:
    return [(sid, orjson.loads(orjson.dumps(events))) for sid, events in batches]


def run_engine(engine: DetectionEngine, batches: list[Batch], mode: str) -> dict[str, float]:
    """The whole per-batch pipeline of a worker in this process (one core), from the JSON
    bytes a worker receives (`BatchWire`) to the checked output bytes. Wall-clock and CPU
    time are both measured: on a shared machine the CPU rate is the steadier figure."""
    state = WorkerState(RedactSettings(), engine, Tokenizer(TokenKeys(KEY)), None)
    pii = PiiPolicy(text=mode)  # type: ignore[arg-type]
    raw = canonical(pii)
    fp = fingerprint(pii, raw)
    work = [(sid, orjson.dumps(evs), len(evs)) for sid, evs in batches]
    events = slots = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for sid, blob, n in work:
        out = state.redact(BatchWire("acme", sid, fp, raw, 30, blob))
        events += n
        slots += out.stats["slots"]
    took, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "events": events,
        "strings": slots,
        "seconds": took,
        "events_s": events / took,
        "strings_s": slots / took,
        "cpu_events_s": events / cpu,
    }


def collect_strings(engine: DetectionEngine, batches: list[Batch]) -> list[tuple[str, str, int]]:
    """Every string slot of the input as (text, key context, kind), as the walker finds them."""
    policy = compile_policy(PiiPolicy(text="detect"), engine.supported)
    out: list[tuple[str, str, int]] = []
    for sid, evs in _copies(batches):
        col = Collector(policy, 65_536)
        col.blanket = frozenset()  # keep every slot, also those the engine masks while walking
        Walker(col, SessionMirror(100_000)).collect(evs)
        out.extend((str(s.value), s.context, s.kind) for s in col.slots)
        del sid
    return out


def run_naive(
    engine: DetectionEngine, strings: list[tuple[str, str, int]], limit: int
) -> dict[str, Any]:
    """Presidio analyze + anonymize once per string, same recognizers and NLP engine."""
    profile = compile_policy(PiiPolicy(text="detect"), engine.supported).profile
    anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]
    tok = Tokenizer(TokenKeys(KEY))
    sample = strings[:limit]
    started, cpu_started = time.perf_counter(), time.process_time()
    naive_findings: list[set[tuple[int, int, str]]] = []
    for text, context, _ in sample:
        prefix = f"{context}: " if context else ""
        full = prefix + text
        results = engine.presidio(full, profile)
        ops = {
            r.entity_type: OperatorConfig(
                "custom", {"lambda": lambda v, e=r.entity_type: tok.token("acme", e, v)}
            )
            for r in results
        }
        anonymizer.anonymize(text=full, analyzer_results=cast(Any, results), operators=ops)
        off = len(prefix)
        naive_findings.append(
            {(max(r.start, off) - off, r.end - off, r.entity_type) for r in results if r.end > off}
        )
    took, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    fresh = build_engine(RedactSettings(cache_size=0))
    ours = fresh.analyze([(t, c) for t, c, _ in sample], profile)
    mismatches = sum(
        1
        for mine, theirs in zip(ours, naive_findings, strict=True)
        if {(f.start, f.end, f.entity) for f in mine} != theirs
    )
    return {
        "strings": len(sample),
        "seconds": took,
        "strings_s": len(sample) / took,
        "cpu_strings_s": len(sample) / cpu,
        "mismatches": mismatches,
        "with_findings": sum(1 for f in naive_findings if f),
    }


async def run_pool(batches: list[Batch], mode: str, concurrency: int) -> dict[str, float]:
    """The whole engine through Redactor and its worker processes (both cores)."""
    with tempfile.TemporaryDirectory() as tmp:
        redactor = Redactor(RedactSettings(), Path(tmp))
        await redactor.start()
        try:
            policy = TenantPolicy(pii=PiiPolicy(text=mode))  # type: ignore[arg-type]
            work = _copies(batches)
            queue: asyncio.Queue[Batch] = asyncio.Queue()
            for item in work:
                queue.put_nowait(item)

            async def feeder() -> int:
                n = 0
                while not queue.empty():
                    sid, evs = queue.get_nowait()
                    await redactor.redact(RedactRequest("acme", "web", sid, policy, evs))
                    n += len(evs)
                return n

            started = time.perf_counter()
            counts = await asyncio.gather(*(feeder() for _ in range(concurrency)))
            took = time.perf_counter() - started
        finally:
            await redactor.stop()
    return {"events": sum(counts), "seconds": took, "events_s": sum(counts) / took}


def recall(engine: DetectionEngine) -> dict[str, tuple[int, int]]:
    """Detect-mode recall per entity over the corpus with planted PII (egress check off)."""
    state = WorkerState(RedactSettings(), engine, Tokenizer(TokenKeys(KEY)), None)
    pii = PiiPolicy(text="detect")
    planted_all, leaks_all = [], []
    for i, path in enumerate(sorted(CORPUS.glob("*.json")) if CORPUS.is_dir() else []):
        if path.name.startswith("_"):
            continue
        events, planted = plant(orjson.loads(path.read_bytes()), 7000 + i)
        out = state.detection_only(BatchRequest("acme", f"r{i}", pii, fingerprint(pii), 30, events))
        planted_all += planted
        leaks_all += leaked(out.events_json, planted)
    return recall_table(planted_all, leaks_all)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=40, help="generated sessions")
    parser.add_argument("--naive-strings", type=int, default=4000, help="strings for the baseline")
    parser.add_argument("--no-pool", action="store_true", help="skip the worker-process run")
    args = parser.parse_args()

    batches = build_input(args.sessions)
    n_events = sum(len(e) for _, e in batches)
    kinds = Counter(e.get("type") for _, evs in batches for e in evs if isinstance(e, dict))
    print(f"input: {len(batches)} batches, {n_events} events, types {dict(sorted(kinds.items()))}")
    configure("console", "warning")
    warmup = build_engine(RedactSettings())
    run_engine(warmup, build_input(2)[-8:], "detect")  # regex compilation, lazy imports
    results: dict[str, dict[str, float]] = {}
    warm: dict[str, dict[str, float]] = {}
    for mode in ("mask_all", "detect"):
        engine = build_engine(RedactSettings())  # cold caches for each mode
        results[mode] = run_engine(engine, batches, mode)
        stats = dict(engine.stats)
        warm[mode] = run_engine(engine, batches, mode)  # again: every string seen before
    strings = collect_strings(engine, batches)
    analysable = [s for s in strings if s[2] != SECRET]
    random.Random(1).shuffle(analysable)
    naive = run_naive(engine, analysable, args.naive_strings)
    naive_events_s = n_events / (len(strings) / naive["strings_s"])
    naive_cpu_events_s = n_events / (len(strings) / naive["cpu_strings_s"])

    print("\none core (engine in this process):")
    print(f"  {'':22}{'events/s':>12}{'strings/s':>12}{'events/s of CPU':>18}")
    for name, r in [*results.items(), *((f"{m} (warm caches)", w) for m, w in warm.items())]:
        print(f"  {name:22}{r['events_s']:12,.0f}{r['strings_s']:12,.0f}{r['cpu_events_s']:18,.0f}")
    print(
        f"  {'naive Presidio':22}{naive_events_s:12,.0f}{naive['strings_s']:12,.0f}"
        f"   (analyze+anonymize per string, {naive['strings']} sampled strings)"
    )
    print(
        f"  detect / naive: {results['detect']['events_s'] / naive_events_s:.1f}x events/s, "
        f"{results['detect']['strings_s'] / naive['strings_s']:.1f}x strings/s; "
        f"{results['detect']['cpu_events_s'] / naive_cpu_events_s:.1f}x by CPU time "
        f"({warm['detect']['cpu_events_s'] / naive_cpu_events_s:.1f}x warm)"
    )
    print(
        f"  same findings: {naive['strings'] - naive['mismatches']}/{naive['strings']} strings "
        f"({naive['with_findings']} with findings)"
    )
    print(f"  strings in the input: {len(strings)} ({len(analysable)} not secret by structure)")
    print(
        f"  detect-mode engine, cold run: {stats['calls']} Presidio calls for "
        f"{stats['analysed']} strings, {stats['cache_hits']} cache hits, "
        f"{stats['prefiltered']} pre-filtered"
    )

    if not args.no_pool:
        print("\nworker processes (Redactor, default settings, 8 sessions in flight):")
        for mode in ("mask_all", "detect"):
            r = asyncio.run(run_pool(batches, mode, 8))
            print(f"  {mode:22}{r['events_s']:12,.0f} events/s")

    if CORPUS.is_dir():
        print("\ndetect-mode recall per entity (corpus + planted PII, egress check off):")
        for entity, (found, total) in sorted(recall(engine).items()):
            print(f"  {entity:16}{found:6}/{total:<6}{found / total:8.1%}")


if __name__ == "__main__":
    main()
