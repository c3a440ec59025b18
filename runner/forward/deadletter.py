"""The dead-letter store: chunks the cloud refused for good, or that kept failing.

Layout (in the folder under data_dir, or under the s3:// prefix):

    dlq/<tenant>/<chunk_id>.zst    the chunk exactly as it was sent (zstd NDJSON), sealed
                                   (AES-256-GCM, bound to this name; see sealed.py)
    dlq/<tenant>/<chunk_id>.json   metadata, clear: reason, last status, attempts, first/last
                                   failure, tenant, policy version, counts, replays

The payload is written first and the metadata last, so a letter is listed only
once both are durable; the stream entries it came from are acknowledged only
after that. A dead letter's id is its chunk id, so writing the same chunk again
(after a crash, or a replay that failed again) replaces it instead of adding
a copy.

`replay` re-queues a letter into its tenant's stream as one entry carrying the
chunk as it was (fields `rp pv n t body`), so it is sent again under its
original `Idempotency-Key` and the cloud can dedupe it; once the cloud accepts
it, the forwarder deletes the letter.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

from runner.buffer.keys import FORWARD_GROUP, Keys
from runner.forward.chunker import rfc3339_ms
from runner.forward.storage import ObjectNotFound, ObjectStore, check_key

DLQ_PREFIX = "dlq/"

Reason = str
REASON_REJECTED = "rejected"
"""The cloud answered with a permanent 4xx."""
REASON_EXHAUSTED = "exhausted"
"""Still failing after the configured attempts or age."""
REASON_MALFORMED = "malformed"
"""The stream entries could not be encoded; the payload holds them raw (base64)."""

# KEYS: stream, bytes counter, tenants set
# ARGV: group, tenant, then the entry's field/value pairs (the last value is the body)
REPLAY_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
end
redis.call('SADD', KEYS[3], ARGV[2])
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('INCRBY', KEYS[2], string.len(ARGV[#ARGV]))
return id
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Metadata of one dead-lettered chunk (never its payload)."""

    id: str
    tenant: str
    reason: Reason
    last_status: int | None
    last_error: str
    attempts: int
    first_failure_at: str
    last_failure_at: str
    policy_version: int
    runner_id: str
    events: int
    entries: int
    compressed_bytes: int
    created_at: str
    replays: int = 0
    replayed_at: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, raw: bytes) -> DeadLetter:
        data: dict[str, Any] = orjson.loads(raw)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def payload_key(tenant: str, letter_id: str) -> str:
    return check_key(f"{DLQ_PREFIX}{tenant}/{letter_id}.zst")


def meta_key(tenant: str, letter_id: str) -> str:
    return check_key(f"{DLQ_PREFIX}{tenant}/{letter_id}.json")


class DeadLetterStore(Protocol):
    """Where chunks go when the cloud will not take them."""

    description: str

    async def put(self, letter: DeadLetter, body: bytes) -> None: ...

    async def list(
        self, tenant: str | None = None, reason: str | None = None
    ) -> list[DeadLetter]: ...

    async def get(self, letter_id: str, tenant: str | None = None) -> DeadLetter: ...

    async def payload(self, letter: DeadLetter) -> bytes: ...

    async def delete(self, tenant: str, letter_id: str) -> None: ...

    async def save(self, letter: DeadLetter) -> None: ...

    async def count(self) -> int: ...

    async def check(self) -> None: ...

    async def apply_retention(self, tenant: str, days: int) -> int: ...


class DeadLetters:
    """The dead-letter store over an `ObjectStore` (a folder under data_dir, or S3/MinIO)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self.description = store.description

    async def put(self, letter: DeadLetter, body: bytes) -> None:
        """Payload first, metadata last: a listed letter always has its payload."""
        await self._store.put(payload_key(letter.tenant, letter.id), body, "application/zstd")
        await self.save(letter)

    async def save(self, letter: DeadLetter) -> None:
        await self._store.put(
            meta_key(letter.tenant, letter.id), letter.to_json(), "application/json"
        )

    async def _keys(self, tenant: str | None) -> list[str]:
        prefix = f"{DLQ_PREFIX}{tenant}/" if tenant else DLQ_PREFIX
        return [o.key for o in await self._store.list(prefix) if o.key.endswith(".json")]

    async def list(self, tenant: str | None = None, reason: str | None = None) -> list[DeadLetter]:
        letters = []
        for key in await self._keys(tenant):
            try:
                letter = DeadLetter.from_json(await self._store.get(key))
            except ObjectNotFound:
                continue  # deleted while we listed
            if reason is None or letter.reason == reason:
                letters.append(letter)
        letters.sort(key=lambda x: (x.last_failure_at, x.id))
        return letters

    async def get(self, letter_id: str, tenant: str | None = None) -> DeadLetter:
        """A letter by id (or `tenant/id`); raises `ObjectNotFound`."""
        if "/" in letter_id:
            tenant, letter_id = letter_id.split("/", 1)
        if tenant:
            return DeadLetter.from_json(await self._store.get(meta_key(tenant, letter_id)))
        suffix = f"/{letter_id}.json"
        for key in await self._keys(None):
            if key.endswith(suffix):
                return DeadLetter.from_json(await self._store.get(key))
        raise ObjectNotFound(letter_id)

    async def payload(self, letter: DeadLetter) -> bytes:
        return await self._store.get(payload_key(letter.tenant, letter.id))

    async def delete(self, tenant: str, letter_id: str) -> None:
        """Metadata first, so a half-deleted letter is never listed without its payload."""
        await self._store.delete([meta_key(tenant, letter_id)])
        await self._store.delete([payload_key(tenant, letter_id)])

    async def count(self) -> int:
        return len(await self._keys(None))

    async def check(self) -> None:
        await self._store.check()

    async def apply_retention(self, tenant: str, days: int) -> int:
        return await self._store.expire(f"{DLQ_PREFIX}{tenant}/", days)


def new_letter(
    *,
    chunk_id: str,
    tenant: str,
    reason: Reason,
    last_status: int | None,
    last_error: str,
    attempts: int,
    first_failure_ms: int,
    policy_version: int,
    runner_id: str,
    events: int,
    entries: int,
    size: int,
    created_at: str,
    previous: DeadLetter | None = None,
) -> DeadLetter:
    """Metadata for a chunk going to the store now (keeping the replay count of an earlier one)."""
    now = int(time.time() * 1000)
    return DeadLetter(
        id=chunk_id,
        tenant=tenant,
        reason=reason,
        last_status=last_status,
        last_error=last_error,
        attempts=attempts,
        first_failure_at=rfc3339_ms(first_failure_ms or now),
        last_failure_at=rfc3339_ms(now),
        policy_version=policy_version,
        runner_id=runner_id,
        events=events,
        entries=entries,
        compressed_bytes=size,
        created_at=created_at,
        replays=previous.replays if previous else 0,
        replayed_at=previous.replayed_at if previous else None,
    )


async def replay(redis: Redis, keys: Keys, store: DeadLetterStore, letter: DeadLetter) -> str:
    """Re-queue a letter into its tenant's stream; returns the new stream entry id.

    The metadata is marked replayed first: once the entry is in the stream the
    forwarder may deliver it and delete the letter at any moment.
    """
    body = await store.payload(letter)
    now = rfc3339_ms(int(time.time() * 1000))
    await store.save(replace(letter, replays=letter.replays + 1, replayed_at=now))
    entry_id = await redis.eval(
        REPLAY_LUA,
        3,
        keys.stream(letter.tenant),
        keys.bytes(letter.tenant),
        keys.tenants(),
        FORWARD_GROUP,
        letter.tenant,
        "rp",
        letter.id,
        "pv",
        letter.policy_version,
        "n",
        letter.events,
        "t",
        int(time.time() * 1000),
        "body",
        body,
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
