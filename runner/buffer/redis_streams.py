"""The durable buffer: one Redis stream per tenant, written by group commit.

A batch is acknowledged only once Redis has answered its write. The Runner
insists on `appendfsync always`, under which Redis fsyncs its AOF before it
replies, so an answer means the batch is on disk. To keep throughput with an
fsync per write, batches from every session that arrive together are sent in
one pipeline: Redis runs them in one event-loop turn and pays one fsync for
the whole group, and each waiting batch is acked when its group is durable.

The dedupe check and the write are one Lua script, so a batch is stored at
most once per (tenant, session, seq) across connections, replicas and restarts.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from runner.buffer.keys import FORWARD_GROUP, Keys
from runner.config import BufferSection
from runner.errors import BufferFull, BufferUnavailable, StartupError

log = structlog.get_logger(__name__)

EV_DURABILITY_WEAK = "buffer.durability_weak_accepted"
EV_WRITE_FAILED = "buffer.write_failed"
EV_USAGE_REFRESH_FAILED = "buffer.usage_refresh_failed"

# KEYS: stream, seq hash, bytes counter, tenants set
# ARGV: seq, ttl seconds, entry size, tenant, group name, then the entry's field/value pairs
APPEND_LUA = """
local seq = tonumber(ARGV[1])
local w = tonumber(redis.call('HGET', KEYS[2], 'w') or '0')
if seq <= w or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return {0, w, tonumber(redis.call('GET', KEYS[3]) or '0')}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[5], '0', 'MKSTREAM')
  redis.call('SADD', KEYS[4], ARGV[4])
end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 6))
if seq == w + 1 then
  w = seq
  while redis.call('HDEL', KEYS[2], tostring(w + 1)) == 1 do
    w = w + 1
  end
  redis.call('HSET', KEYS[2], 'w', w)
else
  redis.call('HSET', KEYS[2], ARGV[1], 1)
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
local b = redis.call('INCRBY', KEYS[3], ARGV[3])
return {1, w, b}
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One redacted batch, ready for the stream."""

    tenant: str
    project: str
    session_id: str
    seq: int
    policy_version: int
    count: int
    events: bytes
    traceparent: str = ""
    """W3C traceparent of the batch's `ingest.batch` span ("" when tracing is off); the
    forwarder links its chunk span to it. Stored as the optional field `tp`."""

    @property
    def size(self) -> int:
        return len(self.events)


@dataclass(frozen=True, slots=True)
class Stored:
    """The buffer's answer: whether this call wrote the entry, and the session's watermark."""

    stored: bool
    watermark: int


async def check_durability(redis: Redis, accept_weaker: bool) -> None:
    """Refuse a Redis whose AOF is off or not fsynced on every write, unless accepted."""
    try:
        appendonly = (await redis.config_get("appendonly")).get("appendonly")
        appendfsync = (await redis.config_get("appendfsync")).get("appendfsync")
    except ResponseError as e:
        if accept_weaker:
            log.warning(EV_DURABILITY_WEAK, reason="CONFIG GET refused; durability unknown")
            return
        raise StartupError(
            "cannot verify Redis durability (CONFIG GET refused); set "
            "[buffer] accept_weaker_durability = true to run anyway"
        ) from e
    if appendonly == "yes" and appendfsync == "always":
        return
    reason = f"appendonly={appendonly} appendfsync={appendfsync}"
    if accept_weaker:
        log.warning(EV_DURABILITY_WEAK, reason=reason)
        return
    raise StartupError(
        f"Redis does not persist every acknowledged write ({reason}); configure "
        "appendonly yes and appendfsync always, or set [buffer] accept_weaker_durability = true"
    )


class StreamBuffer:
    """Appends redacted batches to tenant streams with group commit and tracks buffered bytes."""

    def __init__(self, redis: Redis, settings: BufferSection, writers: int = 2) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = Keys(settings.stream_prefix)
        self._writers = writers
        self._queue: asyncio.Queue[tuple[Entry, asyncio.Future[Stored]]] = asyncio.Queue(
            maxsize=settings.max_group_batches * writers * 4
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._sha = ""
        self._usage: dict[str, int] = defaultdict(int)
        self._inflight: dict[str, int] = defaultdict(int)
        self._depth: dict[str, tuple[int, int | None]] = {}
        self._closing = False
        self.groups_written = 0
        self.batches_written = 0

    @property
    def keys(self) -> Keys:
        return self._keys

    async def start(self) -> None:
        """Load the append script and the current usage, then start the writers."""
        try:
            self._sha = await self._redis.script_load(APPEND_LUA)
            await self.refresh_usage()
        except RedisError as e:
            raise BufferUnavailable(f"Redis is not reachable: {e}") from e
        for i in range(self._writers):
            self._tasks.append(asyncio.create_task(self._writer(), name=f"buffer-writer-{i}"))
        self._tasks.append(asyncio.create_task(self._refresher(), name="buffer-usage"))

    async def stop(self) -> None:
        """Finish what is queued, then stop the writers."""
        await self._queue.join()
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # -- admission and usage -------------------------------------------------

    def used(self, tenant: str) -> int:
        """Bytes buffered for the tenant, counting batches admitted but not yet written."""
        return self._usage[tenant] + self._inflight[tenant]

    def used_total(self) -> int:
        return sum(self._usage.values()) + sum(self._inflight.values())

    def over_high_water(self) -> bool:
        """True while the whole buffer is at or above its high-water mark."""
        return self.used_total() >= self._settings.high_water_bytes

    def admit(self, tenant: str) -> None:
        """Raise BufferFull when the tenant or the whole buffer is at its high-water mark."""
        if self.used(tenant) >= self._settings.tenant_high_water_bytes or self.over_high_water():
            raise BufferFull(f"buffer for tenant {tenant} is at its high-water mark")

    def usage(self) -> dict[str, int]:
        return dict(self._usage)

    def depth(self) -> dict[str, tuple[int, float | None]]:
        """Per tenant: (stream entries, age in seconds of the oldest entry or None)."""
        now_ms = time.time() * 1000
        return {
            tenant: (entries, (now_ms - oldest) / 1000 if oldest is not None else None)
            for tenant, (entries, oldest) in self._depth.items()
        }

    async def refresh_usage(self) -> None:
        """Re-read byte counters, stream lengths and oldest entries (others change them)."""
        tenants = sorted(await self._redis.smembers(self._keys.tenants()))
        names = [t.decode() if isinstance(t, bytes) else str(t) for t in tenants]
        if not names:
            return
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.get(self._keys.bytes(name))
            pipe.xlen(self._keys.stream(name))
            pipe.xrange(self._keys.stream(name), count=1)
        replies = await pipe.execute()
        for i, name in enumerate(names):
            value, entries, first = replies[3 * i : 3 * i + 3]
            self._usage[name] = max(0, int(value or 0))
            oldest = int(first[0][0].split(b"-")[0]) if first else None
            self._depth[name] = (int(entries), oldest)

    async def _refresher(self) -> None:
        while not self._closing:
            await asyncio.sleep(1.0)  # a periodic poll, not a wait for a condition
            try:
                await self.refresh_usage()
            except RedisError as e:
                # redis-py may turn a cancellation into a connection error: honour the cancel.
                task = asyncio.current_task()
                if self._closing or (task is not None and task.cancelling()):
                    raise asyncio.CancelledError from e
                log.warning(EV_USAGE_REFRESH_FAILED, error=type(e).__name__)

    # -- writes ----------------------------------------------------------------

    async def watermark(self, tenant: str, session_id: str) -> int:
        """The highest seq up to which every batch of the session is stored."""
        try:
            value = await self._redis.hget(self._keys.seq(tenant, session_id), "w")
        except RedisError as e:
            raise BufferUnavailable(f"Redis is not reachable: {e}") from e
        return int(value or 0)

    async def append(self, entry: Entry) -> Stored:
        """Write one batch durably (or find it already stored); resolves after the fsync."""
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._inflight[entry.tenant] += entry.size
        try:
            await self._queue.put((entry, future))
            return await future
        finally:
            self._inflight[entry.tenant] -= entry.size

    def _args(self, entry: Entry) -> list[str | bytes | int]:
        keys = self._keys
        trace: list[str | bytes | int] = ["tp", entry.traceparent] if entry.traceparent else []
        return [
            keys.stream(entry.tenant),
            keys.seq(entry.tenant, entry.session_id),
            keys.bytes(entry.tenant),
            keys.tenants(),
            entry.seq,
            self._settings.session_ttl_s,
            entry.size,
            entry.tenant,
            FORWARD_GROUP,
            "sid",
            entry.session_id,
            "proj",
            entry.project,
            "seq",
            entry.seq,
            "pv",
            entry.policy_version,
            "n",
            entry.count,
            "t",
            int(time.time() * 1000),
            *trace,
            "ev",
            entry.events,
        ]

    async def _writer(self) -> None:
        limit = self._settings.max_group_batches
        while True:
            group = [await self._queue.get()]
            while len(group) < limit and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                await self._commit(group)
            finally:
                for _ in group:
                    self._queue.task_done()

    async def _commit(self, group: list[tuple[Entry, asyncio.Future[Stored]]]) -> None:
        pending = group
        for _attempt in range(2):
            try:
                results = await self._run(pending)
            except RedisError as e:
                log.error(EV_WRITE_FAILED, error=type(e).__name__, batches=len(pending))
                failure = BufferUnavailable(f"Redis write failed: {type(e).__name__}")
                for _, future in pending:
                    if not future.done():
                        future.set_exception(failure)
                return
            retry: list[tuple[Entry, asyncio.Future[Stored]]] = []
            for (entry, future), result in zip(pending, results, strict=True):
                if isinstance(result, NoScriptError):
                    retry.append((entry, future))
                elif isinstance(result, Exception):
                    log.error(EV_WRITE_FAILED, error=type(result).__name__, batches=1)
                    if not future.done():
                        future.set_exception(BufferUnavailable("Redis refused the write"))
                else:
                    written, watermark, total = (int(x) for x in result)
                    self._usage[entry.tenant] = total
                    if not future.done():
                        future.set_result(Stored(stored=bool(written), watermark=watermark))
            self.groups_written += 1
            self.batches_written += len(pending) - len(retry)
            if not retry:
                return
            # Redis restarted and lost its script cache; the script is idempotent, so rerun.
            self._sha = await self._redis.script_load(APPEND_LUA)
            pending = retry
        for _, future in pending:
            if not future.done():
                future.set_exception(BufferUnavailable("Redis lost the append script twice"))

    async def _run(
        self, group: list[tuple[Entry, asyncio.Future[Stored]]]
    ) -> list[list[int] | Exception]:
        pipe = self._redis.pipeline(transaction=False)
        for entry, _ in group:
            pipe.evalsha(self._sha, 4, *self._args(entry))
        results: list[list[int] | Exception] = await pipe.execute(raise_on_error=False)
        return results
