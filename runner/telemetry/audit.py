"""The audit log: append-only JSON lines, each hash-chained to the one before.

Every line carries `prev` (the previous line's hash) and `hash` =
SHA-256(prev + the line's canonical JSON without `hash`). Editing, removing or
reordering a line breaks the chain from there on; `runner audit verify` finds
the first broken line. Records are security-relevant actions only (auth
failures, policy accepted/refused, detokenize, drain, dead-letter replay and
purge, admin access) and never carry token values, keys or payload text.

Writes happen on a background task in a thread (append, fsync), fed by a
bounded queue, so callers on the event loop never block on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

log = structlog.get_logger(__name__)

EV_AUDIT_DROPPED = "audit.dropped"
GENESIS = "0" * 64
QUEUE_SIZE = 10_000
AUTH_FAILURES_PER_MINUTE = 20  # per source; beyond it failures are counted, not written


def _digest(prev: str, body: dict[str, Any]) -> str:
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(prev.encode() + canonical).hexdigest()


def last_hash(path: Path) -> str:
    """The hash of the last line of an existing log, or the genesis hash."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return GENESIS
    for line in reversed(lines):
        if line.strip():
            return str(orjson.loads(line)["hash"])
    return GENESIS


def verify(path: Path) -> tuple[bool, int, str]:
    """Check the chain: (ok, lines checked, reason of the first failure)."""
    prev = GENESIS
    count = 0
    for count, line in enumerate(_lines(path), start=1):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return False, count, f"line {count}: not JSON"
        claimed = record.pop("hash", None)
        if record.get("prev") != prev:
            return False, count, f"line {count}: does not follow the line before it"
        if claimed != _digest(prev, record):
            return False, count, f"line {count}: content does not match its hash"
        prev = claimed
    return True, count, ""


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield line


class AuditLog:
    """Appends hash-chained records; `record()` is safe to call from the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._prev = GENESIS
        self._auth_window: dict[str, tuple[float, int]] = {}
        self.dropped = 0
        self.suppressed = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prev = await asyncio.to_thread(last_hash, self.path)
        self._task = asyncio.create_task(self._writer(), name="audit-writer")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def record(self, action: str, **fields: Any) -> None:
        """Queue one record. Values must be ids, counts or names — never secrets or payloads."""
        body = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "action": action}
        body.update(fields)
        try:
            self._queue.put_nowait(body)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error(EV_AUDIT_DROPPED, action=action, dropped=self.dropped)

    def auth_failure(self, source: str, transport: str, reason: str) -> None:
        """Record a refused credential, at most AUTH_FAILURES_PER_MINUTE per source a minute."""
        now = time.monotonic()
        start, count = self._auth_window.get(source, (now, 0))
        if now - start > 60:
            start, count = now, 0
        count += 1
        self._auth_window[source] = (start, count)
        if len(self._auth_window) > 10_000:  # bound the table under a spray of sources
            self._auth_window = {source: (start, count)}
        if count > AUTH_FAILURES_PER_MINUTE:
            self.suppressed += 1
            return
        self.record("auth.failure", source=source, transport=transport, reason=reason)

    async def _writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await asyncio.to_thread(self._append, batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _append(self, batch: list[dict[str, Any]]) -> None:
        self._prev = append_records(self.path, batch)


def append_records(path: Path, batch: list[dict[str, Any]]) -> str:
    """Chain and append records under an exclusive lock, then fsync; returns the last hash.

    The lock and the re-read of the last hash let other writers (the Runner and a
    `runner detokenize` on the same host) share one chain.
    """
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        prev = last_hash(path)
        lines = []
        for body in batch:
            body["prev"] = prev
            prev = _digest(prev, body)
            lines.append(orjson.dumps({**body, "hash": prev}) + b"\n")
        os.write(fd, b"".join(lines))
        os.fsync(fd)
        return prev
    finally:
        os.close(fd)  # closing releases the lock


def record_now(path: Path, action: str, **fields: Any) -> None:
    """Append one record synchronously (for CLI commands that run outside the Runner)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "action": action}
    body.update(fields)
    append_records(path, [body])
