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

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


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
