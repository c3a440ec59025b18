"""Stream entries → chunks → the NDJSON of PROTOCOL §2 in one zstd frame. Sans-IO.

A chunk holds entries of one tenant and one policy version, cut by bytes,
events and linger time. Its id is a hash of the tenant and the stream entry ids
it covers, so the same entries always make the same `Idempotency-Key`.
Encoding is pure CPU work meant to run in an executor (`encode`,
`encode_sessions`); nothing here touches Redis, the network or the clock
except through arguments.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import zstandard

from runner.errors import RunnerError

MAX_DECOMPRESSED = 512 * 1024 * 1024
LINE_OVERHEAD = 72  # bytes of one NDJSON line around the event, besides session id and project


class MalformedEntry(RunnerError):
    """A stream entry lacks a field or its events are not a JSON array."""


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One stream entry: a redacted batch, or a dead-lettered chunk re-queued for replay."""

    id: str
    session_id: str = ""
    project: str = ""
    seq: int = 0
    policy_version: int = 0
    count: int = 0
    received_ms: int = 0
    events: bytes = b""
    replay_of: str = ""
    """For a replay entry: the chunk id it carries; `body` is that chunk as it was sent."""
    body: bytes = b""
    malformed: bool = False
    """The entry could not be read; it goes to the dead-letter store as it is."""
    traceparent: str = ""
    """W3C traceparent of the batch's ingest span (field `tp`; "" when tracing was off)."""

    @property
    def size(self) -> int:
        """What this entry added to the tenant's buffered-bytes counter."""
        return len(self.body) if self.replay_of else len(self.events)

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[bytes, bytes]) -> StreamEntry:
        """Read an entry written by the buffer (`sid proj seq pv n t [tp] ev`) or by a replay."""
        try:
            if b"rp" in fields:
                return cls(
                    id=entry_id,
                    policy_version=int(fields[b"pv"]),
                    count=int(fields[b"n"]),
                    received_ms=int(fields[b"t"]),
                    replay_of=fields[b"rp"].decode(),
                    body=fields[b"body"],
                )
            return cls(
                id=entry_id,
                session_id=fields[b"sid"].decode(),
                project=fields[b"proj"].decode(),
                seq=int(fields[b"seq"]),
                policy_version=int(fields[b"pv"]),
                count=int(fields[b"n"]),
                received_ms=int(fields[b"t"]),
                events=fields[b"ev"],
                traceparent=fields.get(b"tp", b"").decode("ascii", errors="replace"),
            )
        except (KeyError, ValueError, UnicodeDecodeError) as e:
            raise MalformedEntry(f"stream entry {entry_id} is malformed ({e!r})") from e


def chunk_id_for(tenant: str, entry_ids: Iterable[str]) -> str:
    """The chunk id: 32 hex digits of SHA-256 over the tenant and the entry ids, in order."""
    digest = hashlib.sha256(tenant.encode())
    for entry_id in entry_ids:
        digest.update(b"\x00" + entry_id.encode())
    return digest.hexdigest()[:32]


def rfc3339_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class Chunk:
    """Entries of one tenant and policy version that travel together under one id."""

    chunk_id: str
    tenant: str
    policy_version: int
    created_at: str
    entries: tuple[StreamEntry, ...]
    body: bytes = b""
    """The zstd frame, once encoded (a replay chunk arrives with it)."""
    sessions: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.sessions:
            self.sessions = frozenset(e.session_id for e in self.entries if not e.replay_of)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    @property
    def events(self) -> int:
        return sum(e.count for e in self.entries)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def malformed(self) -> bool:
        return any(e.malformed for e in self.entries)

    def traceparents(self) -> list[str]:
        """The distinct batch traceparents of the entries, in stream order."""
        return list(dict.fromkeys(e.traceparent for e in self.entries if e.traceparent))

    @property
    def replay_of(self) -> str:
        """The dead-letter id when this chunk is a replay, else ""."""
        first = self.entries[0]
        return first.replay_of if len(self.entries) == 1 else ""

    def manifest(self) -> bytes:
        """What Redis keeps while the chunk is in flight, to rebuild it exactly after a crash."""
        return orjson.dumps(
            {"ids": self.ids, "created_at": self.created_at, "pv": self.policy_version}
        )

    @classmethod
    def single(cls, tenant: str, entry: StreamEntry) -> Chunk:
        """A chunk of one entry that travels alone: a replayed dead letter or a malformed entry."""
        if entry.replay_of:
            return cls.replay(tenant, entry)
        return cls(
            chunk_id=chunk_id_for(tenant, [entry.id]),
            tenant=tenant,
            policy_version=entry.policy_version,
            created_at=rfc3339_ms(entry.received_ms),
            entries=(entry,),
        )

    @classmethod
    def replay(cls, tenant: str, entry: StreamEntry) -> Chunk:
        return cls(
            chunk_id=entry.replay_of,
            tenant=tenant,
            policy_version=entry.policy_version,
            created_at=rfc3339_ms(entry.received_ms),
            entries=(entry,),
            body=entry.body,
        )


def from_manifest(
    tenant: str, raw: bytes, entries: Mapping[str, StreamEntry]
) -> tuple[Chunk | None, list[str]]:
    """Rebuild a recorded chunk from recovered entries; also returns the ids it lacks."""
    manifest = orjson.loads(raw)
    ids: list[str] = list(manifest["ids"])
    missing = [i for i in ids if i not in entries]
    if missing:
        return None, missing
    chunk = Chunk(
        chunk_id=chunk_id_for(tenant, ids),
        tenant=tenant,
        policy_version=int(manifest["pv"]),
        created_at=str(manifest["created_at"]),
        entries=tuple(entries[i] for i in ids),
    )
    return chunk, []


@dataclass(slots=True)
class Regrouped:
    """Recovered entries sorted out: chunks rebuilt from their manifests, and the rest."""

    chunks: list[Chunk]
    """Rebuilt exactly (same entries, same id), oldest first."""
    fresh: list[StreamEntry]
    """Entries no complete manifest covers, in stream order: to be chunked afresh."""
    partial: int
    """Manifests of which some, but not all, entries were recovered."""
    unmatched: dict[str, str]
    """Manifests of which no entry was recovered: chunk id → its first entry id."""


def entry_id_key(entry_id: str) -> tuple[int, int]:
    """Sort key of a stream entry id (`<ms>-<seq>`)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def regroup(
    tenant: str, manifests: Mapping[str, bytes], entries: Mapping[str, StreamEntry]
) -> Regrouped:
    """Rebuild each recorded chunk whose entries were all recovered; the rest stay fresh."""
    fresh = dict(entries)
    rebuilt: list[Chunk] = []
    partial = 0
    unmatched: dict[str, str] = {}
    for chunk_id, raw in manifests.items():
        chunk, missing = from_manifest(tenant, raw, fresh)
        if chunk is not None:
            rebuilt.append(chunk)
            for entry_id in chunk.ids:
                del fresh[entry_id]
        elif len(missing) < len(orjson.loads(raw)["ids"]):
            partial += 1
        else:
            unmatched[chunk_id] = missing[0]
    rebuilt.sort(key=lambda c: entry_id_key(c.entries[0].id))
    rest = sorted(fresh.values(), key=lambda e: entry_id_key(e.id))
    return Regrouped(rebuilt, rest, partial, unmatched)


class ChunkBuilder:
    """Groups one tenant's entries, in stream order, into chunks bounded by bytes, events, time."""

    def __init__(
        self,
        tenant: str,
        max_bytes: int,
        max_events: int,
        linger_s: float,
        clock: Callable[[], float],
        wall_ms: Callable[[], int],
    ) -> None:
        self.tenant = tenant
        self._max_bytes = max_bytes
        self._max_events = max_events
        self._linger_s = linger_s
        self._clock = clock
        self._wall_ms = wall_ms
        self._entries: list[StreamEntry] = []
        self._bytes = 0
        self._events = 0
        self._opened = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def events(self) -> int:
        """Events in the open chunk."""
        return self._events

    @staticmethod
    def estimate(entry: StreamEntry) -> int:
        """Approximate NDJSON bytes of an entry (the header line is small and not counted)."""
        per_line = LINE_OVERHEAD + len(entry.session_id) + len(entry.project)
        return len(entry.events) + max(entry.count, 1) * per_line

    def add(self, entry: StreamEntry) -> list[Chunk]:
        """Take one entry; return the chunks this seals (zero, one or two)."""
        if entry.replay_of or entry.malformed:
            sealed = self._seal_list()
            return [*sealed, Chunk.single(self.tenant, entry)]
        out: list[Chunk] = []
        size = self.estimate(entry)
        if self._entries and (
            entry.policy_version != self._entries[0].policy_version
            or self._bytes + size > self._max_bytes
            or self._events + entry.count > self._max_events
        ):
            out.extend(self._seal_list())
        if not self._entries:
            self._opened = self._clock()
        self._entries.append(entry)
        self._bytes += size
        self._events += entry.count
        if self._bytes >= self._max_bytes or self._events >= self._max_events:
            out.extend(self._seal_list())
        return out

    def time_left(self) -> float | None:
        """Seconds until the open chunk is due; None when nothing is open."""
        if not self._entries:
            return None
        return max(0.0, self._opened + self._linger_s - self._clock())

    def due(self) -> bool:
        left = self.time_left()
        return left is not None and left <= 0.0

    def seal(self) -> Chunk | None:
        """Close the open chunk, if any."""
        if not self._entries:
            return None
        entries = tuple(self._entries)
        self._entries = []
        self._bytes = 0
        self._events = 0
        return Chunk(
            chunk_id=chunk_id_for(self.tenant, (e.id for e in entries)),
            tenant=self.tenant,
            policy_version=entries[0].policy_version,
            created_at=rfc3339_ms(self._wall_ms()),
            entries=entries,
        )

    def _seal_list(self) -> list[Chunk]:
        chunk = self.seal()
        return [chunk] if chunk is not None else []


# -- encoding (runs in an executor) --------------------------------------------


def _ordered(entries: Iterable[StreamEntry]) -> list[StreamEntry]:
    """Entries grouped by session and in seq order within each (stable for equal seqs)."""
    return sorted(entries, key=lambda e: (e.session_id, e.seq))


def _lines(entry: StreamEntry) -> list[bytes]:
    try:
        events = orjson.loads(entry.events)
    except orjson.JSONDecodeError as e:
        raise MalformedEntry(f"stream entry {entry.id}: events are not JSON") from e
    if not isinstance(events, list):
        raise MalformedEntry(f"stream entry {entry.id}: events are not a JSON array")
    head = b'{"session_id":' + orjson.dumps(entry.session_id) + b',"seq":%d,"i":' % entry.seq
    tail = b',"project":' + orjson.dumps(entry.project) + b',"event":'
    return [head + b"%d" % i + tail + orjson.dumps(event) + b"}" for i, event in enumerate(events)]


def _header(chunk_id: str, chunk: Chunk, runner_id: str, count: int) -> bytes:
    return orjson.dumps(
        {
            "chunk_id": chunk_id,
            "tenant": chunk.tenant,
            "runner_id": runner_id,
            "created_at": chunk.created_at,
            "policy_version": chunk.policy_version,
            "count": count,
        }
    )


def _frame(header: bytes, lines: Sequence[bytes], level: int) -> bytes:
    payload = b"\n".join([header, *lines]) + b"\n"
    return zstandard.ZstdCompressor(level=level).compress(payload)


def encode(chunk: Chunk, runner_id: str, level: int) -> bytes:
    """The chunk as PROTOCOL §2 NDJSON (header line, one line per event) in one zstd frame."""
    lines: list[bytes] = []
    for entry in _ordered(chunk.entries):
        lines.extend(_lines(entry))
    return _frame(_header(chunk.chunk_id, chunk, runner_id, len(lines)), lines, level)


def encode_raw(chunk: Chunk, runner_id: str, level: int) -> bytes:
    """Entries that cannot be parsed, kept byte for byte (base64) for the dead-letter store."""
    lines = [
        orjson.dumps(
            {
                "entry_id": e.id,
                "session_id": e.session_id,
                "seq": e.seq,
                "project": e.project,
                "raw_events_b64": base64.b64encode(e.events).decode(),
            }
        )
        for e in chunk.entries
    ]
    return _frame(_header(chunk.chunk_id, chunk, runner_id, len(lines)), lines, level)


@dataclass(frozen=True, slots=True)
class SessionPart:
    """One session's share of a chunk, as stored locally in air-gapped mode."""

    session_id: str
    date: str
    events: int
    body: bytes


def encode_sessions(chunk: Chunk, runner_id: str, level: int) -> list[SessionPart]:
    """One zstd NDJSON frame per session of the chunk (header `count` is that session's)."""
    by_session: dict[str, list[StreamEntry]] = {}
    for entry in _ordered(chunk.entries):
        by_session.setdefault(entry.session_id, []).append(entry)
    parts = []
    for session_id, entries in by_session.items():
        lines: list[bytes] = []
        for entry in entries:
            lines.extend(_lines(entry))
        header = _header(chunk.chunk_id, chunk, runner_id, len(lines))
        day = datetime.fromtimestamp(entries[0].received_ms / 1000, UTC).strftime("%Y-%m-%d")
        parts.append(SessionPart(session_id, day, len(lines), _frame(header, lines, level)))
    return parts


def decode(body: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A chunk frame → (header, event lines). For readers: the CLI, tests, benchmarks."""
    payload = zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_DECOMPRESSED)
    rows = [orjson.loads(line) for line in payload.splitlines() if line]
    if not rows:
        raise MalformedEntry("empty chunk")
    return rows[0], rows[1:]


def decompress(body: bytes) -> bytes:
    """The NDJSON inside a chunk frame."""
    data: bytes = zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_DECOMPRESSED)
    return data
