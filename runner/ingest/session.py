"""The session protocol of PROTOCOL §1, shared by every transport.

`Ingestor` turns a hello into a welcome and a batch into an ack or nack. A
batch goes: dedupe by seq → sampling → high-water check → redaction →
durable append; the ack is returned only after the append is durable. The
WebSocket, WebRTC and HTTP transports only move bytes to and from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from opentelemetry import trace
from opentelemetry.context import Context

from runner.buffer.redis_streams import Entry, StreamBuffer
from runner.config import Config
from runner.errors import BufferFull, BufferUnavailable, ProtocolError, RunnerError
from runner.ingest import messages as m
from runner.ingest.auth import Project, ProjectDirectory
from runner.policy.features import FeatureResult, judge
from runner.policy.model import Policy
from runner.policy.ratelimit import RateLimiter
from runner.policy.store import PolicyStore, in_sample
from runner.redact import RedactRequest, RedactResult
from runner.security.jwt import JwtVerifier, looks_like_jwt
from runner.security.ratelimit import FailedAuthLimiter
from runner.telemetry.audit import AuditLog
from runner.telemetry.metrics import Metrics
from runner.telemetry.tracing import inject_traceparent, parent_context

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
    trace_parent: Context | None = None
    policy_version: int = 0
    """The version that decided `sampled`, sent in the welcome."""
    opened: float = field(default_factory=time.monotonic)
    batches: int = 0
    events: int = 0

    @property
    def tenant(self) -> str:
        return self.project.tenant


@dataclass(slots=True)
class IngestStats:
    """Counters the admin status reads (metrics carry the labelled detail)."""

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
        metrics: Metrics,
        tracer: trace.Tracer,
        audit: AuditLog | None = None,
        limiter: RateLimiter | None = None,
        jwt: JwtVerifier | None = None,
        auth_limiter: FailedAuthLimiter | None = None,
    ) -> None:
        self._config = config
        self._directory = directory
        self._policies = policies
        self._redactor = redactor
        self._buffer = buffer
        self._metrics = metrics
        self._tracer = tracer
        self._audit = audit
        self._limiter = limiter
        self._jwt = jwt
        self._auth_limiter = auth_limiter
        self.stats = IngestStats()

    @property
    def limits(self) -> dict[str, int]:
        ingest = self._config.ingest
        return {"max_message_bytes": ingest.max_message_bytes, "max_events": ingest.max_events}

    def authenticate(self, token: str | None, transport: str, peer: str) -> Project:
        """The project for a credential; failures are counted and audited (rate-limited)."""
        if self._auth_limiter is not None:
            try:
                self._auth_limiter.check(peer)  # a blocked source is refused before any check
            except ProtocolError:
                self._metrics.auth_failures.labels(transport).inc()
                raise
        try:
            if self._jwt is not None and self._jwt.enabled and looks_like_jwt(token):
                assert token is not None
                identity = self._jwt.verify(token)
                return self._directory.project(identity.project)
            return self._directory.authenticate(token)
        except ProtocolError as e:
            self._metrics.auth_failures.labels(transport).inc()
            if self._audit is not None:
                self._audit.auth_failure(peer, transport, e.reason)
            limiter = self._auth_limiter
            blocked = (
                e.close_code == m.CLOSE_UNAUTHORIZED
                and limiter is not None
                and limiter.failed(peer)
            )
            if blocked and self._audit is not None:
                self._audit.record("auth.blocked", source=peer, transport=transport)
            raise

    async def open(
        self, hello: m.Hello, header_token: str | None, transport: str, peer: str = ""
    ) -> Session:
        """Authenticate a hello and look up where the session resumes; raises ProtocolError."""
        project = self.authenticate(hello.token or header_token, transport, peer)
        self._directory.connect(project)
        try:
            watermark = await self._buffer.watermark(project.tenant, hello.session_id)
        except BufferUnavailable:
            self._directory.disconnect(project)
            raise
        policy = self._policies.current  # one snapshot: `sampled` and the welcome's version
        rate = policy.for_tenant(project.tenant).sampling.session_rate
        session = Session(
            project=project,
            session_id=hello.session_id,
            transport=transport,
            sampled=in_sample(project.tenant, hello.session_id, rate),
            watermark=watermark,
            trace_parent=parent_context(hello.traceparent),
            policy_version=policy.version,
        )
        opened = self.stats.sessions_open
        opened[transport] = opened.get(transport, 0) + 1
        self._metrics.sessions.labels(transport).inc()
        log.info(EV_SESSION_OPEN, resume_seq=watermark, sampled=session.sampled)
        return session

    def welcome(self, session: Session) -> bytes:
        return m.welcome(
            session.session_id,
            session.watermark,
            session.sampled,
            session.policy_version,
            self.limits,
        )

    def close(self, session: Session) -> None:
        self._directory.disconnect(session.project)
        self.stats.sessions_open[session.transport] -= 1
        self._metrics.sessions.labels(session.transport).dec()
        self._redactor.end_session(session.tenant, session.session_id)
        log.info(EV_SESSION_CLOSED, batches=session.batches, events=session.events)

    async def batch(self, session: Session, batch: m.Batch | m.BadBatch) -> bytes:
        """Handle one batch and return the ack or nack to send."""
        counted = self._metrics.batches
        if isinstance(batch, m.BadBatch):
            self.stats.batches_nacked += 1
            counted.labels(session.transport, session.tenant, f"nack_{batch.code}").inc()
            log.info(EV_BATCH_REFUSED, seq=batch.seq, code=batch.code, reason=batch.reason)
            return m.nack(batch.seq, batch.code)
        if batch.seq <= session.watermark or not session.sampled:
            self.stats.batches_duplicate += 1
            result = "duplicate" if session.sampled else "unsampled"
            counted.labels(session.transport, session.tenant, result).inc()
            return m.ack(batch.seq)
        retry_ms = self._config.buffer.retry_after_ms
        policy = self._policies.current  # one snapshot judges the whole batch
        rules = policy.for_tenant(session.tenant)
        with self._tracer.start_as_current_span(
            "ingest.batch",
            context=session.trace_parent,
            attributes={
                "traceflow.tenant": session.tenant,
                "traceflow.seq": batch.seq,
                "traceflow.events": len(batch.events),
                "traceflow.policy_version": policy.version,
            },
        ):
            try:
                judged = judge(batch.events, rules.features)
                events = judged.events
                if judged.dropped or judged.bodies_removed:
                    self._count_feature_drops(session.tenant, judged)
                self._buffer.admit(session.tenant)  # a full buffer costs no rate-limit tokens
                if self._limiter is not None:
                    wait_ms = await self._limiter.take(
                        session.tenant, len(events), rules.rate_limit
                    )
                    if wait_ms is not None:
                        return self._nack(session, batch, m.NACK_RATE_LIMITED, wait_ms)
                stored = await self._store(session, batch.seq, events, policy)
            except BufferFull:
                return self._nack(session, batch, m.NACK_BUFFER_FULL, retry_ms)
            except RunnerError as e:
                log.warning(EV_BATCH_FAILED, seq=batch.seq, error=type(e).__name__)
                if e.retriable:
                    return self._nack(session, batch, m.NACK_BUFFER_FULL, retry_ms)
                return self._nack(session, batch, m.NACK_INVALID, None)
        if stored:
            session.batches += 1
            session.events += len(batch.events)
            self.stats.batches_acked += 1
            counted.labels(session.transport, session.tenant, "acked").inc()
        else:
            self.stats.batches_duplicate += 1
            counted.labels(session.transport, session.tenant, "duplicate").inc()
        self._metrics.ack_latency.labels(session.transport).observe(
            time.perf_counter() - batch.received
        )
        return m.ack(batch.seq)

    def _count_feature_drops(self, tenant: str, judged: FeatureResult) -> None:
        if judged.dropped:
            self._metrics.events_dropped.labels(tenant, "feature").inc(judged.dropped)
        for kind, n in judged.dropped_by_kind.items():
            self._metrics.feature_drops.labels(tenant, kind).inc(n)
        if judged.bodies_removed:
            self._metrics.feature_drops.labels(tenant, "network_body").inc(judged.bodies_removed)

    def _nack(self, session: Session, batch: m.Batch, code: str, retry_ms: int | None) -> bytes:
        self.stats.batches_nacked += 1
        self._metrics.batches.labels(session.transport, session.tenant, f"nack_{code}").inc()
        return m.nack(batch.seq, code, retry_ms)

    async def _store(self, session: Session, seq: int, events: list[Any], policy: Policy) -> bool:
        # The batch span is current here; when it is recorded, its context rides with the batch
        # to the forwarder, whose chunk span links to it.
        recording = trace.get_current_span().is_recording()
        batch_trace = (inject_traceparent() or "") if recording else ""
        started = time.perf_counter()
        with self._tracer.start_as_current_span("redact"):
            result = await self._redactor.redact(
                RedactRequest(
                    tenant=session.tenant,
                    project=session.project.id,
                    session_id=session.session_id,
                    policy=policy.for_tenant(session.tenant),
                    events=events,
                )
            )
        self._metrics.redact_seconds.observe(time.perf_counter() - started)
        for entity, count in result.entities.items():
            self._metrics.entities.labels(entity).inc(count)
        if result.egress_hits:
            self._metrics.egress_hits.inc()
        if result.dropped:
            self._metrics.events_dropped.labels(session.tenant, "drop_event").inc(result.dropped)
        with self._tracer.start_as_current_span("buffer.append"):
            stored = await self._buffer.append(
                Entry(
                    tenant=session.tenant,
                    project=session.project.id,
                    session_id=session.session_id,
                    seq=seq,
                    policy_version=policy.version,
                    count=result.kept,
                    events=result.events_json,
                    traceparent=batch_trace,
                )
            )
        if stored.watermark > session.watermark:
            session.watermark = stored.watermark
        if stored.stored:
            self.stats.events_stored += result.kept
            self._metrics.events.labels(session.transport, session.tenant).inc(result.kept)
        return stored.stored


__all__ = ["Ingestor", "ProtocolError", "RedactStage", "Session"]
