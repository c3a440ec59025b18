"""`drain --spill` on the real Runner: what the cloud has not taken goes to the DLQ; none is lost.

A real redis-server, the real Runner (in process, under `serve`), a fake cloud
that stops answering 200, and the `runner dlq` commands reading what was spilled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs
from typer.testing import CliRunner

from runner.app import Runner
from runner.buffer.keys import Keys
from runner.cli import app as cli_app
from runner.config import load_config
from runner.forward.chunker import entry_id_key
from runner.forward.reader import manifests_key
from runner.process import serve
from runner.redact import Redactor
from tests.conftest import admin_url, ws_url
from tests.forward.support import FakeCloud, Reply
from tests.support import API_KEY, OTHER_KEY, RedisProc, Sdk, free_port, rrweb_batch, until

KEYS = Keys("tf")
TENANTS = ("acme-bank", "other-bank")
Event = tuple[str, int, int]


def write_config(tmp: Path, redis_url: str, cloud_url: str, forward: str = "") -> Path:
    """A runner.toml for the Runner under test and the `runner dlq` commands alike."""
    path = tmp / "runner.toml"
    path.write_text(
        f"""
[runner]
id = "runner-test"
data_dir = "{tmp / "data"}"
[ingest]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
token = "admin-secret"
[buffer]
redis_url = "{redis_url}"
[pii]
workers = 1
[control_plane]
policies_dir = "{tmp / "no-policies"}"
[forward]
enabled = true
linger_s = 0.05
read_block_s = 0.05
tenant_scan_s = 0.05
{forward}
[cloud]
endpoint = "{cloud_url}"
request_timeout_s = 2.0
backoff_initial_s = 0.05
backoff_max_s = 0.2
breaker_open_s = 0.1
breaker_open_max_s = 0.2
max_attempts = 1000
[[projects]]
id = "web"
tenant = "acme-bank"
api_keys = ["{API_KEY}"]
[[projects]]
id = "other"
tenant = "other-bank"
api_keys = ["{OTHER_KEY}"]
"""
    )
    return path


async def cli(config: Path, *args: str) -> tuple[int, str]:
    """Run a `runner` command in a thread (it runs its own event loop); (exit code, stdout)."""
    result = await asyncio.to_thread(
        CliRunner().invoke, cli_app, [*args, "--config", str(config)], env={}
    )
    return result.exit_code, result.stdout


def events_in(ndjson: str) -> Iterator[Event]:
    """The (session, seq, i) of every event line in a command's output."""
    for line in ndjson.splitlines():
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # the indented metadata printed before the payload
        if isinstance(row, dict) and "event" in row:
            yield row["session_id"], row["seq"], row["i"]


async def send(instance: Runner, session: str, seqs: range, token: str = API_KEY) -> list[Event]:
    sdk = Sdk(ws_url(instance), session, token)
    await sdk.connect()
    sent: list[Event] = []
    for seq in seqs:
        assert (await sdk.batch(seq, rrweb_batch(3)))["type"] == "ack"
        sent.extend((session, seq, i) for i in range(3))
    await sdk.close()
    return sent


@asynccontextmanager
async def serving(instance: Runner, shutdown: asyncio.Event) -> AsyncIterator[asyncio.Task[None]]:
    """`serve(runner, shutdown)` in a task, started; the task ends once the Runner stopped."""
    started = asyncio.Event()
    task = asyncio.create_task(serve(instance, shutdown, started))
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # a start-up error surfaces here
    assert started.is_set(), "the Runner did not start"
    try:
        yield task
    finally:
        shutdown.set()
        await asyncio.wait_for(task, 90)


async def redis_left(redis: Redis) -> dict[str, Any]:
    """Per tenant: stream length, pending entries, buffered bytes, in-flight manifests."""
    out = {}
    for tenant in TENANTS:
        stream = KEYS.stream(tenant)
        pending = 0
        if await redis.exists(stream):
            pending = (await redis.xpending(stream, "forwarder"))["pending"]
        out[tenant] = (
            await redis.xlen(stream),
            pending,
            int(await redis.get(KEYS.bytes(tenant)) or 0),
            await redis.hlen(manifests_key(KEYS, tenant)),
        )
    return out


async def drain_over_admin(instance: Runner, query: str) -> list[dict[str, Any]]:
    """`POST /admin/drain?…&wait=true` and every NDJSON line of its answer."""
    lines = []
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            admin_url(instance, f"/admin/drain?{query}&wait=true"),
            headers={"Authorization": "Bearer admin-secret"},
        ) as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/x-ndjson"
        async for raw in response.content:
            lines.append(orjson.loads(raw))
    return lines


@pytest.mark.timeout(240)
async def test_drain_spill_moves_the_rest_to_the_dead_letter_store_and_replays(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor, cloud: FakeCloud, redis: Redis
) -> None:
    """Every acked event ends at the cloud or in the DLQ, listed in the manifest, and replays."""
    config = write_config(tmp_path, redis_proc.url, cloud.url)
    instance = Runner(load_config(config, environ={}), redactor=redactor)
    async with serving(instance, asyncio.Event()) as task:
        sent = await send(instance, "s-a", range(1, 2))
        await until(lambda: cloud.event_count() == 3, what="the first batch at the cloud")
        cloud.default = Reply(status=503)  # the cloud goes bad: nothing more is taken
        sent += await send(instance, "s-a", range(2, 5))
        sent += await send(instance, "s-b", range(1, 4))
        sent += await send(instance, "s-c", range(1, 3), token=OTHER_KEY)
        await until(lambda: len(cloud.requests) > 1, what="a refused send")
        lines = await drain_over_admin(instance, "deadline_s=2&spill=true&spill_deadline_s=60")
        await asyncio.wait_for(task, 90)

    assert any("progress" in line for line in lines[:-1])
    result = lines[-1]["result"]
    assert result["state"] == "done"
    assert result["remaining_entries"] == 0
    spilled = result["spilled"]
    at_cloud = cloud.events()
    assert spilled["events"] == len(sent) - len(at_cloud) == 24
    assert spilled["manifest"] == f"spills/{spilled['spill_id']}.json"
    assert await redis_left(redis) == {tenant: (0, 0, 0, 0) for tenant in TENANTS}

    code, out = await cli(config, "dlq", "list", "--json", "--reason", "drain_spill")
    assert code == 0, out
    letters = [orjson.loads(line) for line in out.splitlines()]
    in_dlq: list[Event] = []
    for letter in letters:
        code, out = await cli(config, "dlq", "show", letter["id"], "--payload")
        assert code == 0, out
        in_dlq.extend(events_in(out))
    assert sorted(at_cloud + in_dlq) == sorted(sent), "an acked event is missing or doubled"

    code, out = await cli(config, "dlq", "spills", spilled["spill_id"])
    assert code == 0, out
    manifest = orjson.loads(out)
    assert manifest["runner_id"] == "runner-test"
    assert manifest["complete"] is True
    assert {c["chunk_id"] for c in manifest["chunks"]} == {letter["id"] for letter in letters}
    assert manifest["totals"]["events"] == 24
    assert manifest["totals"]["entries"] == 8
    assert set(manifest["tenants"]) == set(TENANTS)
    assert manifest["tenants"]["other-bank"]["events"] == 6
    by_id = {letter["id"]: letter for letter in letters}
    for chunk in manifest["chunks"]:
        letter = by_id[chunk["chunk_id"]]
        assert (chunk["tenant"], chunk["events"], chunk["bytes"]) == (
            letter["tenant"],
            letter["events"],
            letter["compressed_bytes"],
        )
        assert entry_id_key(chunk["first_entry_id"]) <= entry_id_key(chunk["last_entry_id"])

    # Later, the cloud is back: re-queue the manifest's chunks, then let a Runner forward them.
    # (Commands run while no Runner logs: the test's CliRunner captures the process's stdout.)
    cloud.default = Reply(status=200)
    code, out = await cli(config, "dlq", "replay", "--manifest", spilled["spill_id"])
    assert code == 0, out
    assert f"{len(letters)} dead letter(s) re-queued" in out
    again = Runner(load_config(config, environ={}), redactor=redactor)
    await again.start()
    try:
        await until(lambda: cloud.event_count() == len(sent), deadline_s=30, what="replay")
        forwarder = again.forwarder
        assert forwarder is not None

        async def acknowledged() -> bool:
            return await forwarder.backlog() == 0

        await until(acknowledged, what="the replayed entries acknowledged")
    finally:
        await again.stop()
    assert sorted(cloud.events()) == sorted(sent)
    code, out = await cli(config, "dlq", "list", "--json")
    assert (code, out) == (0, ""), "a replayed letter was not deleted once the cloud took it"


async def test_drain_without_spill_leaves_the_rest_in_redis(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor, cloud: FakeCloud, redis: Redis
) -> None:
    """Without spill, what the cloud did not take by the deadline stays in Redis, not the DLQ."""
    cloud.default = Reply(status=503)
    config = write_config(tmp_path, redis_proc.url, cloud.url)
    instance = Runner(load_config(config, environ={}), redactor=redactor)
    await instance.start()
    try:
        await send(instance, "s-keep", range(1, 4))
        remaining = await instance.drain(0.5, spill=False)
    finally:
        await instance.stop()
    assert remaining == 3
    assert instance.drain_report.spilled is None
    assert (await redis_left(redis))["acme-bank"][0] == 3
    code, out = await cli(config, "dlq", "list", "--json")
    assert (code, out) == (0, "")


async def test_sigterm_drain_spills_when_configured(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor, cloud: FakeCloud, redis: Redis
) -> None:
    """`[forward] drain_spill = true` makes the SIGTERM drain spill too; logs hold no payload."""
    cloud.default = Reply(status=503)
    config = write_config(
        tmp_path, redis_proc.url, cloud.url, forward="drain_spill = true\nspill_deadline_s = 30"
    )
    instance = Runner(load_config(config, environ={}), redactor=redactor)
    shutdown = asyncio.Event()
    with capture_logs() as logs:
        async with serving(instance, shutdown) as task:
            sent = await send(instance, "s-term", range(1, 3))
            instance.drain_deadline_s = 0.5
            shutdown.set()  # what the SIGTERM handler does
            await asyncio.wait_for(task, 90)
    spill_logs = [e for e in logs if e["event"].startswith(("forward.spill", "runner.drain"))]
    assert {e["event"] for e in spill_logs} >= {"forward.spill_finished", "runner.drained"}
    text = repr(logs)
    assert "Priya" not in text
    assert "4111" not in text
    assert "admin-secret" not in text
    report = instance.drain_report
    assert report.spilled is not None
    assert report.spilled.totals()["events"] == len(sent) == 6
    assert report.remaining_entries == 0
    assert (await redis_left(redis))["acme-bank"] == (0, 0, 0, 0)


async def test_air_gapped_drain_has_nothing_to_spill(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor, redis: Redis
) -> None:
    """Air-gapped, a spill is skipped with the reason: the local store takes every chunk."""
    config = write_config(tmp_path, redis_proc.url, "")
    instance = Runner(load_config(config, environ={}), redactor=redactor)
    await instance.start()
    try:
        await send(instance, "s-local", range(1, 3))
        remaining = await instance.drain(10, spill=True)
    finally:
        await instance.stop()
    assert remaining == 0
    report = instance.drain_report.to_dict()
    assert report["spilled"] is None
    assert "air-gapped" in report["spill_skipped"]
    assert report["forwarded"]["events"] == 6
    code, out = await cli(config, "chunks", "list")
    assert code == 0
    assert "chunk(s)" in out
    assert "\n0 chunk(s)" not in "\n" + out


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("deadline_s=soon", "deadline_s must be a number"),
        ("deadline_s=nan", "deadline_s must be between"),
        ("deadline_s=-1", "deadline_s must be between"),
        ("spill=maybe", "spill must be true or false"),
        ("spill=true&spill_deadline_s=0", "spill_deadline_s must be more than 0"),
    ],
)
async def test_drain_refuses_bad_parameters_clearly(
    runner: Runner, query: str, message: str
) -> None:
    """A drain request with a bad parameter gets 400 naming it, and no drain starts."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            admin_url(runner, f"/admin/drain?{query}"),
            headers={"Authorization": "Bearer admin-secret"},
        ) as response,
    ):
        assert response.status == 400
        assert message in (await response.json())["error"]
    assert not runner.drain_requested.is_set()


async def test_spill_to_an_unreachable_store_leaves_everything_in_redis(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor, cloud: FakeCloud, redis: Redis
) -> None:
    """A spill that cannot write the store stops at its deadline and acknowledges nothing."""
    cloud.default = Reply(status=503)
    config = write_config(tmp_path, redis_proc.url, cloud.url)
    with config.open("a") as f:
        f.write(
            f'[dlq]\nurl = "s3://traceflow/spill"\ns3_endpoint = "http://127.0.0.1:{free_port()}"\n'
            "timeout_s = 0.5\n"
        )
    instance = Runner(load_config(config, environ={}), redactor=redactor)
    await instance.start()
    try:
        await send(instance, "s-stuck", range(1, 4))
        remaining = await instance.drain(0.5, spill=True, spill_deadline_s=1.5)
    finally:
        await instance.stop()
    assert remaining == 3
    spilled = instance.drain_report.to_dict()["spilled"]
    assert spilled["out_of_time"] is True
    assert (spilled["chunks"], spilled["manifest"]) == (0, None)
    stream, _pending, buffered, _manifests = (await redis_left(redis))["acme-bank"]
    assert stream == 3
    assert buffered > 0
