"""Air-gapped mode: chunks kept in local storage by tenant/date/session, read back, expired."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from typer.testing import CliRunner, Result

from runner.buffer.redis_streams import StreamBuffer
from runner.config import Config
from runner.forward.cli import chunks_app
from runner.policy.model import Policy, TenantPolicy
from runner.policy.store import PolicyStore
from tests.forward.conftest import (
    BUCKET,
    FAST_FORWARD,
    S3_AT_REST_KEYS,
    S3_ENV,
    MakeForwarder,
    s3_dlq,
)
from tests.forward.support import (
    TcpProxy,
    WeedS3,
    dev_keys,
    parse_chunk,
    unseal,
    write_batches,
)
from tests.support import TENANT, until


async def chunks_cli(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, chunks_app, list(args))


async def test_air_gapped_chunks_are_laid_out_by_tenant_date_session(
    buffer: StreamBuffer, config: Config, make_forwarder: MakeForwarder, tmp_path: Path
) -> None:
    """With no cloud endpoint every event lands once under chunks/<tenant>/<date>/<session>/."""
    expected = await write_batches(buffer, {"s-ag1": range(1, 6), "s-ag2": range(1, 4)})
    forwarder = await make_forwarder()
    assert forwarder.state()["mode"] == "air_gapped"
    assert await forwarder.run_until_empty(10) == 0
    data_dir = config.runner.data_dir
    files = sorted((data_dir / "chunks" / TENANT).rglob("*.ndjson.zst"))
    assert {f.parent.name for f in files} == {"s-ag1", "s-ag2"}
    assert {f.parent.parent.name for f in files} == {time.strftime("%Y-%m-%d", time.gmtime())}
    got: dict[str, list[tuple[int, int]]] = {}
    for f in files:
        key = f.relative_to(data_dir).as_posix()
        header, lines = parse_chunk(unseal(f.read_bytes(), key, dev_keys(data_dir)))
        assert header["count"] == len(lines)
        assert header["tenant"] == TENANT
        for line in lines:
            got.setdefault(line["session_id"], []).append((line["seq"], line["i"]))
    assert {s: sorted(v) for s, v in got.items()} == expected

    toml = tmp_path / "runner.toml"
    toml.write_text(f'[runner]\ndata_dir = "{config.runner.data_dir}"\n')
    listed = await chunks_cli("list", "--config", str(toml), "--session", "s-ag2")
    assert listed.exit_code == 0, listed.output
    keys = [line.split()[0] for line in listed.output.splitlines() if line.startswith("chunks/")]
    assert len(keys) == 1
    assert f"/{TENANT}/" in keys[0]
    cat = await chunks_cli("cat", keys[0], "--config", str(toml))
    assert cat.exit_code == 0
    first = cat.output.splitlines()
    assert '"count":9' in first[0]
    assert len(first) == 10
    missing = await chunks_cli("cat", "chunks/nope/x.ndjson.zst", "--config", str(toml))
    assert missing.exit_code == 4


async def test_retention_removes_local_chunks_older_than_the_policy_allows(
    buffer: StreamBuffer, config: Config, make_forwarder: MakeForwarder
) -> None:
    """Local chunks and dead letters older than the tenant's retention_days are deleted."""
    old = (
        config.runner.data_dir
        / "chunks"
        / TENANT
        / "2020-01-01"
        / "s-old"
        / ("a" * 32 + ".ndjson.zst")
    )
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old")
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    await write_batches(buffer, {"s-new": range(1, 2)})
    policies = PolicyStore(Policy(version=5, tenants={TENANT: TenantPolicy(retention_days=7)}))
    forwarder = await make_forwarder(policies=policies)
    assert await forwarder.run_until_empty(10) == 0
    await until(lambda: not old.exists(), what="the old chunk to expire")
    assert not old.parent.exists(), "emptied folders are pruned"
    assert list((config.runner.data_dir / "chunks" / TENANT).rglob("*.ndjson.zst"))


async def test_air_gapped_s3_store_outage_holds_entries_and_reports_unready(
    buffer: StreamBuffer, weed: WeedS3, s3_prefix: str, make_forwarder: MakeForwarder
) -> None:
    """With the local S3 store down, entries wait in Redis and readiness says why; then land."""
    expected = await write_batches(buffer, {"s-ags3": range(1, 4)})
    proxy = TcpProxy(weed.port)
    dlq = s3_dlq(f"http://127.0.0.1:{proxy.port}", s3_prefix, timeout_s=3.0)
    per_chunk = FAST_FORWARD.model_copy(update={"local_layout": "tenant/date"})
    forwarder = await make_forwarder(dlq=dlq, settings=per_chunk, environ=S3_ENV)
    await until(lambda: forwarder.ready() is not None, what="readiness to fail")
    reason = forwarder.ready()
    assert reason is not None
    assert reason.startswith("local chunk store unreachable")
    await proxy.up()
    try:
        assert await forwarder.run_until_empty(20) == 0
        await until(lambda: forwarder.ready() is None, what="readiness to recover")
    finally:
        await proxy.down()
    names = [
        o.object_name or ""
        for o in weed.client().list_objects(BUCKET, prefix=f"{s3_prefix}/", recursive=True)
    ]
    assert len(names) == 1
    assert names[0].startswith(f"{s3_prefix}/chunks/{TENANT}/")
    assert names[0].count("/") == 4, "tenant/date layout: no session folder"
    body = weed.client().get_object(BUCKET, names[0]).read()
    _, lines = parse_chunk(unseal(body, names[0][len(s3_prefix) + 1 :], S3_AT_REST_KEYS))
    assert sorted((x["seq"], x["i"]) for x in lines) == expected["s-ags3"]
