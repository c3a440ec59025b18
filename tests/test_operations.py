"""Operations: metrics, status, readiness, drain, tracing and the audit log, on the real app."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from runner.app import Runner
from runner.config import Config
from runner.redact import Redactor
from runner.telemetry.audit import verify
from tests.conftest import REPO, admin_url, ws_url
from tests.support import Sdk, until

TOKEN = "admin-secret"


async def get(
    instance: Runner, path: str, token: str | None = TOKEN, method: str = "GET"
) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, admin_url(instance, path), headers=headers) as response,
    ):
        return response.status, await response.read()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_reflect_traffic(runner: Runner) -> None:
    """/metrics parses as Prometheus text and counts sessions, batches, events and buffer bytes."""
    sdk = Sdk(ws_url(runner), "s-metrics")
    await sdk.connect()
    await sdk.batch(1)
    await sdk.batch(1)
    assert runner.buffer is not None
    await runner.buffer.refresh_usage()
    status, text = await get(runner, "/metrics", token=None)
    assert status == 200
    values = samples(text)
    labels = (("result", "acked"), ("tenant", "acme-bank"), ("transport", "websocket"))
    assert values[("traceflow_ingest_batches_total", labels)] == 1
    dup = (("result", "duplicate"), ("tenant", "acme-bank"), ("transport", "websocket"))
    assert values[("traceflow_ingest_batches_total", dup)] == 1
    assert values[("traceflow_sessions", (("transport", "websocket"),))] == 1
    assert values[("traceflow_ingest_events_total", labels[1:])] == 3
    assert values[("traceflow_ack_latency_seconds_count", (("transport", "websocket"),))] == 1
    assert values[("traceflow_buffer_bytes", (("tenant", "acme-bank"),))] > 0
    assert values[("traceflow_buffer_entries", (("tenant", "acme-bank"),))] == 1
    assert values[("process_resident_memory_bytes", ())] > 0
    for name, label_set in values:
        assert all(v != "s-metrics" for _, v in label_set), f"session id leaked into {name}"
    await sdk.close()


async def test_status_needs_the_admin_token_and_reports_state(runner: Runner) -> None:
    """/admin/status answers 401 without the token, and with it shows sessions and buffer."""
    assert (await get(runner, "/admin/status", token="wrong"))[0] == 401
    sdk = Sdk(ws_url(runner), "s-status")
    await sdk.connect()
    await sdk.batch(1)
    status, body = await get(runner, "/admin/status")
    assert status == 200
    state: dict[str, Any] = orjson.loads(body)
    assert state["sessions"] == {"websocket": 1}
    assert state["ingest"]["batches_acked"] == 1
    assert state["policy"]["version"] == 0
    assert "admin-secret" not in body.decode()
    await sdk.close()


async def test_policy_endpoint_needs_the_token_and_names_the_tenant_entry(runner: Runner) -> None:
    """/admin/policy answers 401 without the token, 400 for an empty tenant, else the report."""
    assert (await get(runner, "/admin/policy", token="wrong"))[0] == 401
    assert (await get(runner, "/admin/policy?tenant="))[0] == 400
    status, body = await get(runner, "/admin/policy?tenant=acme-bank")
    assert status == 200
    report = orjson.loads(body)
    assert (report["version"], report["tenant"]) == (0, "acme-bank")
    assert report["policy"]["pii"]["text"] == "mask_all"


async def test_drain_sends_goaway_closes_1001_and_goes_unready(runner: Runner) -> None:
    """A drain tells every session to go (goaway, close 1001) and /readyz reports draining."""
    sdk = Sdk(ws_url(runner), "s-drain")
    await sdk.connect()
    assert (await get(runner, "/admin/drain?deadline_s=5", method="POST"))[0] == 202
    assert runner.drain_requested.is_set()
    await runner.drain(5)
    assert await sdk.recv() == {"type": "goaway", "reason": "drain", "reconnect_after_ms": 500}
    with pytest.raises(ConnectionClosed):
        await sdk.recv()
    assert sdk.ws is not None
    assert sdk.ws.close_code == 1001
    status, body = await get(runner, "/readyz", token=None)
    assert status == 503
    assert "draining" in orjson.loads(body)["failed"]
    async with websockets.connect(ws_url(runner)) as late:
        assert orjson.loads(await late.recv())["type"] == "goaway"


async def test_drain_without_a_deadline_takes_the_configured_one(
    config: Config, redactor: Redactor
) -> None:
    """A drain naming no deadline (SIGTERM, bare `runner drain`) takes `drain_deadline_s`."""
    forward = config.forward.model_copy(update={"drain_deadline_s": 7.0})
    instance = Runner(config.model_copy(update={"forward": forward}), redactor=redactor)
    await instance.start()
    try:
        assert instance.drain_deadline_s == 7.0  # the deadline SIGTERM's drain runs with
        status, body = await get(instance, "/admin/drain", method="POST")
        assert status == 202
        assert orjson.loads(body)["deadline_s"] == 7.0
        assert instance.drain_deadline_s == 7.0
    finally:
        await instance.stop()


@pytest.fixture
async def traced(config: Config, redactor: Redactor) -> AsyncIterator[tuple[Runner, Any]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instance = Runner(config, redactor=redactor, tracer_provider=provider)
    await instance.start()
    yield instance, exporter
    await instance.stop()


async def test_batch_span_is_linked_to_the_sdk_trace(traced: tuple[Runner, Any]) -> None:
    """With a traceparent in the hello, the batch span joins the SDK's trace, with its children."""
    instance, exporter = traced
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    sdk = Sdk(ws_url(instance), "s-trace")
    sdk.hello_extra = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    await sdk.connect()
    await sdk.batch(1)
    await sdk.close()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"ingest.batch", "redact", "buffer.append"} <= set(spans)
    batch = spans["ingest.batch"]
    assert format(batch.context.trace_id, "032x") == trace_id
    assert format(batch.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert spans["redact"].parent.span_id == batch.context.span_id
    assert batch.attributes["traceflow.seq"] == 1


async def test_audit_log_chains_and_detects_an_edited_line(runner: Runner) -> None:
    """Auth failures and admin access are audited; editing one line breaks the chain."""
    bad = Sdk(ws_url(runner), "s-audit", token="tf_wrong_key_xyz")
    with pytest.raises(ConnectionClosed):
        await bad.connect()
    await get(runner, "/admin/status")
    await get(runner, "/admin/status", token="nope")
    path = runner.audit.path

    def actions() -> list[str]:
        if not path.exists():
            return []
        return [orjson.loads(line)["action"] for line in path.read_bytes().splitlines()]

    await until(
        lambda: actions().count("auth.failure") == 2 and "admin.access" in actions(),
        what="the audit records on disk",
    )
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert "tf_wrong_key_xyz" not in path.read_text()
    assert verify(path) == (True, len(records), "")

    lines = path.read_bytes().splitlines()
    lines[1] = lines[1].replace(b'"action":"', b'"action":"x')
    path.write_bytes(b"\n".join(lines) + b"\n")
    ok, _, reason = verify(path)
    assert not ok
    assert reason.startswith("line 2")
    result = subprocess.run(  # noqa: ASYNC221 - a short CLI run at the end of the test
        [sys.executable, "-m", "runner.cli", "audit", "verify", "--path", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "TAMPERED" in result.stderr


def test_status_command_without_a_runner_says_so(tmp_path: Path) -> None:
    """`runner status` with nothing listening prints a clear message and a non-zero exit."""
    from tests.support import free_port

    cfg = tmp_path / "runner.toml"
    cfg.write_text(f'[admin]\nlisten = "127.0.0.1:{free_port()}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "runner.cli", "status", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3
    assert "not reachable" in result.stderr
    assert "Traceback" not in result.stderr
