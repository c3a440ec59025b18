"""Air-gapped mode: redacted chunks kept in local storage as their final home.

With `[cloud] endpoint = ""` (or a tenant whose policy says `forward: false`)
chunks go to the same storage as the dead-letter store (the folder under
data_dir, or the s3:// bucket), laid out for people and retention:

    chunks/<tenant>/<YYYY-MM-DD>/<session_id>/<chunk_id>.ndjson.zst   (layout tenant/date/session)
    chunks/<tenant>/<YYYY-MM-DD>/<chunk_id>.ndjson.zst                (layout tenant/date)

Each object is a PROTOCOL §2 chunk (header line, then one line per event),
sealed by the store (AES-256-GCM, bound to its name; see sealed.py), so read it
with `runner chunks cat`; with the per-session layout the header's `count` is
that session's share.
The date is the UTC day the first entry reached the Runner. Object names
come from the chunk id, so writing a chunk again after a crash replaces it.
Retention per tenant comes from the policy's `retention_days`.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime

from runner.forward.chunker import Chunk, encode, encode_sessions
from runner.forward.settings import ForwardSettings
from runner.forward.storage import ObjectStore, check_key

CHUNKS_PREFIX = "chunks/"
SUFFIX = ".ndjson.zst"
CONTENT_TYPE = "application/zstd"


@dataclass(frozen=True, slots=True)
class LocalChunk:
    """One stored object, parsed from its key."""

    key: str
    tenant: str
    date: str
    session_id: str
    """"" with the tenant/date layout (the object holds every session of the chunk)."""
    chunk_id: str
    size: int

    @classmethod
    def parse(cls, key: str, size: int) -> LocalChunk | None:
        if not key.startswith(CHUNKS_PREFIX) or not key.endswith(SUFFIX):
            return None
        parts = key[len(CHUNKS_PREFIX) : -len(SUFFIX)].split("/")
        if len(parts) == 4:
            tenant, date, session, chunk_id = parts
            return cls(key, tenant, date, session, chunk_id, size)
        if len(parts) == 3:
            tenant, date, chunk_id = parts
            return cls(key, tenant, date, "", chunk_id, size)
        return None


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


class LocalSink:
    """Writes chunks into local storage and reads them back for `runner chunks`."""

    def __init__(
        self,
        store: ObjectStore,
        settings: ForwardSettings,
        runner_id: str,
        encoder: Executor | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._runner_id = runner_id
        self._encoder = encoder
        self.description = store.description

    async def write(self, chunk: Chunk) -> int:
        """Store the chunk; returns the number of objects written. Raises `StoreUnavailable`."""
        tenant = chunk.tenant
        first_ms = chunk.entries[0].received_ms
        if chunk.replay_of:
            # A re-queued dead letter: keep it whole, as it was sent.
            key = f"{CHUNKS_PREFIX}{tenant}/{_day(first_ms)}/{chunk.chunk_id}{SUFFIX}"
            await self._store.put(check_key(key), chunk.body, CONTENT_TYPE)
            return 1
        loop = asyncio.get_running_loop()
        level = self._settings.zstd_level
        if self._settings.local_layout == "tenant/date":
            body = await loop.run_in_executor(self._encoder, encode, chunk, self._runner_id, level)
            key = f"{CHUNKS_PREFIX}{tenant}/{_day(first_ms)}/{chunk.chunk_id}{SUFFIX}"
            await self._store.put(check_key(key), body, CONTENT_TYPE)
            return 1
        parts = await loop.run_in_executor(
            self._encoder, encode_sessions, chunk, self._runner_id, level
        )
        for part in parts:
            key = f"{CHUNKS_PREFIX}{tenant}/{part.date}/{part.session_id}/{chunk.chunk_id}{SUFFIX}"
            await self._store.put(check_key(key), part.body, CONTENT_TYPE)
        return len(parts)

    async def list(
        self, tenant: str | None = None, date: str | None = None, session_id: str | None = None
    ) -> list[LocalChunk]:
        prefix = CHUNKS_PREFIX
        if tenant:
            prefix += f"{tenant}/"
            if date:
                prefix += f"{date}/"
        found = []
        for info in await self._store.list(prefix):
            item = LocalChunk.parse(info.key, info.size)
            if item is None:
                continue
            if date and item.date != date:
                continue
            if session_id and item.session_id != session_id:
                continue
            found.append(item)
        return found

    async def read(self, key: str) -> bytes:
        """The compressed chunk stored under `key` (as printed by `list`)."""
        if not key.startswith(CHUNKS_PREFIX):
            key = CHUNKS_PREFIX + key
        return await self._store.get(check_key(key))

    async def check(self) -> None:
        await self._store.check()

    async def apply_retention(self, tenant: str, days: int) -> int:
        return await self._store.expire(f"{CHUNKS_PREFIX}{tenant}/", days)
