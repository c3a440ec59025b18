"""`runner drain` and SIGTERM against a real `runner serve`: goaway, close 1001, exit 0."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.support import REPO, RunnerProcess, Sdk


async def expect_goaway(sdk: Sdk) -> None:
    assert await sdk.recv(30) == {"type": "goaway", "reason": "drain", "reconnect_after_ms": 500}
    with pytest.raises(ConnectionClosed):
        await sdk.recv(30)
    assert sdk.ws is not None
    assert sdk.ws.close_code == 1001


@pytest.mark.timeout(180)
async def test_runner_drain_command_drains_and_exits_zero(tmp_path: Path) -> None:
    """`runner drain` tells sessions to go, reports progress, and the Runner exits 0."""
    runner = RunnerProcess(tmp_path)
    await runner.start()
    try:
        sdk = Sdk(runner.url, "s-drain-cli")
        await sdk.connect()
        assert (await sdk.batch(1))["type"] == "ack"
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runner.cli", "drain", "--deadline", "10",
            "--config", str(runner.config),
            cwd=REPO,
            env={"RUNNER_ADMIN_TOKEN": "admin-secret", "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await expect_goaway(sdk)
        out, err = await asyncio.wait_for(cli.communicate(), 90)
        assert cli.returncode == 0, err.decode()
        assert b"drained" in out
        assert runner.proc is not None
        assert await asyncio.to_thread(runner.proc.wait, 60) == 0
    finally:
        runner.stop()


@pytest.mark.timeout(180)
async def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    """SIGTERM drains like `runner drain`: goaway and close 1001 to sessions, then exit 0."""
    runner = RunnerProcess(tmp_path)
    await runner.start()
    try:
        sdk = Sdk(runner.url, "s-sigterm")
        await sdk.connect()
        assert runner.proc is not None
        runner.proc.send_signal(signal.SIGTERM)
        await expect_goaway(sdk)
        assert await asyncio.to_thread(runner.proc.wait, 60) == 0
    finally:
        runner.stop()


@pytest.mark.timeout(180)
async def test_runner_status_command_shows_state_and_json(tmp_path: Path) -> None:
    """`runner status` prints the state table, `--json` parses, and both exit 0 when ready."""
    import orjson

    runner = RunnerProcess(tmp_path)
    await runner.start()
    try:
        sdk = Sdk(runner.url, "s-status-cli")
        await sdk.connect()
        assert (await sdk.batch(1))["type"] == "ack"
        env = {"RUNNER_ADMIN_TOKEN": "admin-secret", "PATH": "/usr/bin:/bin", "COLUMNS": "120"}
        outputs = []
        for extra in ([], ["--json"]):
            cli = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runner.cli", "status", "--config", str(runner.config),
                *extra, cwd=REPO, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(cli.communicate(), 60)
            assert cli.returncode == 0, err.decode()
            outputs.append(out.decode())
        assert "ready" in outputs[0]
        assert "ingest rate" in outputs[0]
        state = orjson.loads(outputs[1])
        assert state["ready"] is True
        assert state["sessions"] == {"websocket": 1}
        assert state["buffer"]["depth_by_tenant"]["acme-bank"]["entries"] == 1
        assert "admin-secret" not in outputs[0] + outputs[1]
        await sdk.close()
    finally:
        runner.stop()


@pytest.mark.timeout(180)
async def test_runner_drain_spill_command_reports_forwarded_spilled_and_left(
    tmp_path: Path,
) -> None:
    """`runner drain --spill`, cloud down: progress, then spilled/left counts; exit 0."""
    from tests.support import free_port

    runner = RunnerProcess(tmp_path, forward=True, cloud_endpoint=f"http://127.0.0.1:{free_port()}")
    await runner.start()
    env = {"RUNNER_ADMIN_TOKEN": "admin-secret", "PATH": "/usr/bin:/bin"}
    try:
        sdk = Sdk(runner.url, "s-drain-spill")
        await sdk.connect()
        for seq in (1, 2, 3):
            assert (await sdk.batch(seq))["type"] == "ack"
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runner.cli", "drain", "--deadline", "2", "--spill",
            "--config", str(runner.config),
            cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await expect_goaway(sdk)
        out, err = await asyncio.wait_for(cli.communicate(), 120)
        assert cli.returncode == 0, err.decode()
        assert runner.proc is not None
        assert await asyncio.to_thread(runner.proc.wait, 60) == 0
    finally:
        runner.stop()
    text = out.decode()
    assert "forwarding: sessions open" in text  # at least one progress line
    assert "spilled to the dead-letter store" in text
    assert "3 entries, 9 events" in text
    assert "manifest: spills/runner-1-" in text
    assert "left in Redis: 0 entries" in text
    assert "drained: the Runner has stopped" in text
    listed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runner.cli", "dlq", "spills", "--config", str(runner.config),
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    spills, err = await asyncio.wait_for(listed.communicate(), 60)
    assert listed.returncode == 0, err.decode()
    assert b"1 spill manifest(s)" in spills
    assert b"9 events" in spills
