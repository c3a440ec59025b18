"""Prometheus families for the forwarder, read from its state at scrape time.

Wire with `metrics.add_collector(forwarder.collect)`. Labels are bounded:
tenant comes from the configured projects, result and state from fixed sets.
Alert on `traceflow_forward_auth_failures_total` rising (the cloud refuses the
Runner's token: forwarding for that tenant is paused, nothing is dropped), on
`traceflow_forward_circuit_open` staying 1, and on `traceflow_forward_store_ready`
being 0 (the dead-letter / local store is unreachable).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import zstandard
from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CHUNK_BYTES_BUCKETS = tuple(float(1024 * 4**i) for i in range(9))  # 1 KiB … 64 MiB
RATIO_BUCKETS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0)


class ForwardMetrics:
    """What is counted as it happens rather than read from the state: requests to the cloud
    by HTTP status, and the size and compression ratio of each chunk sent. The metrics live
    on no registry of their own; `Forwarder.collect` yields them with the state families."""

    def __init__(self) -> None:
        self.requests = Counter(
            "traceflow_forward_requests",
            "POSTs to the cloud, by HTTP status (`error`: no answer: refused, timeout, TLS).",
            ["tenant", "code"],
            registry=None,
        )
        self.chunk_bytes = Histogram(
            "traceflow_forward_chunk_bytes",
            "Compressed size of each chunk the cloud accepted.",
            ["tenant"],
            buckets=CHUNK_BYTES_BUCKETS,
            registry=None,
        )
        self.compression = Histogram(
            "traceflow_forward_compression_ratio",
            "NDJSON bytes over zstd bytes, per chunk the cloud accepted.",
            ["tenant"],
            buckets=RATIO_BUCKETS,
            registry=None,
        )

    def request(self, tenant: str, status: int | None) -> None:
        self.requests.labels(tenant, str(status) if status is not None else "error").inc()

    def accepted(self, tenant: str, body: bytes) -> None:
        """Record one accepted chunk; its NDJSON size is read from the zstd frame header."""
        self.chunk_bytes.labels(tenant).observe(len(body))
        size = zstandard.frame_content_size(body) if body else -1
        if size > 0:
            self.compression.labels(tenant).observe(size / len(body))

    def collect(self) -> Iterator[Metric]:
        yield from self.requests.collect()
        yield from self.chunk_bytes.collect()
        yield from self.compression.collect()


def _counter(
    name: str, doc: str, tenants: Mapping[str, Mapping[str, Any]], field: str
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["tenant"])
    for tenant, values in tenants.items():
        family.add_metric([tenant], float(values[field]))
    return family


def _gauge(
    name: str, doc: str, tenants: Mapping[str, Mapping[str, Any]], field: str
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["tenant"])
    for tenant, values in tenants.items():
        family.add_metric([tenant], float(values[field]))
    return family


def families(state: Mapping[str, Any]) -> Iterator[Metric]:
    """Metric families from `Forwarder.state()`."""
    tenants: Mapping[str, Mapping[str, Any]] = state["tenants"]
    chunks = CounterMetricFamily(
        "traceflow_forward_chunks",
        "Chunks finished, by result (sent, local, dead_lettered).",
        labels=["tenant", "result"],
    )
    for tenant, values in tenants.items():
        chunks.add_metric([tenant, "sent"], float(values["chunks_sent"]))
        chunks.add_metric([tenant, "local"], float(values["chunks_local"]))
        chunks.add_metric([tenant, "dead_lettered"], float(values["chunks_dead_lettered"]))
    yield chunks
    letters = CounterMetricFamily(
        "traceflow_forward_dead_letters",
        "Chunks written to the dead-letter store, by reason (rejected, exhausted, malformed, "
        "drain_spill).",
        labels=["tenant", "reason"],
    )
    for tenant, values in tenants.items():
        for reason, count in sorted(values.get("dead_lettered_by_reason", {}).items()):
            letters.add_metric([tenant, reason], float(count))
    yield letters
    yield _counter(
        "traceflow_forward_events", "Events delivered (cloud or local).", tenants, "events_sent"
    )
    yield _counter(
        "traceflow_forward_sent_bytes", "Compressed bytes accepted by the cloud.", tenants,
        "bytes_sent",
    )  # fmt: skip
    yield _counter("traceflow_forward_retries", "Send attempts that will be retried.", tenants,
                   "retries")  # fmt: skip
    yield _counter(
        "traceflow_forward_auth_failures",
        "401/403 answers from the cloud; the tenant is paused while they last.",
        tenants,
        "auth_failures",
    )
    yield _gauge(
        "traceflow_forward_held_entries", "Stream entries held in memory.", tenants, "held_entries"
    )
    yield _gauge("traceflow_forward_in_flight_chunks", "Chunks being delivered.", tenants,
                 "in_flight")  # fmt: skip
    paused = GaugeMetricFamily(
        "traceflow_forward_paused", "1 while the tenant is paused after 401/403.", labels=["tenant"]
    )
    for tenant, values in tenants.items():
        paused.add_metric([tenant], 1.0 if values["status"] == "paused" else 0.0)
    yield paused
    yield GaugeMetricFamily(
        "traceflow_forward_circuit_open",
        "1 while the circuit breaker holds sends to the cloud back.",
        value=0.0 if state["circuit"]["state"] == "closed" else 1.0,
    )
    yield GaugeMetricFamily(
        "traceflow_dlq_letters", "Chunks in the dead-letter store.", value=state["dlq"]["count"]
    )
    yield GaugeMetricFamily(
        "traceflow_forward_store_ready",
        "1 when the dead-letter / local chunk store is reachable.",
        value=1.0 if state["dlq"]["ready"] else 0.0,
    )
