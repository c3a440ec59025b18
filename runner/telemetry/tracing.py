"""OpenTelemetry tracing: a span per batch (ingest → redact → buffer), a span per chunk (forward).

With no OTLP endpoint the Runner uses a no-op tracer: no span is recorded and
nothing can reach the network. A batch's span is a child of the SDK's trace
when the hello (or the HTTP request) carries a W3C `traceparent`; its own
traceparent is stored with the batch in the stream, and the chunk span that
forwards the batch links to it (`runner/forward/spans.py`).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NoOpTracerProvider, SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runner import __version__

TRACER_NAME = "traceflow.runner"
_PROPAGATOR = TraceContextTextMapPropagator()


def build_provider(otlp_endpoint: str, runner_id: str) -> trace.TracerProvider:
    """An exporting provider when an endpoint is configured, else a no-op one."""
    if not otlp_endpoint:
        return NoOpTracerProvider()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create(
        {
            "service.name": "traceflow-runner",
            "service.version": __version__,
            "service.instance.id": runner_id,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    return provider


def parent_context(traceparent: str | None) -> Context | None:
    """The SDK's trace context from a W3C traceparent, or None."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def inject_traceparent(ctx: Context | None = None) -> str | None:
    """The W3C traceparent of the current (or given) span, for an outgoing request."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier.get("traceparent")


def span_context_of(traceparent: str) -> SpanContext | None:
    """The span context a W3C traceparent names, or None when it is not a valid one."""
    ctx = parent_context(traceparent)
    return trace.get_current_span(ctx).get_span_context() if ctx is not None else None
