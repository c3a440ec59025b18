"""One OpenTelemetry span per chunk delivery, linked to the batches it carries.

    ingest.batch (SDK trace) ─┐
    ingest.batch (SDK trace) ─┼─ links ── forward.chunk ── traceparent ──▶ cloud
    ingest.batch (no parent) ─┘

A chunk gathers batches from many sessions, so its span cannot be a child of
any one of them: it starts a trace of its own and carries an OTel Link to each
batch span (their traceparents ride along in the stream entries, field `tp`),
at most `MAX_LINKS`. The chunk span's context goes to the cloud in the
`traceparent` header, through the OTel propagator.

Every HTTP attempt, retries included, carries the same header and is recorded
as a span event `forward.attempt` (attempt, status, outcome) on the chunk span
rather than as a child span: the cloud sees every retry of one chunk under one
parent, and a trace backend shows one bar per chunk with its attempts on it.

Attributes are ids, counts and sizes only — never event payload.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, StatusCode

from runner.forward.chunker import Chunk
from runner.forward.sender import SendResult
from runner.telemetry.tracing import inject_traceparent, span_context_of

SPAN_CHUNK = "forward.chunk"
EVENT_ATTEMPT = "forward.attempt"
MAX_LINKS = 32
"""Links per chunk span at most; the span's `traceflow.batch_traces` says how many there were."""

RESULT = "traceflow.result"


def links_for(chunk: Chunk, limit: int = MAX_LINKS) -> tuple[list[Link], int]:
    """Links to the chunk's batch spans (the first `limit`), and how many batches were traced."""
    parents = chunk.traceparents()
    links: list[Link] = []
    for value in parents:
        if len(links) >= limit:
            break
        context = span_context_of(value)
        if context is not None and context.is_valid:
            links.append(Link(context))
    return links, len(parents)


@contextmanager
def chunk_span(tracer: trace.Tracer, chunk: Chunk) -> Iterator[Span]:
    """The span of one chunk's delivery; ends when the chunk is delivered, stored or abandoned."""
    links, traced = links_for(chunk)
    attributes: dict[str, str | int | bool] = {
        "traceflow.tenant": chunk.tenant,
        "traceflow.chunk_id": chunk.chunk_id,
        "traceflow.entries": len(chunk.entries),
        "traceflow.events": chunk.events,
        "traceflow.policy_version": chunk.policy_version,
        "traceflow.batch_traces": traced,
    }
    if chunk.replay_of:
        attributes["traceflow.replay"] = True
    with tracer.start_as_current_span(
        SPAN_CHUNK,
        context=otel_context.Context(),  # a root: the chunk belongs to no single batch's trace
        kind=SpanKind.CLIENT,
        links=links,
        attributes=attributes,
        record_exception=False,  # exception messages are not ours to export
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as e:
            span.set_attribute(RESULT, "interrupted")
            span.set_status(StatusCode.ERROR, type(e).__name__)
            raise


def header_for(span: Span) -> str | None:
    """The `traceparent` to send for this span, or None when tracing is off (no valid span)."""
    if not span.get_span_context().is_valid:
        return None
    return inject_traceparent(trace.set_span_in_context(span))


def record_attempt(span: Span, attempt: int, result: SendResult, probe: bool) -> None:
    attributes: dict[str, str | int | bool] = {
        "traceflow.attempt": attempt,
        "traceflow.outcome": result.outcome.value,
        "traceflow.probe": probe,
    }
    if result.status is not None:
        attributes["http.response.status_code"] = result.status
    else:
        attributes["error.type"] = result.error
    span.add_event(EVENT_ATTEMPT, attributes)


def finish(span: Span, result: str, chunk: Chunk, error: str = "") -> None:
    """Say how the chunk's delivery ended: sent, local, dead_lettered, spilled."""
    span.set_attribute(RESULT, result)
    if chunk.body:
        span.set_attribute("traceflow.bytes", len(chunk.body))
    if error:
        span.set_status(StatusCode.ERROR, error)
