"""Policy sync wired into a real Runner: a real control plane, /metrics, the audit log, status.

The unit tests check `PolicyManager` through its hooks; these check that the Runner
exports what they promise: the version in `welcome` and `runner status`, refusals
as a Prometheus counter and as audit records on disk, feature drops and rate-limit
nacks with exact counts, and a control-plane change seen by a session's next batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from typer.testing import CliRunner

from runner.app import Runner
from runner.policy import errors as r
from runner.policy.cli import policy_app
from runner.policy.sync import APPLIED, AUDIT_REFUSED, REFUSED
from runner.redact import Redactor
from tests.conftest import admin_url, ws_url
from tests.policy.support import ControlPlane, Signer, iso, tampered
from tests.support import TENANT, RedisProc, Sdk, make_config, stream_entries, until

ADMIN_TOKEN = "admin-secret"
CONSOLE = {
    "type": 6,
    "timestamp": 1,
    "data": {"plugin": "rrweb/console@1", "payload": {"level": "log", "payload": ["hi"]}},
}
MOVE = {"type": 3, "timestamp": 2, "data": {"source": 1, "positions": []}}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def signed(signer: Signer, version: int, *, console: bool, eps: float, burst: int) -> str:
    tenant = {
        "features": {"console": console},
        "rate_limit": {"events_per_second": eps, "burst": burst},
    }
    body = {"version": version, "issued_at": iso(0), "tenants": {TENANT: tenant}}
    return signer.sign(orjson.dumps(body))


@pytest.fixture
async def synced(
    tmp_path: Path,
    redis_proc: RedisProc,
    redactor: Redactor,
    control_plane: ControlPlane,
    signer: Signer,
) -> AsyncIterator[Runner]:
    """A Runner whose policy comes from the control plane: v1 drops console, 4-event burst."""
    control_plane.publish(signed(signer, 1, console=False, eps=1.0, burst=4))
    cfg = make_config(
        tmp_path / "data",
        redis_proc.url,
        control_plane={
            "endpoint": control_plane.url,
            "keys": signer.pins,
            "poll_interval_s": 3600.0,
            "request_timeout_s": 2.0,
            "policies_dir": str(tmp_path / "policies"),
        },
    )
    instance = Runner(cfg, redactor=redactor)
    await instance.start()
    yield instance
    await instance.stop()


async def admin_get(instance: Runner, path: str) -> bytes:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(admin_url(instance, path), headers=headers) as response,
    ):
        assert response.status == 200, path
        return await response.read()


async def metrics(instance: Runner) -> Samples:
    out: Samples = {}
    text = (await admin_get(instance, "/metrics")).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def audit_records(instance: Runner) -> list[dict[str, Any]]:
    path = instance.audit.path
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_control_plane_policy_is_enforced_counted_and_reported(
    synced: Runner, control_plane: ControlPlane, signer: Signer, redis: Redis
) -> None:
    """Drops and nacks with exact counts; a refusal in /metrics, the audit log and status;
    a new version from the control plane judges the same session's next batch."""
    manager = synced.policy_manager
    assert manager is not None
    dropped = ("traceflow_events_dropped_total", (("reason", "feature"), ("tenant", TENANT)))
    nacked = (
        "traceflow_ingest_batches_total",
        (("result", "nack_rate_limited"), ("tenant", TENANT), ("transport", "websocket")),
    )

    sdk = Sdk(ws_url(synced), "s-policy-live")
    welcome = await sdk.connect()
    assert (welcome["policy_version"], welcome["sampled"]) == (1, True)
    assert (await sdk.batch(1, [CONSOLE, MOVE, CONSOLE]))["type"] == "ack"  # 2 dropped, 1 taken
    assert (await sdk.batch(2, [MOVE, MOVE, MOVE]))["type"] == "ack"  # the bucket is empty now
    limited = await sdk.batch(3, [MOVE])
    assert (limited["type"], limited["code"]) == ("nack", "rate_limited")
    assert 0 < limited["retry_after_ms"] <= 1000
    values = await metrics(synced)
    assert values[dropped] == 2
    assert values[("traceflow_feature_drops_total", (("kind", "console"), ("tenant", TENANT)))] == 2
    assert values[nacked] == 1

    control_plane.publish(tampered(signed(signer, 2, console=True, eps=1e4, burst=1), version=3))
    assert await manager.sync_once() == REFUSED
    values = await metrics(synced)
    assert values[("traceflow_policy_refusals_total", (("reason", r.BAD_SIGNATURE),))] == 1
    assert values[("traceflow_policy_version", ())] == 1
    await until(
        lambda: any(rec["action"] == AUDIT_REFUSED for rec in audit_records(synced)),
        what="the refusal in the audit log",
    )
    [refusal] = [rec for rec in audit_records(synced) if rec["action"] == AUDIT_REFUSED]
    assert (refusal["reason"], refusal["in_force_version"]) == (r.BAD_SIGNATURE, 1)
    status = orjson.loads(await admin_get(synced, "/admin/status"))["policy"]
    assert (status["version"], status["source"]) == (1, "control_plane")
    assert status["refusals"] == {r.BAD_SIGNATURE: 1}

    control_plane.publish(signed(signer, 2, console=True, eps=1e4, burst=10**4))
    assert await manager.sync_once() == APPLIED
    assert (await sdk.batch(4, [CONSOLE, MOVE]))["type"] == "ack"
    await sdk.close()
    entries = await stream_entries(redis)
    assert [(int(f[b"pv"]), int(f[b"n"])) for f in entries] == [(1, 1), (1, 3), (2, 2)]
    values = await metrics(synced)
    assert values[dropped] == 2
    assert values[("traceflow_policy_version", ())] == 2
    status = orjson.loads(await admin_get(synced, "/admin/status"))["policy"]
    assert (status["version"], status["kid"]) == (2, signer.kid)


async def test_policy_show_prints_the_policy_in_force_in_the_running_runner(
    synced: Runner, control_plane: ControlPlane, signer: Signer, tmp_path: Path
) -> None:
    """`runner policy show` asks the running Runner (the control plane's v2, with its kid),
    while `--offline`, or a refused admin token, falls back to what the disk gives."""
    manager = synced.policy_manager
    assert manager is not None
    control_plane.publish(signed(signer, 2, console=True, eps=10.0, burst=10))
    assert await manager.sync_once() == APPLIED
    cfg = tmp_path / "cli.toml"
    cfg.write_text(
        f'[runner]\ndata_dir = "{tmp_path / "cli-data"}"\n'
        f'[admin]\nlisten = "127.0.0.1:{synced.admin_address[1]}"\n'
        f'[control_plane]\npolicies_dir = "{tmp_path / "no-policies"}"\n'
    )
    show = ["show", "--config", str(cfg), "--tenant", TENANT, "--json"]

    def run(*extra: str, token: str = ADMIN_TOKEN) -> Any:
        env = {"RUNNER_ADMIN_TOKEN": token}
        return CliRunner().invoke(policy_app, [*show, *extra], env=env)

    live = await asyncio.to_thread(run)
    assert live.exit_code == 0, live.output
    report = orjson.loads(live.stdout)
    assert (report["version"], report["source"], report["kid"]) == (2, "control_plane", signer.kid)
    assert report["policy"]["features"]["console"] is True
    assert "running Runner" in report["note"]
    for fallback in (
        await asyncio.to_thread(run, "--offline"),
        await asyncio.to_thread(run, token="x"),
    ):
        assert fallback.exit_code == 0, fallback.output
        assert orjson.loads(fallback.stdout)["source"] == "builtin"
    assert "did not answer (unauthorized)" in (await asyncio.to_thread(run, token="x")).stderr
