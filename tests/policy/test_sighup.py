"""SIGHUP to a real `runner serve` re-reads the policies/ folder at once."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import TENANT, RunnerProcess, until


async def policy_version(runner: RunnerProcess) -> int:
    url = f"http://127.0.0.1:{runner.admin_port}/admin/status"
    headers = {"Authorization": "Bearer admin-secret"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        status: dict[str, Any] = await response.json()
        return int(status["policy"]["version"])


@pytest.mark.timeout(120)
async def test_sighup_applies_an_edited_folder_at_once(tmp_path: Path) -> None:
    """With folder checks an hour apart, only the SIGHUP handler can apply the edit."""
    runner = RunnerProcess(tmp_path, control_plane_toml="watch_interval_s = 3600")
    runner.policies_dir.mkdir()
    (runner.policies_dir / f"{TENANT}.toml").write_text("version = 1\n")
    await runner.start()
    try:
        assert await policy_version(runner) == 1
        (runner.policies_dir / f"{TENANT}.toml").write_text("version = 2\n")
        assert runner.proc is not None
        runner.proc.send_signal(signal.SIGHUP)

        async def applied() -> bool:
            return await policy_version(runner) == 2

        await until(applied, deadline_s=20, what="the SIGHUP reload")
        assert runner.proc.poll() is None, "SIGHUP must not stop the Runner"
    finally:
        runner.stop()
