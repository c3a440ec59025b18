"""One tenant's pipeline: stream → chunks → bounded in-flight deliveries → acknowledgement.

    reader ──(bounded queue of sealed chunks)──▶ dispatcher ──▶ ≤ N deliveries ──▶ ack

- The reader first recovers what this consumer (or a dead one) left pending,
  regrouped by the recorded manifests, then reads new entries. When the queue
  is full it stops reading: entries wait in Redis, undelivered, so memory stays
  bounded by (queue + in flight + one open chunk).
- Deliveries of one tenant run concurrently up to `max_in_flight_per_tenant`,
  but a chunk waits for every earlier chunk that shares a session with it, so
  each session reaches the cloud in order.
- A chunk is acknowledged (XACK, trim, DECRBY) only after `deliver` returns,
  which it does only once the cloud, the local store or the dead-letter store
  holds the chunk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
from redis.exceptions import RedisError

from runner.forward.chunker import Chunk, ChunkBuilder, StreamEntry, entry_id_key, regroup
from runner.forward.reader import TenantStream
from runner.forward.sender import Backoff
from runner.forward.settings import CloudSettings, ForwardSettings

log = structlog.get_logger(__name__)

EV_RECOVERED = "forward.recovered"
EV_REDIS_ERROR = "forward.redis_error"
EV_MANIFEST_PARTIAL = "forward.manifest_partial"

REDIS_RETRY_BASE_S = 0.2
REDIS_RETRY_MAX_S = 5.0


def reraise_if_cancelling() -> None:
    """Raise CancelledError if this task is being cancelled.

    For `except` blocks that retry: a library may turn a cancellation into its
    own error while cleaning up a connection, and retrying would swallow it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@dataclass
class TenantState:
    """What the status page shows of one tenant; survives pipeline restarts."""

    tenant: str
    local: bool = False
    held: int = 0
    in_flight: int = 0
    retrying: int = 0
    paused_until: float = 0.0
    chunks_sent: int = 0
    events_sent: int = 0
    bytes_sent: int = 0
    chunks_local: int = 0
    chunks_dead_lettered: int = 0
    dead_lettered_by_reason: dict[str, int] = field(default_factory=dict)
    """Chunks written to the dead-letter store, by reason (rejected, exhausted, malformed,
    drain_spill)."""
    retries: int = 0
    auth_failures: int = 0
    restarts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def paused(self) -> bool:
        return self.paused_until > time.monotonic()

    def status(self) -> str:
        if self.paused():
            return "paused"
        if self.retrying:
            return "retrying"
        if self.in_flight or self.held:
            return "local" if self.local else "sending"
        return "idle"

    def note_error(self, error: str, status: int | None = None) -> None:
        self.last_error = error
        self.last_status = status
        self.last_error_at = time.time()

    def snapshot(self) -> dict[str, Any]:
        return {
            "status": self.status(),
            "held_entries": self.held,
            "in_flight": self.in_flight,
            "retrying": self.retrying,
            "paused_for_s": round(max(0.0, self.paused_until - time.monotonic()), 1),
            "chunks_sent": self.chunks_sent,
            "events_sent": self.events_sent,
            "bytes_sent": self.bytes_sent,
            "chunks_local": self.chunks_local,
            "chunks_dead_lettered": self.chunks_dead_lettered,
            "dead_lettered_by_reason": dict(self.dead_lettered_by_reason),
            "retries": self.retries,
            "auth_failures": self.auth_failures,
            "restarts": self.restarts,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }


@dataclass(eq=False)
class _Flight:
    chunk: Chunk
    done: asyncio.Event = field(default_factory=asyncio.Event)


Deliver = Callable[[TenantState, Chunk], Awaitable[None]]


class TenantPipeline:
    """Reads one tenant's stream as this consumer and delivers its chunks; one run per start."""

    def __init__(
        self,
        stream: TenantStream,
        state: TenantState,
        settings: ForwardSettings,
        cloud: CloudSettings,
        deliver: Deliver,
        claiming: Callable[[], bool],
        progress: Callable[[], None],
    ) -> None:
        self.stream = stream
        self.state = state
        self._settings = settings
        self._deliver = deliver
        self._claiming = claiming
        self._progress = progress
        self._builder = ChunkBuilder(
            stream.tenant,
            settings.chunk_max_bytes,
            settings.chunk_max_events,
            settings.linger_s,
            time.monotonic,
            lambda: int(time.time() * 1000),
        )
        self._queue: asyncio.Queue[Chunk] = asyncio.Queue(maxsize=cloud.max_in_flight_per_tenant)
        self._slots = asyncio.Semaphore(cloud.max_in_flight_per_tenant)
        self._room = asyncio.Event()
        self._read_done = asyncio.Event()
        self._flights: dict[str, _Flight] = {}
        self._held: set[str] = set()
        self._redis_backoff = Backoff(REDIS_RETRY_BASE_S, REDIS_RETRY_MAX_S, REDIS_RETRY_MAX_S)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """Run until claiming stops and everything read has been delivered (or until cancelled)."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(), name=f"fwd-read-{self.stream.tenant}")
                dispatcher = group.create_task(
                    self._dispatch(group), name=f"fwd-dispatch-{self.stream.tenant}"
                )
                # Wait on an Event, not on the reader task: cancelling a task that awaits
                # another task only cancels the awaited one, and a library that swallows
                # that cancellation would leave this pipeline running.
                await self._read_done.wait()
                await self._queue.join()
                dispatcher.cancel()
        finally:
            self.state.held = 0
            self.state.in_flight = 0

    # -- Redis with retries --------------------------------------------------------

    async def _redis(self, what: str, op: Callable[[], Awaitable[Any]]) -> Any:
        """Run a Redis operation until it succeeds; the data it guards stays in Redis meanwhile."""
        failures = 0
        while True:
            try:
                return await op()
            except RedisError as e:
                reraise_if_cancelling()
                failures += 1
                self.state.note_error(f"redis: {type(e).__name__}")
                log.warning(
                    EV_REDIS_ERROR, tenant=self.stream.tenant, op=what, error=type(e).__name__
                )
                await asyncio.sleep(self._redis_backoff.delay(failures))

    # -- reading -----------------------------------------------------------------

    async def _read(self) -> None:
        s = self._settings
        await self._redis("ensure_group", self.stream.ensure_group)
        await self._recover()
        next_claim = time.monotonic() + s.claim_interval_s
        while self._claiming():
            left = self._builder.time_left()
            if left is not None and left <= 0:
                await self._emit(self._builder.seal())
                continue
            if self._queue.full():
                await self._wait_for_room()
                continue
            block = s.read_block_s if left is None else min(s.read_block_s, left)
            # Read no more than the open chunk can still take, so memory stays bounded by chunks.
            count = max(1, min(s.read_count, s.chunk_max_events - self._builder.events))
            try:
                entries = await self.stream.read_new(count, max(1, int(block * 1000)))
            except RedisError as e:
                reraise_if_cancelling()
                self.state.note_error(f"redis: {type(e).__name__}")
                log.warning(
                    EV_REDIS_ERROR, tenant=self.stream.tenant, op="read", error=type(e).__name__
                )
                await asyncio.sleep(self._redis_backoff.delay(1))
                continue
            await self._take(entries)
            if time.monotonic() >= next_claim:
                await self._claim_cycle()
                next_claim = time.monotonic() + s.claim_interval_s
        await self._emit(self._builder.seal())
        self._read_done.set()

    async def _wait_for_room(self) -> None:
        """Block while the chunk queue is full (the entries wait in Redis, unread)."""
        self._room.clear()
        if self._queue.full():
            await self._room.wait()

    async def _take(self, entries: list[StreamEntry]) -> None:
        for entry in entries:
            if entry.id in self._held:
                continue
            self._hold([entry.id])
            for chunk in self._builder.add(entry):
                await self._emit(chunk)
        self._progress()

    def _hold(self, ids: list[str]) -> None:
        self._held.update(ids)
        self.state.held = len(self._held)

    async def _emit(self, chunk: Chunk | None) -> None:
        if chunk is None:
            return
        if not chunk.replay_of and not chunk.malformed:
            await self._redis("save_manifest", lambda: self.stream.save_manifest(chunk))
        await self._queue.put(chunk)

    async def _recover(self) -> None:
        s = self._settings
        own = await self._redis("pending", lambda: self.stream.read_own_pending(s.read_count))
        others = await self._redis(
            "autoclaim",
            lambda: self.stream.autoclaim(int(s.claim_idle_s * 1000), s.read_count),
        )
        entries: list[StreamEntry] = [*own, *others]
        if entries:
            log.info(EV_RECOVERED, tenant=self.stream.tenant, own=len(own), claimed=len(others))
        await self._regroup(entries)

    async def _claim_cycle(self) -> None:
        """Keep our own pending entries marked alive, then take over entries others abandoned."""
        s = self._settings
        if self._held:
            held = sorted(self._held, key=entry_id_key)
            await self._redis("touch", lambda: self.stream.touch(held))
        claimed = await self._redis(
            "autoclaim",
            lambda: self.stream.autoclaim(int(s.claim_idle_s * 1000), s.read_count),
        )
        await self._regroup(claimed)

    async def _regroup(self, entries: list[StreamEntry]) -> None:
        """Rebuild recorded chunks exactly from recovered entries; the rest are chunked afresh."""
        fresh = {e.id: e for e in entries if e.id not in self._held}
        if not fresh:
            return
        manifests: dict[str, bytes] = await self._redis("manifests", self.stream.manifests)
        found = regroup(self.stream.tenant, manifests, fresh)
        if found.partial:
            log.warning(EV_MANIFEST_PARTIAL, tenant=self.stream.tenant, missing=found.partial)
        stale: list[str] = []
        for chunk_id, first in found.unmatched.items():
            if not await self._redis("exists", partial(self.stream.exists, first)):
                stale.append(chunk_id)  # every entry is gone: an old, finished chunk
        if stale:
            await self._redis("forget", lambda: self.stream.forget_manifests(stale))
        for chunk in found.chunks:
            self._hold(chunk.ids)
            await self._queue.put(chunk)
        await self._take(found.fresh)

    # -- delivering ----------------------------------------------------------------

    async def _dispatch(self, group: asyncio.TaskGroup) -> None:
        while True:
            chunk = await self._queue.get()
            self._room.set()
            await self._slots.acquire()
            earlier = [f.done for f in self._flights.values() if f.chunk.sessions & chunk.sessions]
            flight = _Flight(chunk)
            self._flights[chunk.entries[0].id] = flight
            self.state.in_flight = len(self._flights)
            group.create_task(self._fly(flight, earlier), name=f"fwd-chunk-{chunk.chunk_id[:8]}")

    async def _fly(self, flight: _Flight, earlier: list[asyncio.Event]) -> None:
        chunk = flight.chunk
        try:
            for done in earlier:
                await done.wait()
            await self._deliver(self.state, chunk)
            await self._redis("ack", lambda: self.stream.ack(chunk, with_manifest=True))
            self._held.difference_update(chunk.ids)
            self.state.held = len(self._held)
        finally:
            flight.done.set()
            self._flights.pop(chunk.entries[0].id, None)
            self.state.in_flight = len(self._flights)
            self._slots.release()
            self._queue.task_done()
            self._progress()
