"""The embedded Redis: started, supervised and stopped by the Runner, AOF with fsync always."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import psutil
import pytest

from runner.app import Runner
from runner.buffer.embedded import EmbeddedRedis
from runner.errors import StartupError
from runner.redact import Redactor
from tests.conftest import ws_url
from tests.support import REPO, Sdk, free_port, make_config, until


async def test_embedded_redis_runs_durable_and_stops_with_the_runner(
    tmp_path: Path, redactor: Redactor
) -> None:
    """`redis_url = "embedded"` starts a private redis-server with AOF always, stopped on exit."""
    instance = Runner(make_config(tmp_path / "data", "embedded"), redactor=redactor)
    await instance.start()
    assert instance.embedded is not None
    assert instance.redis is not None
    pid = int((tmp_path / "data" / "redis" / "redis.pid").read_text())
    assert (await instance.redis.config_get("appendfsync"))["appendfsync"] == "always"
    assert (await instance.redis.config_get("appendonly"))["appendonly"] == "yes"
    sdk = Sdk(ws_url(instance), "s-embedded")
    await sdk.connect()
    assert await sdk.batch(1) == {"type": "ack", "seq": 1}
    await sdk.close()
    await instance.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_crashed_embedded_redis_is_restarted_and_keeps_acked_data(
    tmp_path: Path, redactor: Redactor
) -> None:
    """kill -9 of the embedded Redis: it is restarted and acked batches are still there."""
    instance = Runner(make_config(tmp_path / "data", "embedded"), redactor=redactor)
    await instance.start()
    try:
        assert instance.embedded is not None
        sdk = Sdk(ws_url(instance), "s-crash")
        await sdk.connect()
        for seq in (1, 2, 3):
            assert (await sdk.batch(seq))["type"] == "ack"
        os.kill(int((tmp_path / "data" / "redis" / "redis.pid").read_text()), signal.SIGKILL)
        await until(
            lambda: instance.embedded is not None and instance.embedded.restarts == 1,
            what="the embedded Redis to be restarted",
        )

        async def acked() -> bool:
            return bool((await sdk.batch(4))["type"] == "ack")

        await until(acked, what="acks after the restart")
        await sdk.close()
        again = Sdk(ws_url(instance), "s-crash")
        assert (await again.connect())["resume_seq"] == 4
        await again.close()
    finally:
        await instance.stop()


async def test_missing_redis_binary_is_a_clear_startup_error(tmp_path: Path) -> None:
    """A missing redis-server binary stops start-up with a message saying what to install."""
    with pytest.raises(StartupError, match="install redis-server"):
        await EmbeddedRedis(tmp_path, "redis-server-that-does-not-exist").start()


async def test_external_redis_without_fsync_always_is_refused(
    tmp_path: Path, redactor: Redactor
) -> None:
    """An external Redis without AOF is refused unless weaker durability is accepted."""
    from tests.support import RedisProc

    weak = RedisProc(tmp_path / "weak", appendonly=False)
    weak.start()
    try:
        with pytest.raises(StartupError, match="appendonly=no"):
            await Runner(make_config(tmp_path / "d1", weak.url), redactor=redactor).start()
        accepted = Runner(
            make_config(tmp_path / "d2", weak.url, buffer={"accept_weaker_durability": True}),
            redactor=redactor,
        )
        await accepted.start()
        await accepted.stop()
    finally:
        weak.stop()


async def test_shipped_runner_toml_serves_from_a_relative_data_dir(tmp_path: Path) -> None:
    """`runner serve` on the repo's runner.toml as shipped (data_dir = "./data") acks a batch,
    and `runner status` on the same host works with the local admin token it created."""
    shutil.copy(REPO / "runner.toml", tmp_path / "runner.toml")
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    ingest, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env |= {
        "RUNNER_INGEST_LISTEN": f"127.0.0.1:{ingest}",
        "RUNNER_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "PYTHONPATH": str(REPO),
    }
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
        [sys.executable, "-m", "runner.cli", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:

        async def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{admin}/readyz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await until(ready, deadline_s=60, what="runner serve to be ready")
        assert (tmp_path / "data" / "redis" / "redis.sock").is_socket()
        sdk = Sdk(f"ws://127.0.0.1:{ingest}/v1/stream", "s-shipped", token="tf_dev_local_only_key")
        await sdk.connect()
        assert await sdk.batch(1) == {"type": "ack", "seq": 1}
        await sdk.close()
        token_file = tmp_path / "data" / "admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_file.read_text().strip() not in (tmp_path / "serve.log").read_text()
        status = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "runner.cli", "status", "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr.decode()
        assert orjson.loads(status.stdout)["ingest"]["batches_acked"] == 1
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 60)
        log.close()
    assert proc.returncode == 0
