"""Fixtures for WebRTC ingest: Runners that answer offers, on the test Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from runner.redact import Redactor
from tests.support import RedisProc
from tests.webrtc.harness import RtcRunner, rtc_settings

StartRtc = Callable[..., Awaitable[RtcRunner]]


@pytest.fixture
async def start_rtc(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor
) -> AsyncIterator[StartRtc]:
    """Start Runners with WebRTC settings (and other sections) of the test's choosing."""
    started: list[RtcRunner] = []

    async def start(webrtc: dict[str, Any] | None = None, **sections: dict[str, Any]) -> RtcRunner:
        instance = await RtcRunner.start(
            tmp_path, redis_proc.url, redactor, rtc_settings(**(webrtc or {})), **sections
        )
        started.append(instance)
        return instance

    yield start
    for instance in reversed(started):
        await instance.stop()


@pytest.fixture
async def rtc(start_rtc: StartRtc) -> RtcRunner:
    """A Runner with the default WebRTC settings on loopback."""
    return await start_rtc()
