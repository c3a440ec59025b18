"""`runner drain --spill`: what the cloud has not taken by the deadline goes to the DLQ store.

A drain first forwards until the buffer is empty or its deadline passes. With
spill, `Forwarder.spill` then stops the tenant pipelines and hands over to the
`Spiller`, which, for every tenant whose chunks go to the cloud:

1. takes what this Runner may take — its own pending entries and those other
   consumers left idle for `claim_idle_s` (the forwarder's own take-over rule),
   then every entry never delivered (`XREADGROUP >`, without blocking); entries
   a live replica holds stay with it;
2. chunks them exactly as a send would: chunks recorded in `<p>:{t}:chunks`
   are rebuilt from their manifests, the rest go through the `ChunkBuilder`
   (manifest saved in Redis first), so chunk ids — the `Idempotency-Key` —
   are those the cloud may already have seen and dedupes on replay;
3. writes each chunk to the dead-letter store with reason `drain_spill`
   (payload, then metadata, each durable), and only then acknowledges its
   entries (XACK, trim, DECRBY, forget the manifest: the forwarder's ack script).

When the spill deadline passes, the write under way is abandoned and every
entry not yet acknowledged stays in Redis for the next start. Last, a manifest
`spills/<spill id>.json` in the same store lists each spilled chunk (tenant,
first and last entry id, entries, events, bytes) so an operator can replay the
lot: `runner dlq replay --manifest <spill id>`.

In air-gapped mode there is nothing to spill: the local store is the chunks'
home and is the same store as the dead letters, so whatever the forward phase
could not write there stays in Redis. Tenants kept locally by policy
(`forward: false`) are left alone for the same reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from redis.exceptions import RedisError

from runner.forward.chunker import Chunk, ChunkBuilder, entry_id_key, regroup, rfc3339_ms
from runner.forward.delivery import REASON_SPILLED, Delivery
from runner.forward.pipeline import TenantState, reraise_if_cancelling
from runner.forward.reader import TenantStream
from runner.forward.sender import Backoff
from runner.forward.settings import ForwardSettings
from runner.forward.storage import ObjectStore, StoreUnavailable, check_key

log = structlog.get_logger(__name__)

EV_SPILL_STARTED = "forward.spill_started"
EV_SPILL_FINISHED = "forward.spill_finished"
EV_SPILL_MANIFEST_FAILED = "forward.spill_manifest_failed"

SPILLS_PREFIX = "spills/"
MANIFEST_MIN_S = 10.0
"""The manifest is written even when the spill used up its deadline; it gets this long."""

LOCAL_TENANT = "kept in local storage (air-gapped or forward = false): nothing to spill"


class _OutOfTime(Exception):
    """The spill deadline passed; what is not acknowledged stays in Redis."""


@dataclass(frozen=True, slots=True)
class SpilledChunk:
    """One chunk in the dead-letter store, as the manifest lists it (no payload)."""

    chunk_id: str
    tenant: str
    reason: str
    first_entry_id: str
    last_entry_id: str
    entries: int
    events: int
    bytes: int
    policy_version: int

    @classmethod
    def of(cls, chunk: Chunk, reason: str) -> SpilledChunk:
        ids = sorted(chunk.ids, key=entry_id_key)
        return cls(
            chunk_id=chunk.chunk_id,
            tenant=chunk.tenant,
            reason=reason,
            first_entry_id=ids[0],
            last_entry_id=ids[-1],
            entries=len(ids),
            events=chunk.events,
            bytes=len(chunk.body),
            policy_version=chunk.policy_version,
        )


def new_spill_id(runner_id: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%f")[:-3]
    return f"{runner_id}-{stamp}Z"


def manifest_key(spill_id: str) -> str:
    """`spills/<id>.json`; also accepts the key itself (as `runner dlq spills` prints it)."""
    name = spill_id.removeprefix(SPILLS_PREFIX).removesuffix(".json")
    return check_key(f"{SPILLS_PREFIX}{name}.json")


@dataclass
class SpillReport:
    """What one spill did, filled in as it goes (the drain shows it as progress)."""

    spill_id: str
    runner_id: str
    started_ms: int
    store: str = ""
    chunks: list[SpilledChunk] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Tenants (or `*`) not spilled, and why."""
    finished_ms: int = 0
    out_of_time: bool = False
    error: str | None = None
    manifest: str | None = None
    """The manifest's key in the store, once written."""

    @classmethod
    def start(cls, runner_id: str) -> SpillReport:
        return cls(new_spill_id(runner_id), runner_id, int(time.time() * 1000))

    def totals(self) -> dict[str, int]:
        return {
            "chunks": len(self.chunks),
            "entries": sum(c.entries for c in self.chunks),
            "events": sum(c.events for c in self.chunks),
            "bytes": sum(c.bytes for c in self.chunks),
        }

    def summary(self) -> dict[str, Any]:
        """Counts for status and the drain's answer (the chunk list is in the manifest)."""
        return {
            "spill_id": self.spill_id,
            **self.totals(),
            "manifest": self.manifest,
            "store": self.store,
            "skipped": dict(self.skipped),
            "out_of_time": self.out_of_time,
            "error": self.error,
        }

    def manifest_json(self) -> bytes:
        """The manifest: every spilled chunk, totals per tenant with their entry-id range."""
        tenants: dict[str, dict[str, Any]] = {}
        for name in dict.fromkeys(c.tenant for c in self.chunks):
            mine = [c for c in self.chunks if c.tenant == name]
            tenants[name] = {
                "chunks": len(mine),
                "entries": sum(c.entries for c in mine),
                "events": sum(c.events for c in mine),
                "bytes": sum(c.bytes for c in mine),
                "first_entry_id": min((c.first_entry_id for c in mine), key=entry_id_key),
                "last_entry_id": max((c.last_entry_id for c in mine), key=entry_id_key),
            }
        return orjson.dumps(
            {
                "spill_id": self.spill_id,
                "runner_id": self.runner_id,
                "reason": REASON_SPILLED,
                "started_at": rfc3339_ms(self.started_ms),
                "finished_at": rfc3339_ms(self.finished_ms or int(time.time() * 1000)),
                "store": self.store,
                "complete": not self.out_of_time and self.error is None,
                "totals": self.totals(),
                "tenants": tenants,
                "skipped": self.skipped,
                "chunks": [asdict(c) for c in self.chunks],
            },
            option=orjson.OPT_INDENT_2,
        )


class Spiller:
    """Moves every entry this Runner may take to the dead-letter store, acknowledging last."""

    def __init__(
        self,
        *,
        streams: Callable[[str], TenantStream],
        states: Callable[[str], TenantState],
        delivery: Delivery,
        settings: ForwardSettings,
        store: ObjectStore,
        report: SpillReport,
    ) -> None:
        self._streams = streams
        self._states = states
        self._delivery = delivery
        self._settings = settings
        self._store = store
        self.report = report

    async def run(self, tenants: Sequence[str], deadline_s: float) -> SpillReport:
        """Spill every tenant within the deadline, then write the manifest."""
        report = self.report
        report.store = self._store.description
        end = time.monotonic() + deadline_s
        log.info(EV_SPILL_STARTED, spill_id=report.spill_id, tenants=len(tenants))
        try:
            for tenant in tenants:
                if self._delivery.local(tenant):
                    report.skipped[tenant] = LOCAL_TENANT
                    continue
                await self._tenant(tenant, end)
        except _OutOfTime:
            report.out_of_time = True
        except RedisError as e:
            reraise_if_cancelling()
            report.error = f"Redis: {type(e).__name__}"
        report.finished_ms = int(time.time() * 1000)
        if report.chunks:
            await self._write_manifest(max(MANIFEST_MIN_S, end - time.monotonic()))
        log.info(
            EV_SPILL_FINISHED,
            spill_id=report.spill_id,
            out_of_time=report.out_of_time,
            error=report.error,
            manifest=report.manifest,
            **report.totals(),
        )
        return report

    async def _tenant(self, tenant: str, end: float) -> None:
        s = self._settings
        stream = self._streams(tenant)
        state = self._states(tenant)
        await stream.ensure_group()
        own = await stream.read_own_pending(s.read_count)
        others = await stream.autoclaim(int(s.claim_idle_s * 1000), s.read_count)
        found = regroup(tenant, await stream.manifests(), {e.id: e for e in [*own, *others]})
        for chunk in found.chunks:
            await self._spill(stream, state, chunk, end)  # its manifest is already in Redis
        builder = ChunkBuilder(
            tenant,
            s.chunk_max_bytes,
            s.chunk_max_events,
            s.linger_s,
            time.monotonic,
            lambda: int(time.time() * 1000),
        )
        entries = found.fresh
        while True:
            for entry in entries:
                for chunk in builder.add(entry):
                    await self._emit(stream, state, chunk, end)
            if time.monotonic() >= end:
                raise _OutOfTime
            entries = await stream.read_new(s.read_count, None)
            if not entries:
                break
        await self._emit(stream, state, builder.seal(), end)

    async def _emit(
        self, stream: TenantStream, state: TenantState, chunk: Chunk | None, end: float
    ) -> None:
        if chunk is None:
            return
        if not chunk.replay_of and not chunk.malformed:
            # As for a send: after a crash the same entries make the same chunk id.
            await stream.save_manifest(chunk)
        await self._spill(stream, state, chunk, end)

    async def _spill(
        self, stream: TenantStream, state: TenantState, chunk: Chunk, end: float
    ) -> None:
        left = end - time.monotonic()
        if left <= 0:
            raise _OutOfTime
        try:
            reason = await asyncio.wait_for(self._delivery.spill(state, chunk), left)
        except TimeoutError as e:
            raise _OutOfTime from e
        # Durable in the dead-letter store: now, and only now, the entries may go.
        await stream.ack(chunk, with_manifest=True)
        self.report.chunks.append(SpilledChunk.of(chunk, reason))

    async def _write_manifest(self, budget_s: float) -> None:
        report = self.report
        key = manifest_key(report.spill_id)
        end = time.monotonic() + budget_s
        backoff = Backoff(0.2, 5.0, 5.0)
        failures = 0
        while True:
            try:
                await asyncio.wait_for(
                    self._store.put(key, report.manifest_json(), "application/json"),
                    max(0.1, end - time.monotonic()),
                )
                report.manifest = key
                return
            except (StoreUnavailable, TimeoutError) as e:
                reraise_if_cancelling()
                failures += 1
                error = str(e) if isinstance(e, StoreUnavailable) else "timed out"
                if time.monotonic() >= end:
                    log.error(EV_SPILL_MANIFEST_FAILED, spill_id=report.spill_id, error=error)
                    report.error = report.error or f"manifest not written: {error}"
                    return
                await asyncio.sleep(min(backoff.delay(failures), max(0.0, end - time.monotonic())))


async def list_manifests(store: ObjectStore) -> list[str]:
    """Spill ids of the manifests in the store, oldest first."""
    found = await store.list(SPILLS_PREFIX)
    return sorted(
        o.key.removeprefix(SPILLS_PREFIX).removesuffix(".json")
        for o in found
        if o.key.endswith(".json")
    )


async def load_manifest(store: ObjectStore, spill_id: str) -> dict[str, Any]:
    """A spill manifest by id (raises `ObjectNotFound`, or ValueError for a bad id)."""
    data: dict[str, Any] = orjson.loads(await store.get(manifest_key(spill_id)))
    return data
