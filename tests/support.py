"""Real parts for tests: redis-server processes on free ports, Runner configs, an SDK client."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from runner.config import Config, parse_config

REPO = Path(__file__).resolve().parent.parent
API_KEY = "tf_test_key_0001"
OTHER_KEY = "tf_test_key_other"
DISABLED_KEY = "tf_test_key_disabled"
TENANT = "acme-bank"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    deadline_s: float = 10.0,
    what: str = "condition",
) -> None:
    """Poll a condition until it holds, failing after a deadline (never a blind sleep)."""
    end = time.monotonic() + deadline_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        await asyncio.sleep(0.01)  # a poll interval inside a deadline-bounded wait


@dataclass
class RedisProc:
    """A real redis-server on a free loopback port, AOF on with fsync always."""

    dir: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (apt-get install redis-server)"
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            exe,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        end = time.monotonic() + 20
        for line in self.proc.stdout:
            if b"Ready to accept connections" in line:
                break
            assert time.monotonic() < end, "redis-server did not start"
        else:
            raise AssertionError("redis-server exited during start-up")
        # Keep draining its output so it never blocks on a full pipe.
        self._drain = threading.Thread(target=self._discard_output, daemon=True)
        self._drain.start()

    def _discard_output(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def _reap(self) -> None:
        assert self.proc is not None
        self.proc.wait(timeout=20)
        self._drain.join(timeout=20)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        """kill -9: no chance to flush anything it had not already fsynced."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self._reap()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self._reap()


def make_config(data_dir: Path, redis_url: str, **sections: dict[str, Any]) -> Config:
    """A Runner config on free loopback ports with three test projects."""
    data: dict[str, Any] = {
        "runner": {"id": "runner-test", "data_dir": str(data_dir)},
        "ingest": {"listen": "127.0.0.1:0", "hello_timeout_s": 2.0},
        "admin": {"listen": "127.0.0.1:0", "token": "admin-secret"},
        "buffer": {"redis_url": redis_url},
        "pii": {"workers": 1},
        "control_plane": {"policies_dir": str(data_dir / "no-policies")},
        "forward": {"enabled": False},  # ingest tests read the buffer; forwarding tests opt in
        "projects": [
            {"id": "web", "tenant": TENANT, "api_keys": [API_KEY]},
            {"id": "other", "tenant": "other-bank", "api_keys": [OTHER_KEY]},
            {"id": "off", "tenant": TENANT, "api_keys": [DISABLED_KEY], "enabled": False},
        ],
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data, environ={})


def rrweb_batch(
    n: int = 3, text: str = "Hello Priya, card 4111 1111 1111 1111"
) -> list[dict[str, Any]]:
    """A few realistic rrweb events with text that must not reach Redis unredacted."""
    snapshot = {
        "type": 2,
        "timestamp": 1700000000000,
        "data": {
            "node": {
                "type": 0,
                "id": 1,
                "childNodes": [
                    {
                        "type": 2,
                        "id": 2,
                        "tagName": "p",
                        "attributes": {"class": "greeting"},
                        "childNodes": [{"type": 3, "id": 3, "textContent": text}],
                    }
                ],
            },
            "initialOffset": {"left": 0, "top": 0},
        },
    }
    moves = [
        {
            "type": 3,
            "timestamp": 1700000000100 + i,
            "data": {"source": 1, "positions": [{"x": i, "y": i, "id": 2, "timeOffset": 0}]},
        }
        for i in range(max(0, n - 1))
    ]
    return [snapshot, *moves][:n]


class Sdk:
    """A minimal SDK speaking PROTOCOL §1 over the `websockets` client."""

    def __init__(self, url: str, session_id: str, token: str = API_KEY) -> None:
        self.url = url
        self.session_id = session_id
        self.token = token
        self.ws: ClientConnection | None = None
        self.welcome: dict[str, Any] = {}
        self.hello_extra: dict[str, Any] = {}

    async def connect(self, last_acked_seq: int = 0) -> dict[str, Any]:
        self.ws = await websockets.connect(self.url, max_size=None, compression=None)
        await self.send(
            {
                "type": "hello",
                "v": 1,
                "token": self.token,
                "session_id": self.session_id,
                "sdk": {"name": "test", "version": "0"},
                "last_acked_seq": last_acked_seq,
                **self.hello_extra,
            }
        )
        self.welcome = await self.recv()
        return self.welcome

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(orjson.dumps(message).decode())

    async def recv(self, wait_s: float = 10.0) -> dict[str, Any]:
        assert self.ws is not None
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the reply does, and a cancelled client then streams on for ever.
        async with asyncio.timeout(wait_s):
            raw = await self.ws.recv()
        message: dict[str, Any] = orjson.loads(raw)
        return message

    async def batch(self, seq: int, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        await self.send({"type": "batch", "seq": seq, "events": events or rrweb_batch()})
        return await self.recv()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


class RunnerProcess:
    """`runner serve` as a child process on fixed free ports, embedded Redis under data_dir."""

    def __init__(
        self,
        tmp: Path,
        admin_token: str = "admin-secret",
        forward: bool = False,
        cloud_endpoint: str = "",
        *,
        admin_host: str = "127.0.0.1",
        admin_ssl: ssl.SSLContext | None = None,
        extra_toml: str = "",
        control_plane_toml: str = "",
    ) -> None:
        """`admin_ssl`: how the readiness probe reaches an admin listener with `[admin.tls]`;
        `extra_toml`: tables appended to runner.toml (e.g. `[admin.tls]`);
        `control_plane_toml`: more keys of `[control_plane]` (its folder is `policies_dir`)."""
        self.data_dir = tmp / "data"
        self.port = free_port()
        self.admin_port = free_port()
        self.admin_ssl = admin_ssl
        self.policies_dir = tmp / "no-policies"
        self.config = tmp / "runner.toml"
        self.config.write_text(
            f"""
[runner]
data_dir = "{self.data_dir}"
[ingest]
listen = "127.0.0.1:{self.port}"
[admin]
listen = "{admin_host}:{self.admin_port}"
token = "{admin_token}"
[pii]
workers = 1
[control_plane]
policies_dir = "{self.policies_dir}"
{control_plane_toml}
[forward]
enabled = {"true" if forward else "false"}
linger_s = 0.05
[cloud]
endpoint = "{cloud_endpoint}"
max_attempts = 1000
[[projects]]
id = "web"
tenant = "{TENANT}"
api_keys = ["{API_KEY}"]
{extra_toml}"""
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "runner.log"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
        with self.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
                [sys.executable, "-m", "runner.cli", "serve", "--config", str(self.config)],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

        scheme = "https" if self.admin_ssl is not None else "http"
        readyz = f"{scheme}://127.0.0.1:{self.admin_port}/readyz"

        async def ready() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, f"runner serve exited: {self.log.read_text()[-2000:]}"
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(readyz, ssl=self.admin_ssl or True) as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await until(ready, deadline_s=60, what="runner serve to be ready")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)

    def redis_pid(self) -> int:
        return int((self.data_dir / "redis" / "redis.pid").read_text())


async def stream_entries(
    redis: Any, tenant: str = TENANT, prefix: str = "tf"
) -> list[dict[bytes, bytes]]:
    """The fields of every entry in a tenant's stream, oldest first."""
    from runner.buffer.keys import Keys

    entries = await redis.xrange(Keys(prefix).stream(tenant))
    return [dict(fields) for _, fields in entries or []]
