"""Prometheus metrics, on a registry owned by one Runner (no module-level globals).

Names follow Prometheus conventions (`_total` counters, units in names). Labels
are bounded: transport is one of a few names, tenant comes from the configured
projects, entity from the recognizer set, result and status from fixed sets.
No label ever carries a session id or other client-supplied text.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Callback(Collector):
    """Reads values from the running parts at scrape time."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


class Metrics:
    """Every metric the Runner exports."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        self.sessions = Gauge("traceflow_sessions", "Open SDK sessions.", ["transport"], registry=r)
        self.batches = Counter(
            "traceflow_ingest_batches_total",
            "Batches received, by result (acked, duplicate, unsampled, nack_<code>).",
            ["transport", "tenant", "result"],
            registry=r,
        )
        self.events = Counter(
            "traceflow_ingest_events_total",
            "Events stored after redaction.",
            ["transport", "tenant"],
            registry=r,
        )
        self.events_dropped = Counter(
            "traceflow_events_dropped_total",
            "Events dropped before storage, by reason (feature, drop_event).",
            ["tenant", "reason"],
            registry=r,
        )
        self.feature_drops = Counter(
            "traceflow_feature_drops_total",
            "What the policy's features switched off, by kind: events of a disabled kind "
            "(recording, console, network, audio) and network bodies removed (network_body).",
            ["tenant", "kind"],
            registry=r,
        )
        self.ack_latency = Histogram(
            "traceflow_ack_latency_seconds",
            "Time from a batch being read to its ack (redaction plus durable write).",
            ["transport"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redact_seconds = Histogram(
            "traceflow_redaction_duration_seconds",
            "Time to redact one batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.entities = Counter(
            "traceflow_pii_entities_total", "PII entities found, by type.", ["entity"], registry=r
        )
        self.egress_hits = Counter(
            "traceflow_pii_egress_hits_total",
            "Batches whose redacted output still matched a PII shape and were re-redacted.",
            registry=r,
        )
        self.auth_failures = Counter(
            "traceflow_auth_failures_total",
            "Refused credentials, by transport.",
            ["transport"],
            registry=r,
        )
        self.audit_dropped = Counter(
            "traceflow_audit_dropped_total",
            "Audit records that could not be written.",
            registry=r,
        )
        self._rates: dict[str, deque[tuple[float, int]]] = {}

    def add_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Register a callback that yields metric families at scrape time."""
        self.registry.register(_Callback(collect))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- rates for `runner status` ----------------------------------------------

    def sample_rate(self, name: str, total: int, window_s: float = 10.0) -> float:
        """Per-second rate of a growing total over the last window (sampled by the caller)."""
        now = time.monotonic()
        samples = self._rates.setdefault(name, deque())
        samples.append((now, total))
        while len(samples) > 2 and now - samples[0][0] > window_s:
            samples.popleft()
        first_t, first_v = samples[0]
        return (total - first_v) / (now - first_t) if now > first_t else 0.0


def gauge_family(
    name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], Any]
) -> Metric:
    """A gauge family from a mapping of label values to numbers."""
    family = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), float(value))
    return family
