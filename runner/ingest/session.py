"""The session protocol of PROTOCOL §1, shared by every transport.

`Ingestor` turns a hello into a welcome and a batch into an ack or nack. A
batch goes: dedupe by seq → sampling → high-water check → redaction →
durable append; the ack is returned only after the append is durable. The
WebSocket, WebRTC and HTTP transports only move bytes to and from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from runner.buffer.redis_streams import Entry, StreamBuffer
from runner.config import Config
from runner.errors import BufferFull, BufferUnavailable, ProtocolError, RunnerError
from runner.ingest import messages as m
from runner.ingest.auth import Project, ProjectDirectory
from runner.policy.store import PolicyStore, in_sample
from runner.redact import RedactRequest, RedactResult

log = structlog.get_logger(__name__)

EV_SESSION_OPEN = "session.open"
EV_SESSION_CLOSED = "session.closed"
EV_BATCH_REFUSED = "batch.refused"
EV_BATCH_FAILED = "batch.failed"


class RedactStage(Protocol):
    """What ingest needs of the PII engine."""

    async def redact(self, req: RedactRequest) -> RedactResult: ...

    def end_session(self, tenant: str, session_id: str) -> None: ...


@dataclass(slots=True)
class Session:
    """One SDK session on one connection."""

    project: Project
    session_id: str
    transport: str
    sampled: bool
    watermark: int
    opened: float = field(default_factory=time.monotonic)
    batches: int = 0
    events: int = 0

    @property
    def tenant(self) -> str:
        return self.project.tenant


@dataclass(slots=True)
class IngestStats:
    """Counters the admin status and metrics read."""

    batches_acked: int = 0
    batches_duplicate: int = 0
    batches_nacked: int = 0
    events_stored: int = 0
    sessions_open: dict[str, int] = field(default_factory=dict)


class Ingestor:
    """Authenticates sessions and carries their batches into the buffer."""

    def __init__(
        self,
        config: Config,
        directory: ProjectDirectory,
        policies: PolicyStore,
        redactor: RedactStage,
        buffer: StreamBuffer,
    ) -> None:
        self._config = config
        self._directory = directory
        self._policies = policies
        self._redactor = redactor
        self._buffer = buffer
        self.stats = IngestStats()

    @property
    def limits(self) -> dict[str, int]:
        ingest = self._config.ingest
        return {"max_message_bytes": ingest.max_message_bytes, "max_events": ingest.max_events}

    def authenticate(self, token: str | None) -> Project:
        return self._directory.authenticate(token)

    async def open(self, hello: m.Hello, header_token: str | None, transport: str) -> Session:
        """Authenticate a hello and look up where the session resumes; raises ProtocolError."""
        project = self._directory.authenticate(hello.token or header_token)
        self._directory.connect(project)
        try:
            watermark = await self._buffer.watermark(project.tenant, hello.session_id)
        except BufferUnavailable:
            self._directory.disconnect(project)
            raise
        policy = self._policies.current.for_tenant(project.tenant)
        session = Session(
            project=project,
            session_id=hello.session_id,
            transport=transport,
            sampled=in_sample(project.tenant, hello.session_id, policy.sampling.session_rate),
            watermark=watermark,
        )
        opened = self.stats.sessions_open
        opened[transport] = opened.get(transport, 0) + 1
        log.info(EV_SESSION_OPEN, resume_seq=watermark, sampled=session.sampled)
        return session

    def welcome(self, session: Session) -> bytes:
        return m.welcome(
            session.session_id,
            session.watermark,
            session.sampled,
            self._policies.current.version,
            self.limits,
        )

    def close(self, session: Session) -> None:
        self._directory.disconnect(session.project)
        self.stats.sessions_open[session.transport] -= 1
        self._redactor.end_session(session.tenant, session.session_id)
        log.info(EV_SESSION_CLOSED, batches=session.batches, events=session.events)

    async def batch(self, session: Session, batch: m.Batch | m.BadBatch) -> bytes:
        """Handle one batch and return the ack or nack to send."""
        if isinstance(batch, m.BadBatch):
            self.stats.batches_nacked += 1
            log.info(EV_BATCH_REFUSED, seq=batch.seq, code=batch.code, reason=batch.reason)
            return m.nack(batch.seq, batch.code)
        if batch.seq <= session.watermark or not session.sampled:
            self.stats.batches_duplicate += 1
            return m.ack(batch.seq)
        retry_ms = self._config.buffer.retry_after_ms
        try:
            self._buffer.admit(session.tenant)
            stored = await self._store(session, batch)
        except BufferFull:
            self.stats.batches_nacked += 1
            return m.nack(batch.seq, m.NACK_BUFFER_FULL, retry_ms)
        except RunnerError as e:
            self.stats.batches_nacked += 1
            log.warning(EV_BATCH_FAILED, seq=batch.seq, error=type(e).__name__)
            return m.nack(
                batch.seq, m.NACK_BUFFER_FULL if e.retriable else m.NACK_INVALID, retry_ms
            )
        if stored:
            session.batches += 1
            session.events += len(batch.events)
            self.stats.batches_acked += 1
        else:
            self.stats.batches_duplicate += 1
        return m.ack(batch.seq)

    async def _store(self, session: Session, batch: m.Batch) -> bool:
        policy = self._policies.current
        result = await self._redactor.redact(
            RedactRequest(
                tenant=session.tenant,
                project=session.project.id,
                session_id=session.session_id,
                policy=policy.for_tenant(session.tenant),
                events=batch.events,
            )
        )
        stored = await self._buffer.append(
            Entry(
                tenant=session.tenant,
                project=session.project.id,
                session_id=session.session_id,
                seq=batch.seq,
                policy_version=policy.version,
                count=result.kept,
                events=result.events_json,
            )
        )
        if stored.watermark > session.watermark:
            session.watermark = stored.watermark
        if stored.stored:
            self.stats.events_stored += result.kept
        return stored.stored


__all__ = ["Ingestor", "ProtocolError", "RedactStage", "Session"]
