"""Fixtures that start real parts: redis-server on a free port, the Runner itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from runner.app import Runner
from runner.config import Config
from runner.redact import Redactor
from runner.redact.settings import RedactSettings
from tests.forward.support import FakeCloud
from tests.support import RedisProc, make_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProc]:
    """A real redis-server with AOF and appendfsync always, in a temp dir."""
    proc = RedisProc(tmp_path / "redis")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
async def redis(redis_proc: RedisProc) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_proc.url)
    yield client
    await client.aclose()


@pytest.fixture
def config(tmp_path: Path, redis_proc: RedisProc) -> Config:
    return make_config(tmp_path / "data", redis_proc.url)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redactor(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Redactor]:
    """One real PII engine (worker processes) shared by the Runners of the whole session."""
    engine = Redactor(RedactSettings(workers=1), tmp_path_factory.mktemp("pii"))
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture
async def runner(config: Config, redactor: Redactor) -> AsyncIterator[Runner]:
    """The real Runner, started on free loopback ports over the test Redis."""
    instance = Runner(config, redactor=redactor)
    await instance.start()
    yield instance
    await instance.stop()


def ws_url(instance: Runner) -> str:
    return f"ws://127.0.0.1:{instance.ingest_address[1]}/v1/stream"


def http_url(instance: Runner, path: str) -> str:
    return f"http://127.0.0.1:{instance.ingest_address[1]}{path}"


def admin_url(instance: Runner, path: str) -> str:
    return f"http://127.0.0.1:{instance.admin_address[1]}{path}"


@pytest.fixture
def url() -> Callable[[Runner], str]:
    return ws_url


@pytest.fixture
async def cloud() -> AsyncIterator[FakeCloud]:
    """A real aiohttp server standing in for the TRACEFLOW cloud, scripted per test."""
    server = FakeCloud()
    await server.up()
    yield server
    await server.down()
