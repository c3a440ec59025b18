"""What a drain did and is doing: for `/admin/status`, `POST /admin/drain` and `runner drain`.

A drain goes through `state`: "" (none yet) → `sessions` (goaway, close 1001) →
`forwarding` (until the buffer is empty or the deadline) → `spilling` (only
with spill: the rest to the dead-letter store) → `done` (or `failed`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from runner.forward.forwarder import Forwarder
from runner.forward.spill import SpillReport


@dataclass
class DrainReport:
    """One drain's progress and outcome (counts only, never payload)."""

    deadline_s: float = 0.0
    spill: bool = False
    spill_deadline_s: float = 0.0
    state: str = ""
    started: float = 0.0
    """`time.monotonic()` when the drain began."""
    finished: float = 0.0
    backlog_entries: int | None = None
    """Entries not yet acknowledged when forwarding began."""
    forwarded: dict[str, int] = field(default_factory=dict)
    """Chunks and events delivered (cloud or local store) and chunks dead-lettered, this drain."""
    remaining_entries: int = 0
    """Entries left in Redis when the drain finished (sent again after the next start)."""
    spilled: SpillReport | None = None
    spill_skipped: str | None = None
    """Why a requested spill did nothing (no forwarder on this Runner, air-gapped)."""
    error: str | None = None

    def elapsed_s(self) -> float:
        if not self.started:
            return 0.0
        return round((self.finished or time.monotonic()) - self.started, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "deadline_s": self.deadline_s,
            "spill": self.spill,
            "spill_deadline_s": self.spill_deadline_s if self.spill else None,
            "elapsed_s": self.elapsed_s(),
            "backlog_entries": self.backlog_entries,
            "forwarded": dict(self.forwarded),
            "spilled": self.spilled.summary() if self.spilled is not None else None,
            "spill_skipped": self.spill_skipped,
            "remaining_entries": self.remaining_entries,
            "error": self.error,
        }

    def outcome(self) -> dict[str, Any]:
        """The few numbers the log and the audit record keep of a finished drain."""
        spilled = self.spilled.totals() if self.spilled else {}
        return {
            "remaining_entries": self.remaining_entries,
            "forwarded_events": self.forwarded.get("events", 0),
            "spilled_chunks": spilled.get("chunks", 0),
            "spilled_events": spilled.get("events", 0),
            "spill_manifest": self.spilled.manifest if self.spilled else None,
        }

    async def progress(self, sessions_open: int, forwarder: Forwarder | None) -> dict[str, Any]:
        """The report, with open sessions and, while forwarding or spilling, the live backlog."""
        body = self.to_dict()
        body["sessions_open"] = sessions_open
        if forwarder is not None and self.state in ("forwarding", "spilling"):
            with contextlib.suppress(RedisError, OSError):
                body["backlog_now"] = await forwarder.backlog()
        return body


async def flush_buffer(
    report: DrainReport, forwarder: Forwarder | None, runner_id: str, end: float
) -> None:
    """The drain after the sessions: forward until empty or `end`, then spill if asked."""
    if forwarder is None:
        if report.spill:
            report.spill_skipped = "forwarding is off on this Runner ([forward] enabled)"
        report.state = "done"
        return
    report.state = "forwarding"
    before = forwarder.totals()
    report.backlog_entries = await forwarder.backlog()
    await forwarder.run_until_empty(max(0.0, end - time.monotonic()))
    await forwarder.flush(max(0.0, end - time.monotonic()))
    after = forwarder.totals()
    report.forwarded = {key: value - before.get(key, 0) for key, value in after.items()}
    remaining = await forwarder.backlog()
    if report.spill and forwarder.cloud.air_gapped:
        report.spill_skipped = "air-gapped: chunks stay in local storage; nothing to spill"
    elif report.spill and remaining > 0:
        report.state = "spilling"
        report.spilled = SpillReport.start(runner_id)
        await forwarder.spill(report.spill_deadline_s, report.spilled)
        remaining = await forwarder.backlog()
    report.remaining_entries = remaining
    report.state = "done"
