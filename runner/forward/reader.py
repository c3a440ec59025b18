"""The forwarder's side of a tenant stream: read, reclaim, remember chunks, acknowledge.

Besides the keys of `runner.buffer.keys`, the forwarder keeps one hash per
tenant, `<p>:{<tenant>}:chunks`: chunk id → manifest (the entry ids, creation
time and policy version) of every chunk sent but not yet acknowledged. After a
crash the pending entries are regrouped by these manifests, so a chunk is sent
again with the same entries, the same body and the same `Idempotency-Key`.

Acknowledging is one Lua script: XACK each entry (and XDEL it, or XTRIM
MINID), DECRBY the tenant's buffered bytes by the sizes of the entries this
call really acknowledged (so two replicas acking the same chunk release the
bytes once), and forget the manifest — all or nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from runner.buffer.keys import FORWARD_GROUP, Keys
from runner.forward.chunker import Chunk, MalformedEntry, StreamEntry

# KEYS: stream, bytes counter, manifests hash
# ARGV: group, chunk id ("" for none), trim mode, then entry id / size pairs
ACK_LUA = """
local freed = 0
for i = 4, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    freed = freed + tonumber(ARGV[i + 1])
  end
  if ARGV[3] == 'delete' then
    redis.call('XDEL', KEYS[1], ARGV[i])
  end
end
if freed > 0 then
  if redis.call('DECRBY', KEYS[2], freed) < 0 then
    redis.call('SET', KEYS[2], 0)
  end
end
if ARGV[2] ~= '' then
  redis.call('HDEL', KEYS[3], ARGV[2])
end
if ARGV[3] == 'minid' then
  local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
  local floor = nil
  if tonumber(summary[1]) > 0 then
    floor = summary[2]
  else
    local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
    for _, g in ipairs(groups) do
      local name, last = nil, nil
      for j = 1, #g, 2 do
        if g[j] == 'name' then name = g[j + 1] end
        if g[j] == 'last-delivered-id' then last = g[j + 1] end
      end
      if name == ARGV[1] and last then
        local ms, seq = string.match(last, '^(%d+)-(%d+)$')
        floor = ms .. '-' .. tostring(tonumber(seq) + 1)
      end
    end
  end
  if floor then
    redis.call('XTRIM', KEYS[1], 'MINID', '~', floor)
  end
end
return freed
"""

Entries = list[StreamEntry]


def manifests_key(keys: Keys, tenant: str) -> str:
    return f"{keys.prefix}:{{{tenant}}}:chunks"


def _stream_rows(reply: Any) -> list[Any]:
    """The (id, fields) rows of a one-stream XREADGROUP reply, RESP2 or RESP3."""
    if not reply:
        return []
    if isinstance(reply, dict):
        rows: list[Any] = next(iter(reply.values()))
        return list(rows[0]) if rows and isinstance(rows[0], list) else list(rows)
    return list(reply[0][1])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TenantStream:
    """Redis operations of one consumer on one tenant's stream."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        tenant: str,
        consumer: str,
        trim: Literal["delete", "minid"],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.tenant = tenant
        self._consumer = consumer
        self._trim = trim
        self._stream = keys.stream(tenant)
        self._manifests = manifests_key(keys, tenant)
        self._ack_sha = ""
        self._ghosts: list[str] = []

    def _parse(self, rows: Iterable[Any]) -> Entries:
        out: Entries = []
        for raw_id, fields in rows:
            entry_id = _text(raw_id)
            if not fields:
                self._ghosts.append(entry_id)  # deleted while pending: nothing to send
                continue
            try:
                out.append(StreamEntry.from_fields(entry_id, fields))
            except MalformedEntry:
                sid = fields.get(b"sid", b"")
                out.append(
                    StreamEntry(
                        id=entry_id,
                        session_id=sid.decode(errors="replace") if isinstance(sid, bytes) else "",
                        events=fields.get(b"ev", b""),
                        malformed=True,
                    )
                )
        return out

    async def ensure_group(self) -> None:
        """Create the stream and group if the writer has not (a tenant listed without a stream)."""
        try:
            await self._redis.xgroup_create(self._stream, FORWARD_GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def read_new(self, count: int, block_ms: int | None) -> Entries:
        """Entries never delivered to any consumer (XREADGROUP `>`); None = do not block."""
        try:
            reply = await self._redis.xreadgroup(
                FORWARD_GROUP, self._consumer, {self._stream: ">"}, count=count, block=block_ms
            )
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self.ensure_group()
            return []
        return self._rows(reply)

    def _rows(self, reply: Any) -> Entries:
        return self._parse(_stream_rows(reply))

    async def read_own_pending(self, count: int) -> Entries:
        """Every entry delivered to this consumer and not acknowledged (its PEL), oldest first."""
        out: Entries = []
        start = "0"
        while True:
            try:
                reply = await self._redis.xreadgroup(
                    FORWARD_GROUP, self._consumer, {self._stream: start}, count=count
                )
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self.ensure_group()
                return out
            raw = _stream_rows(reply)
            if not raw:
                return out
            out.extend(self._parse(raw))
            start = _text(raw[-1][0])
            if self._ghosts:
                ghosts, self._ghosts = self._ghosts, []
                await self.ack_ids(ghosts)  # so they leave the pending list

    async def autoclaim(self, min_idle_ms: int, count: int) -> Entries:
        """Take over entries other consumers left pending for `min_idle_ms` (XAUTOCLAIM)."""
        out: Entries = []
        cursor = "0-0"
        while True:
            try:
                reply = await self._redis.xautoclaim(
                    self._stream,
                    FORWARD_GROUP,
                    self._consumer,
                    min_idle_time=min_idle_ms,
                    start_id=cursor,
                    count=count,
                )
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self.ensure_group()
                return out
            cursor = _text(reply[0])
            out.extend(self._parse(reply[1]))
            if cursor == "0-0":
                return out

    async def touch(self, ids: Sequence[str]) -> None:
        """Reset the idle time of entries this consumer still works on, so no one takes them."""
        for start in range(0, len(ids), 1000):
            await self._redis.xclaim(
                self._stream,
                FORWARD_GROUP,
                self._consumer,
                0,
                list(ids[start : start + 1000]),
                justid=True,
            )

    async def save_manifest(self, chunk: Chunk) -> None:
        await self._redis.hset(self._manifests, chunk.chunk_id, chunk.manifest())

    async def manifests(self) -> dict[str, bytes]:
        raw: Mapping[Any, Any] = await self._redis.hgetall(self._manifests)
        return {_text(k): bytes(v) for k, v in raw.items()}

    async def forget_manifests(self, chunk_ids: Sequence[str]) -> None:
        if chunk_ids:
            await self._redis.hdel(self._manifests, *chunk_ids)

    async def exists(self, entry_id: str) -> bool:
        rows = await self._redis.xrange(self._stream, min=entry_id, max=entry_id, count=1)
        return bool(rows)

    async def ack(self, chunk: Chunk, with_manifest: bool = True) -> int:
        """Acknowledge (and trim) the chunk's entries; returns the bytes released."""
        args: list[str | int] = [
            FORWARD_GROUP,
            chunk.chunk_id if with_manifest else "",
            self._trim,
        ]
        for entry in chunk.entries:
            args.extend((entry.id, entry.size))
        return await self._eval_ack(args)

    async def ack_ids(self, ids: Sequence[str]) -> int:
        """Acknowledge entries that hold nothing sendable (counted as zero bytes)."""
        args: list[str | int] = [FORWARD_GROUP, "", self._trim]
        for entry_id in ids:
            args.extend((entry_id, 0))
        return await self._eval_ack(args)

    async def _eval_ack(self, args: list[str | int]) -> int:
        keys = (self._stream, self._keys.bytes(self.tenant), self._manifests)
        if not self._ack_sha:
            self._ack_sha = await self._redis.script_load(ACK_LUA)
        try:
            freed = await self._redis.evalsha(self._ack_sha, 3, *keys, *args)
        except ResponseError as e:
            if "NOSCRIPT" not in str(e):
                raise
            self._ack_sha = await self._redis.script_load(ACK_LUA)
            freed = await self._redis.evalsha(self._ack_sha, 3, *keys, *args)
        return int(freed)

    async def remaining(self) -> int:
        """Entries of this tenant not yet acknowledged by the group (pending + never delivered)."""
        try:
            groups = await self._redis.xinfo_groups(self._stream)
        except ResponseError:
            return 0  # no stream yet
        group = next((g for g in groups if _text(g.get("name")) == FORWARD_GROUP), None)
        if group is None:
            return int(await self._redis.xlen(self._stream))
        pending = int(group.get("pending") or 0)
        if self._trim == "delete":
            return int(await self._redis.xlen(self._stream))
        lag = group.get("lag")
        if lag is None:
            return int(await self._redis.xlen(self._stream))
        return pending + int(lag)
