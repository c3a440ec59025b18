"""Tracing through forward: a span per chunk, linked to the batch spans, its context sent on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from runner.app import Runner
from runner.config import Config
from runner.forward.chunker import Chunk, StreamEntry
from runner.forward.spans import MAX_LINKS, links_for
from runner.redact import Redactor
from tests.conftest import ws_url
from tests.forward.support import FakeCloud, Reply
from tests.support import RedisProc, Sdk, make_config, rrweb_batch, stream_entries, until

SDK_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SDK_SPAN = "00f067aa0ba902b7"


@pytest.fixture
async def traced(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor, cloud: FakeCloud
) -> AsyncIterator[tuple[Runner, InMemorySpanExporter]]:
    """A forwarding Runner whose spans go to an in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    cfg = make_config(
        tmp_path / "data",
        redis_proc.url,
        forward={"enabled": True, "linger_s": 0.3},
        cloud={"endpoint": cloud.url, "backoff_initial_s": 0.05, "backoff_max_s": 0.1},
    )
    instance = Runner(cfg, redactor=redactor, tracer_provider=provider)
    await instance.start()
    yield instance, exporter
    await instance.stop()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def hexes(traceparent: str) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


async def send_traced_batches(instance: Runner, session: str, seqs: range) -> None:
    sdk = Sdk(ws_url(instance), session)
    sdk.hello_extra = {"traceparent": f"00-{SDK_TRACE}-{SDK_SPAN}-01"}
    await sdk.connect()
    for seq in seqs:
        assert (await sdk.batch(seq, rrweb_batch(2)))["type"] == "ack"
    await sdk.close()


async def test_chunk_span_links_batches_and_its_context_reaches_the_cloud(
    traced: tuple[Runner, InMemorySpanExporter], cloud: FakeCloud
) -> None:
    """A chunk span links its batch spans (SDK trace) and the cloud gets its ids in traceparent."""
    instance, exporter = traced
    await send_traced_batches(instance, "s-trace-fwd", range(1, 4))
    await until(lambda: cloud.event_count() == 6, what="6 events at the cloud")
    await until(lambda: len(named(exporter, "forward.chunk")) >= len(cloud.accepted))

    batches = named(exporter, "ingest.batch")
    assert len(batches) == 3
    assert {format(b.context.trace_id, "032x") for b in batches} == {SDK_TRACE}

    chunks = named(exporter, "forward.chunk")
    linked = {link.context.span_id for span in chunks for link in span.links}
    assert linked == {b.context.span_id for b in batches}
    assert all(link.context.trace_id == int(SDK_TRACE, 16) for s in chunks for link in s.links)
    by_chunk = {span.attributes["traceflow.chunk_id"]: span for span in chunks if span.attributes}
    assert set(by_chunk) == set(cloud.accepted)
    for chunk_id, received in cloud.accepted.items():
        span = by_chunk[chunk_id]
        trace_id, span_id = hexes(received.headers["traceparent"])
        assert trace_id == format(span.context.trace_id, "032x")
        assert span_id == format(span.context.span_id, "016x")
        assert trace_id != SDK_TRACE  # a trace of its own, joined to the batches by links
        assert span.kind is SpanKind.CLIENT
        attributes: dict[str, Any] = dict(span.attributes or {})
        assert attributes["traceflow.tenant"] == "acme-bank"
        assert attributes["traceflow.events"] == len(received.lines)
        assert attributes["traceflow.result"] == "sent"
        assert attributes["traceflow.attempts"] == 1
        assert attributes["http.response.status_code"] == 200
        assert attributes["traceflow.bytes"] > 0
    text = repr([(s.attributes, [e.attributes for e in s.events]) for s in chunks])
    assert "Priya" not in text
    assert "4111" not in text


async def test_every_retry_carries_the_chunk_span_and_is_an_event_on_it(
    traced: tuple[Runner, InMemorySpanExporter], cloud: FakeCloud
) -> None:
    """A retried chunk keeps one span: each attempt is an event on it, with the same header."""
    instance, exporter = traced
    cloud.answer(Reply(status=503))
    await send_traced_batches(instance, "s-trace-retry", range(1, 2))
    await until(lambda: cloud.event_count() == 2, what="the batch at the cloud")
    await until(lambda: len(named(exporter, "forward.chunk")) == 1, what="the chunk span")
    (span,) = named(exporter, "forward.chunk")
    attempts = [e for e in span.events if e.name == "forward.attempt"]
    assert [dict(e.attributes or {}).get("http.response.status_code") for e in attempts] == [
        503,
        200,
    ]
    assert [dict(e.attributes or {})["traceflow.outcome"] for e in attempts] == [
        "retry",
        "accepted",
    ]
    headers = {hexes(r.headers["traceparent"]) for r in cloud.requests}
    assert len(cloud.requests) == 2
    assert headers == {(f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")}


def test_links_are_capped_and_the_total_is_kept() -> None:
    """A chunk of more traced batches than MAX_LINKS links the first MAX_LINKS and counts all."""
    entries = tuple(
        StreamEntry(
            id=f"1-{i}",
            session_id="s",
            seq=i,
            count=1,
            events=b"[{}]",
            traceparent=f"00-{SDK_TRACE}-{i + 1:016x}-01",
        )
        for i in range(MAX_LINKS + 8)
    )
    chunk = Chunk("ab" * 16, "acme", 0, "t", entries)
    links, traced = links_for(chunk)
    assert len(links) == MAX_LINKS
    assert traced == MAX_LINKS + 8
    assert [link.context.span_id for link in links] == list(range(1, MAX_LINKS + 1))


async def test_batch_span_context_is_stored_with_the_batch(
    config: Config, redactor: Redactor, redis: Redis
) -> None:
    """With tracing on, each stream entry carries its `ingest.batch` span's traceparent (`tp`)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instance = Runner(config, redactor=redactor, tracer_provider=provider)  # forwarding off
    await instance.start()
    try:
        await send_traced_batches(instance, "s-trace-stored", range(1, 3))
    finally:
        await instance.stop()
    spans = {s.context.span_id: s for s in named(exporter, "ingest.batch")}
    for fields in await stream_entries(redis):
        trace_id, span_id = hexes(fields[b"tp"].decode())
        assert trace_id == SDK_TRACE
        assert int(span_id, 16) in spans
    assert len(await stream_entries(redis)) == 2


async def test_untraced_batches_store_no_trace_field(runner: Runner, redis: Redis) -> None:
    """With tracing off (the default no-op tracer), stream entries carry no `tp` field."""
    sdk = Sdk(ws_url(runner), "s-untraced")
    sdk.hello_extra = {"traceparent": f"00-{SDK_TRACE}-{SDK_SPAN}-01"}
    await sdk.connect()
    assert (await sdk.batch(1))["type"] == "ack"
    await sdk.close()
    (fields,) = await stream_entries(redis)
    assert b"tp" not in fields
