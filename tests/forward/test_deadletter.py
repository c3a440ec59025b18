"""The dead-letter store: what lands there, what it records, replay, purge, and store outages."""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from minio.error import S3Error
from pydantic import ValidationError
from redis.asyncio import Redis
from typer.testing import CliRunner, Result

from runner.buffer.redis_streams import StreamBuffer
from runner.config import Config
from runner.forward.cli import dlq_app
from runner.forward.deadletter import DeadLetter, DeadLetters, replay
from runner.forward.metrics import families
from runner.forward.settings import DlqSettings
from runner.forward.storage import FolderStore, open_store
from runner.telemetry.audit import verify
from tests.forward.conftest import (
    BUCKET,
    KEYS,
    S3_AT_REST_KEYS,
    S3_ENV,
    MakeForwarder,
    fast_cloud,
    s3_dlq,
)
from tests.forward.support import (
    FakeCloud,
    Reply,
    TcpProxy,
    WeedS3,
    assert_exactly_once_in_order,
    parse_chunk,
    unseal,
    write_batches,
)
from tests.support import TENANT, until


def write_toml(config: Config, cloud: FakeCloud, path: Path) -> Path:
    path.write_text(
        f'[runner]\nid = "{config.runner.id}"\ndata_dir = "{config.runner.data_dir}"\n'
        f'[buffer]\nredis_url = "{config.buffer.redis_url}"\n'
        f'[cloud]\nendpoint = "{cloud.url}"\n'
    )
    return path


async def stored_letters(config: Config) -> list[DeadLetter]:
    """Dead letters in the folder store under data_dir, read straight from storage."""
    with ThreadPoolExecutor(1) as io:
        return await DeadLetters(FolderStore(config.runner.data_dir, io)).list()


def audit_records(config: Config, action: str) -> list[dict[str, Any]]:
    """The audit log's records of one action, after checking the whole chain."""
    path = config.telemetry.resolved_audit_path(config.runner.data_dir)
    ok, _count, problem = verify(path)
    assert ok, problem
    records = [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    return [r for r in records if r["action"] == action]


async def cli(*args: str, stdin: str | None = None) -> Result:
    """Run `runner dlq …` in a thread (it runs its own event loop), as an operator would."""
    return await asyncio.to_thread(CliRunner().invoke, dlq_app, list(args), input=stdin)


async def test_permanent_rejection_is_dead_lettered_and_replay_delivers_it(
    buffer: StreamBuffer,
    redis: Redis,
    config: Config,
    cloud: FakeCloud,
    make_forwarder: MakeForwarder,
    tmp_path: Path,
) -> None:
    """A 400 sends the chunk to the DLQ at once with its reason; `dlq replay` delivers it later."""
    expected = await write_batches(buffer, {"s-400": range(1, 4)})
    cloud.answer(Reply(400))
    forwarder = await make_forwarder(cloud=fast_cloud(cloud))
    assert await forwarder.run_until_empty(10) == 0
    assert cloud.accepted == {}
    assert int(await redis.get(KEYS.bytes(TENANT)) or 0) == 0
    rejected_key = cloud.arrived[0]

    toml = write_toml(config, cloud, tmp_path / "runner.toml")
    listed = await cli("list", "--config", str(toml), "--json")
    assert listed.exit_code == 0, listed.output
    letter = orjson.loads(listed.output.splitlines()[0])
    assert letter["id"] == rejected_key
    assert (letter["reason"], letter["last_status"], letter["attempts"]) == ("rejected", 400, 1)
    assert (letter["tenant"], letter["events"], letter["entries"]) == (TENANT, 9, 3)
    assert letter["first_failure_at"] <= letter["last_failure_at"]
    assert letter["policy_version"] == 0

    shown = await cli("show", rejected_key, "--config", str(toml))
    assert shown.exit_code == 0
    assert '"session_id"' not in shown.output, "show prints metadata only without --payload"
    with_payload = await cli("show", rejected_key, "--payload", "--config", str(toml))
    assert '"session_id":"s-400"' in with_payload.output

    replayed = await cli("replay", rejected_key, "--config", str(toml))
    assert replayed.exit_code == 0, replayed.output
    (audited,) = audit_records(config, "dlq.replay")
    assert (audited["ids"], audited["count"], audited["unreadable"]) == ([rejected_key], 1, 0)
    assert audited["actor"]
    assert audited["host"]
    assert await forwarder.run_until_empty(10) == 0
    assert_exactly_once_in_order(cloud, expected)
    assert list(cloud.accepted) == [rejected_key], "replayed under its original Idempotency-Key"
    await until(lambda: forwarder.state()["dlq"]["count"] == 0, what="the letter to go")
    assert (await cli("list", "--config", str(toml))).output.strip().endswith("0 dead letter(s)")


async def test_dead_letters_are_counted_by_reason_in_metrics(
    buffer: StreamBuffer, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """Each dead-lettered chunk is counted under its reason in traceflow_forward_dead_letters."""
    await write_batches(buffer, {"s-metric": range(1, 3)})
    cloud.answer(Reply(400))
    forwarder = await make_forwarder(cloud=fast_cloud(cloud))
    assert await forwarder.run_until_empty(10) == 0
    (family,) = [
        f for f in families(forwarder.state()) if f.name == "traceflow_forward_dead_letters"
    ]
    counted = {(s.labels["tenant"], s.labels["reason"]): s.value for s in family.samples}
    assert counted == {(TENANT, "rejected"): float(len(cloud.arrived))}


async def test_replaying_a_chunk_the_cloud_already_kept_is_deduped(
    buffer: StreamBuffer,
    redis: Redis,
    config: Config,
    cloud: FakeCloud,
    make_forwarder: MakeForwarder,
    tmp_path: Path,
) -> None:
    """A chunk the cloud kept but never confirmed is dead-lettered; its replay gets 409, once."""
    expected = await write_batches(buffer, {"s-dup": range(1, 3)})
    cloud.answer(Reply(hang=True, keep=True))
    forwarder = await make_forwarder(cloud=fast_cloud(cloud, max_attempts=1, request_timeout_s=0.3))
    assert await forwarder.run_until_empty(10) == 0
    assert [x.reason for x in await stored_letters(config)] == ["exhausted"]
    toml = write_toml(config, cloud, tmp_path / "runner.toml")
    assert (await cli("replay", "--all", "--config", str(toml))).exit_code == 0
    assert await forwarder.run_until_empty(10) == 0
    assert cloud.requests[-1].status == 409
    assert_exactly_once_in_order(cloud, expected)
    assert await stored_letters(config) == []
    assert int(await redis.get(KEYS.bytes(TENANT)) or 0) == 0


async def test_chunk_failing_past_max_attempts_is_dead_lettered(
    buffer: StreamBuffer, config: Config, cloud: FakeCloud, make_forwarder: MakeForwarder
) -> None:
    """A chunk still failing after max_attempts goes to the DLQ as "exhausted" with its history."""
    await write_batches(buffer, {"s-ex": range(1, 3)})
    cloud.default = Reply(500)
    forwarder = await make_forwarder(cloud=fast_cloud(cloud, max_attempts=3, breaker_failures=50))
    assert await forwarder.run_until_empty(10) == 0
    assert len(cloud.arrived) == 3
    letters = await stored_letters(config)
    assert [(x.reason, x.attempts, x.last_status) for x in letters] == [("exhausted", 3, 500)]
    assert letters[0].first_failure_at <= letters[0].last_failure_at


async def test_s3_dead_letters_are_encrypted_and_expire_by_retention(
    buffer: StreamBuffer,
    weed: WeedS3,
    s3_prefix: str,
    cloud: FakeCloud,
    make_forwarder: MakeForwarder,
) -> None:
    """In S3 a letter is a sealed zstd payload + clear JSON metadata, with SSE-S3 on top and a
    lifecycle rule; the server never holds the payload in the clear."""
    await write_batches(buffer, {"s-s3": range(1, 3)}, marker="PLAINTEXT-MARKER")
    cloud.answer(Reply(422))
    dlq = s3_dlq(weed.endpoint, s3_prefix, sse="s3")
    forwarder = await make_forwarder(cloud=fast_cloud(cloud), dlq=dlq, environ=S3_ENV)
    assert await forwarder.run_until_empty(10) == 0
    client = weed.client()
    names = sorted(
        o.object_name or ""
        for o in client.list_objects(BUCKET, prefix=f"{s3_prefix}/", recursive=True)
    )
    key = cloud.arrived[0]
    assert names == [f"{s3_prefix}/dlq/{TENANT}/{key}.json", f"{s3_prefix}/dlq/{TENANT}/{key}.zst"]
    stat = client.stat_object(BUCKET, f"{s3_prefix}/dlq/{TENANT}/{key}.zst")
    assert stat.metadata is not None
    assert stat.metadata.get("x-amz-server-side-encryption") == "AES256"
    meta = orjson.loads(client.get_object(BUCKET, f"{s3_prefix}/dlq/{TENANT}/{key}.json").read())
    assert (meta["reason"], meta["last_status"]) == ("rejected", 422)
    sealed = client.get_object(BUCKET, f"{s3_prefix}/dlq/{TENANT}/{key}.zst").read()
    assert sealed.startswith(b"TFE1")
    assert b"PLAINTEXT-MARKER" not in sealed
    assert b"s-s3" not in sealed
    header, lines = parse_chunk(unseal(sealed, f"dlq/{TENANT}/{key}.zst", S3_AT_REST_KEYS))
    assert header["chunk_id"] == key
    assert len(lines) == 6
    await until(lambda: _has_rule(weed, s3_prefix), what="the lifecycle rule")
    rules = client.get_bucket_lifecycle(BUCKET)
    assert rules is not None
    days = {
        r.rule_filter.prefix if r.rule_filter else "": r.expiration.days if r.expiration else 0
        for r in rules.rules
    }
    assert days[f"{s3_prefix}/dlq/{TENANT}/"] == 30


def _has_rule(weed: WeedS3, prefix: str) -> bool:
    try:
        config = weed.client().get_bucket_lifecycle(BUCKET)
    except S3Error:  # no lifecycle configuration yet
        return False
    wanted = f"{prefix}/dlq/{TENANT}/"
    return config is not None and any(
        r.rule_filter is not None and r.rule_filter.prefix == wanted for r in config.rules
    )


async def test_nothing_is_lost_when_the_dead_letter_store_and_cloud_are_down(
    buffer: StreamBuffer,
    redis: Redis,
    weed: WeedS3,
    s3_prefix: str,
    cloud: FakeCloud,
    make_forwarder: MakeForwarder,
) -> None:
    """With both down, entries stay pending and readiness says why; all arrive once both return."""
    expected = await write_batches(buffer, {"s-both": range(1, 6)})
    proxy = TcpProxy(weed.port)
    await proxy.up()
    dlq = s3_dlq(f"http://127.0.0.1:{proxy.port}", s3_prefix, timeout_s=3.0)
    await proxy.down()
    await cloud.down()
    forwarder = await make_forwarder(
        cloud=fast_cloud(cloud, max_attempts=2, breaker_failures=50), dlq=dlq, environ=S3_ENV
    )
    await until(lambda: forwarder.ready() is not None, what="readiness to fail")
    reason = forwarder.ready()
    assert reason is not None
    assert reason.startswith("dead-letter store unreachable")
    await until(
        lambda: forwarder.state()["tenants"].get(TENANT, {}).get("retrying", 0) > 0,
        what="the dead-letter write to be retried",
    )
    summary = await redis.xpending(KEYS.stream(TENANT), "forwarder")
    assert summary["pending"] == 5
    assert int(await redis.get(KEYS.bytes(TENANT)) or 0) > 0

    await proxy.up()
    assert await forwarder.run_until_empty(20) == 0
    await until(lambda: forwarder.ready() is None, what="readiness to recover")
    with ThreadPoolExecutor(2) as io:
        letters = DeadLetters(open_store(dlq, Path("."), io, S3_ENV))
        found = await letters.list(TENANT)
        assert {x.reason for x in found} == {"exhausted"}
        await cloud.up()
        for letter in found:
            await replay(redis, KEYS, letters, letter)
        assert await forwarder.run_until_empty(20) == 0
        assert_exactly_once_in_order(cloud, expected)
        await until(lambda: forwarder.state()["dlq"]["count"] == 0, what="letters removed")
    await proxy.down()


async def test_purge_asks_before_deleting(
    buffer: StreamBuffer,
    config: Config,
    cloud: FakeCloud,
    make_forwarder: MakeForwarder,
    tmp_path: Path,
) -> None:
    """`dlq purge` deletes nothing unless confirmed, deletes with --yes, and is audited."""
    await write_batches(buffer, {"s-purge": range(1, 2)})
    cloud.answer(Reply(400))
    forwarder = await make_forwarder(cloud=fast_cloud(cloud))
    assert await forwarder.run_until_empty(10) == 0
    toml = write_toml(config, cloud, tmp_path / "runner.toml")
    key = cloud.arrived[0]
    refused = await cli("purge", key, "--config", str(toml), stdin="n\n")
    assert refused.exit_code == 1
    assert len(await stored_letters(config)) == 1
    done = await cli("purge", key, "--yes", "--config", str(toml))
    assert done.exit_code == 0, done.output
    assert await stored_letters(config) == []
    (purged,) = audit_records(config, "dlq.purge")
    assert (purged["ids"], purged["count"], purged["requested"]) == ([key], 1, 1)
    missing = await cli("show", key, "--config", str(toml))
    assert missing.exit_code == 4
    climbing = await cli("show", "../../etc/passwd", "--config", str(toml))
    assert climbing.exit_code in (2, 4), "an id never names a path outside the store"


def test_sse_c_settings_need_https_and_a_32_byte_key() -> None:
    """SSE-C is refused over plain http, and its key must be 32 bytes of base64."""
    with pytest.raises(ValidationError, match="https"):
        DlqSettings(url="s3://b/p", s3_endpoint="http://127.0.0.1:9000", sse="c")
    settings = DlqSettings(url="s3://b/p", s3_endpoint="https://s3.example", sse="c")
    key = base64.b64encode(b"k" * 32).decode()
    assert settings.sse_c_key({"TRACEFLOW_DLQ_SSE_C_KEY": key}) == b"k" * 32
    with pytest.raises(ValueError, match="32 bytes"):
        settings.sse_c_key({"TRACEFLOW_DLQ_SSE_C_KEY": base64.b64encode(b"short").decode()})
