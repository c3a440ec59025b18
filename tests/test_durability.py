"""Durable acks: after kill -9 of the Runner or of Redis, every acked batch is stored once."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed

from runner.app import Runner
from runner.buffer.keys import Keys
from runner.redact import Redactor
from tests.conftest import ws_url
from tests.support import TENANT, RedisProc, RunnerProcess, Sdk, make_config, until

SESSIONS = 16
KILL_AFTER_ACKS = 300

Acked = dict[str, set[int]]


async def stream_until_cut(
    url: str, session_id: str, acked: Acked, stop: asyncio.Event | None = None
) -> None:
    """Send batches one after another, recording each ack, until the connection breaks
    or `stop` is set."""
    sdk = Sdk(url, session_id)
    try:
        welcome = await sdk.connect()
        seq = int(welcome["resume_seq"]) + 1
        while stop is None or not stop.is_set():
            reply = await sdk.batch(seq)
            if reply["type"] == "ack":
                acked[session_id].add(seq)
                seq += 1
    except (ConnectionClosed, OSError, TimeoutError):
        return
    await sdk.close()


async def all_entries(redis: Redis) -> Counter[tuple[str, int]]:
    """(session, seq) → how many times it is in the stream."""
    entries = await redis.xrange(Keys("tf").stream(TENANT))
    fields = [cast(dict[bytes, bytes], f) for _, f in entries or []]
    return Counter((f[b"sid"].decode(), int(f[b"seq"])) for f in fields)


def assert_exactly_once(acked: Acked, stored: Counter[tuple[str, int]]) -> None:
    duplicates = [key for key, n in stored.items() if n > 1]
    assert not duplicates, f"stored twice: {duplicates[:5]}"
    missing = [
        (sid, seq) for sid, seqs in acked.items() for seq in seqs if (sid, seq) not in stored
    ]
    assert not missing, f"acked but lost: {missing[:5]}"


@pytest.mark.timeout(240)
async def test_kill9_runner_and_its_redis_loses_no_acked_batch(tmp_path: Path) -> None:
    """kill -9 of the Runner and its embedded Redis mid-stream: every acked batch survives once."""
    runner = RunnerProcess(tmp_path)
    await runner.start()
    acked: Acked = {f"s-{i}": set() for i in range(SESSIONS)}
    clients = [asyncio.create_task(stream_until_cut(runner.url, sid, acked)) for sid in acked]
    try:
        await until(
            lambda: sum(map(len, acked.values())) >= KILL_AFTER_ACKS,
            deadline_s=60,
            what="acks before the kill",
        )
        redis_pid = runner.redis_pid()
        runner.kill9()
        os.kill(redis_pid, signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*clients), 30)

        await runner.start()
        for sid, seqs in acked.items():
            sdk = Sdk(runner.url, sid)
            welcome = await sdk.connect()
            assert welcome["resume_seq"] >= max(seqs, default=0)
            # Resend the last acked batch and one more: the first is deduped, the second stored.
            resend = max(seqs, default=0)
            if resend:
                assert (await sdk.batch(resend))["type"] == "ack"
            assert (await sdk.batch(welcome["resume_seq"] + 1))["type"] == "ack"
            seqs.add(welcome["resume_seq"] + 1)
            await sdk.close()
        redis = Redis.from_url(f"unix://{runner.data_dir}/redis/redis.sock")
        try:
            assert_exactly_once(acked, await all_entries(redis))
        finally:
            await redis.aclose()
    finally:
        for client in clients:
            client.cancel()
        runner.stop()


@pytest.mark.timeout(240)
async def test_kill9_redis_loses_no_acked_batch(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor
) -> None:
    """kill -9 of an AOF redis-server mid-stream, then restart: every acked batch is there once."""
    instance = Runner(make_config(tmp_path / "data", redis_proc.url), redactor=redactor)
    await instance.start()
    acked: Acked = {f"r-{i}": set() for i in range(SESSIONS)}
    stop = asyncio.Event()
    clients = [
        asyncio.create_task(stream_until_cut(ws_url(instance), sid, acked, stop)) for sid in acked
    ]
    try:
        await until(
            lambda: sum(map(len, acked.values())) >= KILL_AFTER_ACKS,
            deadline_s=60,
            what="acks before the kill",
        )
        redis_proc.kill()
        # With Redis gone, sessions get nacks (retryable) but never a false ack.
        before = {sid: set(seqs) for sid, seqs in acked.items()}
        redis_proc.start()
        await until(
            lambda: any(acked[sid] - before[sid] for sid in acked),
            deadline_s=60,
            what="acks after Redis came back",
        )
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), 30)
        redis = Redis.from_url(redis_proc.url)
        try:
            assert_exactly_once(acked, await all_entries(redis))
        finally:
            await redis.aclose()
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        await instance.stop()
