"""What the Runner stored or forwarded for a session: the places the e2e tests read it from.

`collected_events` reads the tenant's Redis stream (XRANGE), whose entries hold the redacted
events (`ev`); `cloud_events` rebuilds the batches from the NDJSON lines
(`{"session_id","seq","i","event"}`) that the fake cloud accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from runner.buffer.keys import Keys
from tests.forward.support import FakeCloud
from tests.support import TENANT


@dataclass(frozen=True, slots=True)
class StoredBatch:
    seq: int
    events: list[dict[str, Any]]
    raw: bytes  # the stored bytes, scanned for PII as they are


async def collected_events(
    redis: Redis, session_id: str, tenant: str = TENANT, prefix: str = "tf"
) -> list[StoredBatch]:
    """Every batch stored for the session, in storage order (duplicates would show here)."""
    entries = await redis.xrange(Keys(prefix).stream(tenant))
    out: list[StoredBatch] = []
    for _, raw_fields in entries or []:
        fields = cast(dict[bytes, bytes], raw_fields)
        if fields[b"sid"] != session_id.encode():
            continue
        out.append(StoredBatch(int(fields[b"seq"]), orjson.loads(fields[b"ev"]), fields[b"ev"]))
    return out


def cloud_events(cloud: FakeCloud, session_id: str) -> list[StoredBatch]:
    """Every batch of the session that the fake cloud accepted, rebuilt from its NDJSON lines."""
    by_seq: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for chunk in cloud.accepted.values():
        for line in chunk.lines:
            if line["session_id"] == session_id:
                by_seq.setdefault(line["seq"], []).append((line["i"], line["event"]))
    out = []
    for seq in sorted(by_seq):
        events = [event for _, event in sorted(by_seq[seq], key=lambda pair: pair[0])]
        out.append(StoredBatch(seq, events, orjson.dumps(events)))
    return out
