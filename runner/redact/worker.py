"""One batch, start to finish, inside a worker process: walk, decide, write back, check.

1. The walker collects every text slot of the batch (keeping the session's DOM mirror).
2. Each slot is decided by its kind and the policy: masked outright, replaced whole by the
   entity its field holds, or sent to the detection engine (all of the batch's strings in
   few calls); findings become tokens, masks, labels or hashes, or drop their event.
3. Rebuilt values (URLs, JSON bodies) are re-assembled and the batch is serialised.
4. The egress check scans the bytes; a hit re-redacts the batch with everything masked.
5. New reversible tokens go to the vault before the result leaves the worker.

Workers never log (structlog is configured in the parent): they return counts.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, OrderedDict
from typing import Any

import orjson

from runner.policy.model import PiiPolicy
from runner.redact import egress
from runner.redact.engine import UNANALYZED, DetectionEngine, Finding, build_engine
from runner.redact.messages import (
    BatchOutcome,
    BatchRequest,
    BatchWire,
    UnencodableBatch,
    WorkerConfig,
)
from runner.redact.mirror import MirrorStore, SessionMirror
from runner.redact.payloads import INPUT, NUMBER, SECRET, STRUCT, TEXT, Collector, Slot
from runner.redact.rrweb import Walker
from runner.redact.rules import CompiledPolicy, compile_policy
from runner.redact.settings import RedactSettings
from runner.redact.tokens import Tokenizer, TokenKeys, label, mask, merge_spans, splice
from runner.redact.vault import DAY_S, SqliteVault, TokenSink

_NAME_LIKE = re.compile(r"^[^\W\d_](?:[^\W\d_]|[ .'\-])*$")
_FIELD_MAX = 256
_POLICY_CACHE = 64


class WorkerState:
    """Everything a worker keeps between batches: engine, tokenizer, vault, DOM mirrors."""

    def __init__(
        self,
        settings: RedactSettings,
        engine: DetectionEngine,
        tokenizer: Tokenizer,
        sink: TokenSink | None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._tokenizer = tokenizer
        self._sink = sink
        self._mirrors = MirrorStore(settings.mirror_session_nodes, settings.mirror_worker_nodes)
        self._policies: OrderedDict[str, CompiledPolicy] = OrderedDict()

    @classmethod
    def build(cls, config: WorkerConfig) -> WorkerState:
        """Build the engine and open the vault (slow: imports, optional NER model)."""
        engine = build_engine(config.settings)
        sink: SqliteVault | None = None
        if config.vault_keys and config.vault_path is not None:
            sink = SqliteVault(config.vault_path, config.vault_keys)
            sink.open()
        return cls(config.settings, engine, Tokenizer(TokenKeys(config.token_key)), sink)

    @property
    def engine(self) -> DetectionEngine:
        """The detection engine (the benchmark reads its stats)."""
        return self._engine

    def describe(self) -> dict[str, Any]:
        """What the parent logs once the worker is ready."""
        return {"entities": sorted(self._engine.supported), "vault": self._sink is not None}

    def end_session(self, tenant: str, session_id: str) -> bool:
        """Free a session's DOM mirror."""
        return self._mirrors.drop(tenant, session_id)

    def compiled(self, policy: PiiPolicy | bytes, fp: str) -> CompiledPolicy:
        """The compiled form of a policy (or of its canonical JSON), cached by fingerprint."""
        found = self._policies.get(fp)
        if found is None:
            if isinstance(policy, bytes):
                policy = PiiPolicy.model_validate_json(policy)
            found = compile_policy(policy, self._engine.supported, fp)
            self._policies[fp] = found
            while len(self._policies) > _POLICY_CACHE:
                self._policies.popitem(last=False)
        return found

    def redact(self, req: BatchRequest | BatchWire) -> BatchOutcome:
        """Redact one batch; the events list is rewritten in place (it is the worker's copy)."""
        return self._redact(req, check=True)

    def detection_only(self, req: BatchRequest | BatchWire) -> BatchOutcome:
        """The batch without the egress check and without vault writes.

        Only for measuring recall (the leak suite, the benchmark): the egress check masks a
        whole batch on one miss, which would hide every other miss. Never on the ingest path.
        """
        return self._redact(req, check=False)

    def _redact(self, req: BatchRequest | BatchWire, check: bool) -> BatchOutcome:
        if isinstance(req, BatchWire):
            policy = self.compiled(req.policy_json, req.fingerprint)
            events = _loads(req)
        else:
            policy = self.compiled(req.policy, req.fingerprint)
            events = req.events
        mirror = self._mirrors.get(req.tenant, req.session_id)
        nodes_before = mirror.size
        try:
            return self._process(req, policy, events, mirror, check)
        finally:
            self._mirrors.trim(mirror, nodes_before)

    def _process(
        self,
        req: BatchRequest | BatchWire,
        policy: CompiledPolicy,
        events: list[Any],
        mirror: SessionMirror,
        check: bool,
    ) -> BatchOutcome:
        mirror.rejudge((policy.block, policy.mask), policy.flags)
        col = Collector(policy, self._settings.max_body_bytes)
        droppable = Walker(col, mirror).collect(events)
        decider = _Decider(policy, self._engine, self._tokenizer, req.tenant, droppable)
        decider.decide(col.slots)
        col.finalize()
        drops = decider.drops
        kept = [e for i, e in enumerate(events) if i not in drops] if drops else events
        data = _dumps(kept)
        kinds = policy.egress_kinds if check else frozenset()
        hits = egress.scan(data, kinds, policy.allow_values)
        hit_kinds = Counter(h.kind for h in hits)
        if hits:
            for slot in col.slots:
                _mask_slot(slot)
            col.finalize()
            data = _dumps(kept)
            left = egress.scan(data, kinds, policy.allow_values)
            if left:
                data = egress.scrub(data, left)
        if check and self._sink is not None and decider.vault_items:
            expires = int(time.time()) + req.retention_days * DAY_S
            self._sink.put_many(req.tenant, decider.vault_items, expires)
        stats = {
            "slots": len(col.slots) + col.masked,
            "removed": col.removed,
            "oversize_bodies": col.oversize_bodies,
            "unanalyzed": decider.unanalyzed,
            "mirror_sessions": self._mirrors.sessions,
            "mirror_overflows": mirror.overflows,
        }
        return BatchOutcome(
            events_json=data,
            kept=len(kept),
            dropped=len(events) - len(kept),
            entities=dict(decider.entities),
            egress_hits=len(hits),
            egress_kinds=dict(hit_kinds),
            stats=stats,
        )


class _Decider:
    """Turns the slots of one batch into replacements."""

    def __init__(
        self,
        policy: CompiledPolicy,
        engine: DetectionEngine,
        tokenizer: Tokenizer,
        tenant: str,
        droppable: list[bool],
    ) -> None:
        self.policy = policy
        self.engine = engine
        self.tokenizer = tokenizer
        self.tenant = tenant
        self.droppable = droppable
        self.drops: set[int] = set()
        self.entities: Counter[str] = Counter()
        self.vault_items: list[tuple[str, str]] = []
        self.unanalyzed = 0

    def decide(self, slots: list[Slot]) -> None:
        policy = self.policy
        detect = policy.detect
        mask_inputs = policy.mask_all_inputs or not detect
        allow = policy.allow_values
        pending: list[Slot] = []
        for slot in slots:
            kind = slot.kind
            value = slot.value
            if kind == SECRET:
                slot.write(mask(str(value)))
            elif (kind == TEXT and not detect) or (kind == INPUT and mask_inputs):
                if not (allow and isinstance(value, str) and value.strip() in allow):
                    slot.write(mask(str(value)))
            elif slot.field is not None and _field_applies(slot.field, str(value), allow):
                text = str(value)
                self._replace(slot, text, [(0, len(text), slot.field)])
            elif kind in (TEXT, INPUT, STRUCT, NUMBER):
                pending.append(slot)
        if not pending:
            return
        items = [(str(s.value), s.context) for s in pending]
        for slot, (text, _), findings in zip(
            pending, items, self.engine.analyze(items, policy.profile), strict=True
        ):
            if findings:
                self._replace(slot, text, merge_spans(findings))

    def _replace(self, slot: Slot, text: str, spans: list[tuple[int, int, str]]) -> None:
        out: list[tuple[int, int, str]] = []
        for start, end, entity in spans:
            original = text[start:end]
            if entity == UNANALYZED:
                self.unanalyzed += 1
                out.append((start, end, mask(original)))
                continue
            self.entities[entity] += 1
            action = self.policy.action_for(entity)
            if action == "token":
                token = self.tokenizer.token(self.tenant, entity, original)
                self.vault_items.append((token, original))
                out.append((start, end, token))
            elif action == "mask":
                out.append((start, end, mask(original)))
            elif action == "hash":
                out.append((start, end, self.tokenizer.hash(self.tenant, entity, original)))
            else:
                if action == "drop_event" and self.droppable[slot.event]:
                    self.drops.add(slot.event)
                out.append((start, end, label(entity)))
        slot.write(splice(text, out))


def _field_applies(entity: str, value: str, allow: frozenset[str]) -> bool:
    """Is a field's whole value to be replaced as the entity its name says it holds?"""
    stripped = value.strip()
    if not stripped or len(stripped) > _FIELD_MAX or stripped in allow:
        return False
    if entity == "PERSON":
        return bool(_NAME_LIKE.match(stripped))
    return True


def _mask_slot(slot: Slot) -> None:
    """The egress fallback: every slot masked from its original value."""
    slot.write(mask(str(slot.value)))


def _loads(wire: BatchWire) -> list[Any]:
    """The events of a `BatchWire`: a JSON array, or the `events_key` member of a frame."""
    try:
        events = orjson.loads(wire.events_json)
    except orjson.JSONDecodeError:
        raise UnencodableBatch("the events are not JSON") from None
    if wire.events_key:
        events = events.get(wire.events_key) if isinstance(events, dict) else None
        if isinstance(events, list) and len(events) != wire.events_count:
            raise UnencodableBatch("the frame does not hold the events it was sent for")
    if not isinstance(events, list):
        raise UnencodableBatch("the events are not a JSON array")
    return events


def _dumps(events: list[Any]) -> bytes:
    """orjson, or the standard library for what orjson refuses (deep nesting, lone surrogates)."""
    try:
        return orjson.dumps(events)
    except (orjson.JSONEncodeError, TypeError):
        pass
    try:
        return json.dumps(
            events, ensure_ascii=True, separators=(",", ":"), allow_nan=False
        ).encode()
    except (ValueError, TypeError, RecursionError) as e:
        raise UnencodableBatch(type(e).__name__) from None


def findings_for(engine: DetectionEngine, text: str, policy: CompiledPolicy) -> tuple[Finding, ...]:
    """Findings for one string under a compiled policy (used by tests and the benchmark)."""
    return engine.analyze_one(text, policy.profile)
