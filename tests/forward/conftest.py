"""Fixtures for the forwarder: a fake cloud, an S3 server, the real buffer, forwarders to test."""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from runner.buffer.keys import Keys
from runner.buffer.redis_streams import StreamBuffer
from runner.config import Config
from runner.forward.forwarder import Forwarder
from runner.forward.settings import CloudSettings, DlqSettings, ForwardSettings
from runner.policy.store import PolicyStore
from tests.forward.support import S3_ACCESS_KEY, S3_SECRET_KEY, FakeCloud, WeedS3

KEYS = Keys("tf")
FAST_FORWARD = ForwardSettings(
    linger_s=0.05,
    read_block_s=0.05,
    tenant_scan_s=0.05,
    claim_idle_s=2.0,
    claim_interval_s=0.5,
)
_prefixes = itertools.count()
STOP_DEADLINE_S = 10.0


def fast_cloud(cloud: FakeCloud, **overrides: Any) -> CloudSettings:
    """Cloud settings with short timeouts and backoff so faults resolve within a test."""
    values: dict[str, Any] = {
        "endpoint": cloud.url,
        "token": "runner-token-secret",
        "request_timeout_s": 2.0,
        "connect_timeout_s": 1.0,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.1,
        "breaker_failures": 3,
        "breaker_open_s": 0.1,
        "breaker_open_max_s": 0.2,
        "auth_pause_s": 0.3,
    }
    values.update(overrides)
    return CloudSettings.model_validate(values)


def s3_dlq(endpoint: str, prefix: str, **overrides: Any) -> DlqSettings:
    values: dict[str, Any] = {
        "url": f"s3://{BUCKET}/{prefix}",
        "s3_endpoint": endpoint,
        "access_key_env": "TEST_S3_ACCESS",
        "secret_key_env": "TEST_S3_SECRET",
        "timeout_s": 2.0,
        "health_interval_s": 0.1,
    }
    values.update(overrides)
    return DlqSettings.model_validate(values)


AT_REST_ENV = "TRACEFLOW_AT_REST_KEYS"
S3_AT_REST_KEYS = "s3-test:" + "5a" * 32
"""The keyring S3 tests seal with (folder tests use the development key under data_dir)."""
S3_ENV = {
    "TEST_S3_ACCESS": S3_ACCESS_KEY,
    "TEST_S3_SECRET": S3_SECRET_KEY,
    AT_REST_ENV: S3_AT_REST_KEYS,
}


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedS3]:
    """One real S3 server (SeaweedFS) for the session; each test uses its own bucket."""
    server = WeedS3(tmp_path_factory.mktemp("weed"))
    server.start()
    yield server
    server.stop()


BUCKET = "traceflow"


@pytest.fixture
def s3_prefix() -> str:
    """A prefix of its own in the shared bucket for each test."""
    return f"t{next(_prefixes)}"


@pytest.fixture
async def buffer(redis: Redis, config: Config) -> AsyncIterator[StreamBuffer]:
    """The real ingest-side writer (group commit + Lua append) over the test Redis."""
    writer = StreamBuffer(redis, config.buffer)
    await writer.start()
    yield writer
    await writer.stop()


MakeForwarder = Callable[..., Awaitable[Forwarder]]


@pytest.fixture
async def make_forwarder(redis: Redis, config: Config) -> AsyncIterator[MakeForwarder]:
    """Build and start forwarders over the test Redis and config; all are stopped afterwards."""
    started: list[Forwarder] = []

    async def make(
        cloud: CloudSettings | None = None,
        dlq: DlqSettings | None = None,
        settings: ForwardSettings = FAST_FORWARD,
        policies: PolicyStore | None = None,
        environ: dict[str, str] | None = None,
        cfg: Config | None = None,
    ) -> Forwarder:
        forwarder = Forwarder(
            redis=redis,
            config=cfg or config,
            policies=policies or PolicyStore(),
            keys=KEYS,
            cloud=cloud or CloudSettings(),
            dlq=dlq or DlqSettings(),
            settings=settings,
            environ=environ if environ is not None else {},
        )
        await forwarder.start()
        started.append(forwarder)
        return forwarder

    yield make
    for forwarder in started:
        try:
            await asyncio.wait_for(forwarder.stop(), STOP_DEADLINE_S)
        except TimeoutError:
            stacks = io.StringIO()
            for task in asyncio.all_tasks():
                print(f"task {task.get_name()}:", file=stacks)
                task.print_stack(limit=8, file=stacks)
            raise AssertionError(f"forwarder.stop() hung; tasks:\n{stacks.getvalue()}") from None


def data_dir(config: Config) -> Path:
    return config.runner.data_dir
