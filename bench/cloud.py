"""A fake TRACEFLOW cloud for the benchmarks, in its own process so it does not share the
Runner's or the load generator's event loop.

It answers `POST /v1/chunks` with 200 and counts chunks, bytes and events; the event count
comes from the chunk header (PROTOCOL §2, line 1 `count`), read by decompressing only the
first few hundred bytes of the zstd frame. While `down` is set it answers 503 with
`Retry-After: 1` and counts nothing, which is how the outage benchmark takes the cloud away.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
from dataclasses import dataclass
from typing import Any

MB = 1024 * 1024
_HEADER_PEEK = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _count(body: bytes) -> int:
    import orjson
    import zstandard

    with zstandard.ZstdDecompressor().stream_reader(body) as reader:
        head = reader.read(_HEADER_PEEK)
    line = head.split(b"\n", 1)[0]
    return int(orjson.loads(line).get("count", 0))


def _main(port: int, ready: Any, counters: Any, down: Any) -> None:
    from aiohttp import web

    chunks, bytes_in, events, refused = counters

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if down.value:
            with refused.get_lock():
                refused.value += 1
            return web.Response(status=503, headers={"Retry-After": "1"})
        n = _count(body)
        with chunks.get_lock():
            chunks.value += 1
            bytes_in.value += len(body)
            events.value += n
        return web.Response(status=200)

    async def main() -> None:
        app = web.Application(client_max_size=256 * MB)
        app.router.add_post("/v1/chunks", receive)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


@dataclass
class FakeCloud:
    """The fake cloud process and its shared counters."""

    port: int
    proc: Any
    chunks: Any
    bytes_in: Any
    events: Any
    refused: Any
    down: Any

    @classmethod
    def start(cls) -> FakeCloud:
        ctx = multiprocessing.get_context("spawn")
        port = free_port()
        ready = ctx.Event()
        chunks, bytes_in, events, refused = (ctx.Value("q", 0) for _ in range(4))
        counters = (chunks, bytes_in, events, refused)
        down = ctx.Value("b", 0)
        proc = ctx.Process(target=_main, args=(port, ready, counters, down), daemon=True)
        proc.start()
        if not ready.wait(30):
            proc.kill()
            raise SystemExit("the fake cloud did not start")
        return cls(port, proc, chunks, bytes_in, events, refused, down)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_down(self, is_down: bool) -> None:
        self.down.value = 1 if is_down else 0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.join(10)
