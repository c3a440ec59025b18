"""WebRTC ingest benchmark, beside the WebSocket on the same machine and the same Runner.

Starts a Runner in a child process (embedded Redis, AOF fsync always: every ack is durable;
mask_all policy with no rate limit) that answers `/v1/stream` and `/v1/rtc/offer`, then
measures from this process:

1. set-up: sequential connections; WebRTC from createOffer to the open `traceflow` channel
   (non-trickle signaling included), WebSocket from connect to open; both also to welcome;
2. throughput over one session (window batches in flight), events/s acked;
3. throughput over N concurrent sessions (default 50), events/s acked.

The WebRTC clients are aiortc, like the Runner side: pure-Python SCTP and DTLS on both ends
of one 2-core machine, so the client's CPU is part of every WebRTC figure (printed).

    .venv/bin/python bench/webrtc.py [--connects 40] [--duration 10] [--sessions 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import websockets
from aiohttp import web
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.cloud import free_port  # noqa: E402
from bench.ingest import count_events, frame, make_batches, percentile  # noqa: E402
from runner.app import Runner  # noqa: E402
from runner.config import Config, load_config  # noqa: E402
from runner.ingest.rtc_ice import IcePin, pin_ice  # noqa: E402
from runner.ingest.rtc_settings import WebRtcSettings  # noqa: E402
from runner.ingest.webrtc import PeerConnections, add_webrtc_routes  # noqa: E402
from runner.ingest.websocket import (  # noqa: E402
    CONFIG_KEY,
    CONNECTIONS_KEY,
    INGESTOR_KEY,
    stream_handler,
)

API_KEY = "tf_bench_key_0001"
LOOPBACK = "127.0.0.1"
WEBRTC = {"host_addresses": [LOOPBACK], "remote_networks": ["127.0.0.0/8"]}
Batches = list[tuple[bytes, int]]


# -- the server child ------------------------------------------------------------------------


async def serve(config_path: Path, port: int) -> None:
    """Run a Runner; answer offers on it, or (until app.py mounts [webrtc]) beside it."""
    config = load_config(config_path, environ={})
    runner = Runner(config)
    await runner.start()
    site: web.AppRunner | None = None
    peers: PeerConnections | None = getattr(runner, "peers", None)
    base = f"http://{LOOPBACK}:{runner.ingest_address[1]}"
    if peers is None:
        assert runner.ingestor is not None
        peers = PeerConnections(
            WebRtcSettings.model_validate(WEBRTC),
            config.ingest,
            config.buffer.retry_after_ms,
            runner.ingestor,
            runner.connections,
        )
        await peers.start()
        app = web.Application(client_max_size=config.ingest.max_message_bytes)
        app[CONFIG_KEY], app[INGESTOR_KEY] = config, runner.ingestor
        app[CONNECTIONS_KEY] = runner.connections
        app.router.add_get("/v1/stream", stream_handler)
        add_webrtc_routes(app, peers)
        site = web.AppRunner(app, access_log=None, handle_signals=False)
        await site.setup()
        await web.TCPSite(site, LOOPBACK, port).start()
        base = f"http://{LOOPBACK}:{port}"
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"READY {base}", flush=True)
    await stop.wait()
    if site is not None:
        await site.cleanup()
        await peers.stop()
    await runner.stop()


class ServerChild:
    """The Runner under test, in its own process."""

    def __init__(self, workdir: Path) -> None:
        self.config = workdir / "runner.toml"
        webrtc = "" if "webrtc" not in Config.model_fields else (
            '[webrtc]\nhost_addresses = ["127.0.0.1"]\nremote_networks = ["127.0.0.0/8"]\n'
        )  # fmt: skip
        self.config.write_text(
            f"""
[runner]
data_dir = "{workdir / "data"}"
log_level = "warning"
[ingest]
listen = "127.0.0.1:0"
idle_timeout_s = 600
[admin]
listen = "127.0.0.1:0"
[buffer]
high_water_bytes = 8589934592
tenant_high_water_bytes = 8589934592
[control_plane]
policies_dir = "{workdir / "policies"}"
{webrtc}
[[projects]]
id = "bench"
tenant = "bench-bank"
api_keys = ["{API_KEY}"]
"""
        )
        self.log = workdir / "runner.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = ""

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
        port = free_port()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "serve", str(self.config), str(port)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.proc.stdout is not None
        output = self.proc.stdout
        for raw in output:  # structlog writes to stdout too: skip to our READY line
            if raw.startswith(b"READY "):
                self.base = raw.split()[1].decode()
                break
        else:
            raise SystemExit(f"runner did not start: {self.log.read_text()[-2000:]}")
        threading.Thread(target=lambda: [None for _ in output], daemon=True).start()

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        main = psutil.Process(self.proc.pid)
        procs = [main, *main.children(recursive=True)]
        return sum(p.cpu_times().user + p.cpu_times().system for p in procs)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


# -- clients ------------------------------------------------------------------------------


@dataclass
class Session:
    """One SDK session on either transport: send text, get replies from a queue."""

    send: Callable[[str], Awaitable[None]]
    replies: asyncio.Queue[dict[str, Any]]
    close: Callable[[], Awaitable[None]]
    opened_s: float = 0.0
    welcome_s: float = 0.0


def hello(session_id: str) -> str:
    body = {"type": "hello", "v": 1, "token": API_KEY, "session_id": session_id}
    return orjson.dumps(body).decode()


async def open_ws(base: str, session_id: str) -> Session:
    started = time.perf_counter()
    ws = await websockets.connect(
        base.replace("http", "ws") + "/v1/stream", max_size=None, compression=None
    )
    opened = time.perf_counter() - started
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def pump() -> None:
        async for raw in ws:
            replies.put_nowait(orjson.loads(raw))

    reader = asyncio.create_task(pump())

    async def close() -> None:
        await ws.close()
        reader.cancel()

    async def send(text: str) -> None:
        await ws.send(text)

    session = Session(send, replies, close, opened)
    await send(hello(session_id))
    assert (await replies.get())["type"] == "welcome"
    session.welcome_s = time.perf_counter() - started
    return session


async def open_rtc(base: str, session_id: str, http: aiohttp.ClientSession) -> Session:
    started = time.perf_counter()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel: RTCDataChannel = pc.createDataChannel("traceflow")
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    opened, drained = asyncio.Event(), asyncio.Event()
    channel.on("open", opened.set)
    channel.bufferedAmountLowThreshold = 1024 * 1024
    channel.on("bufferedamountlow", drained.set)
    channel.on("message", lambda data: replies.put_nowait(orjson.loads(data)))
    pin_ice(pc, IcePin((LOOPBACK,)))
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"sdp": pc.localDescription.sdp, "type": "offer"}
    async with http.post(base + "/v1/rtc/offer", json=body, headers=headers) as response:
        answer = await response.json()
        assert response.status == 200, answer
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    await asyncio.wait_for(opened.wait(), 20)
    opened_s = time.perf_counter() - started

    async def send(text: str) -> None:
        while channel.bufferedAmount > 4 * 1024 * 1024:  # a sender's own flow control
            drained.clear()
            await drained.wait()
        channel.send(text)

    session = Session(send, replies, pc.close, opened_s)
    await send(hello(session_id))
    assert (await replies.get())["type"] == "welcome"
    session.welcome_s = time.perf_counter() - started
    return session


Opener = Callable[[str], Awaitable[Session]]


# -- phases -------------------------------------------------------------------------------


async def setup_times(open_one: Opener, count: int, tag: str) -> dict[str, float]:
    opened, welcomed = [], []
    for i in range(count):
        session = await open_one(f"{tag}-{i}")
        opened.append(session.opened_s)
        welcomed.append(session.welcome_s)
        await session.close()
    return {
        "open_p50_ms": percentile(opened, 0.5) * 1000,
        "open_p99_ms": percentile(opened, 0.99) * 1000,
        "welcome_p50_ms": percentile(welcomed, 0.5) * 1000,
        "welcome_p99_ms": percentile(welcomed, 0.99) * 1000,
    }


@dataclass
class Totals:
    events: int = 0
    batches: int = 0
    nacks: int = 0
    latencies: list[float] = field(default_factory=list)


async def stream(session: Session, batches: Batches, until: float, window: int, t: Totals) -> None:
    sent: dict[int, float] = {}
    slots = asyncio.Semaphore(window)

    async def receive() -> None:
        while True:
            reply = await session.replies.get()
            started = sent.pop(reply["seq"])
            if reply["type"] == "ack":
                t.batches += 1
                t.events += batches[reply["seq"] % len(batches)][1]
                t.latencies.append(time.perf_counter() - started)
            else:
                t.nacks += 1
            slots.release()

    receiver = asyncio.create_task(receive())
    seq = 0
    while time.monotonic() < until:
        await slots.acquire()
        seq += 1
        sent[seq] = time.perf_counter()
        await session.send(frame(seq, batches[seq % len(batches)][0]).decode())
    for _ in range(window):  # wait for the last acks
        await asyncio.wait_for(slots.acquire(), 60)
    receiver.cancel()


async def throughput(
    open_one: Opener, server: ServerChild, batches: Batches, sessions: int, window: int,
    duration: float, tag: str,
) -> dict[str, float]:  # fmt: skip
    opened = await asyncio.gather(*(open_one(f"{tag}-{i}") for i in range(sessions)))
    totals = Totals()
    me = psutil.Process()
    cpu0 = me.cpu_times().user + me.cpu_times().system
    server0 = server.cpu_seconds()
    started = time.perf_counter()
    until = time.monotonic() + duration
    await asyncio.gather(*(stream(s, batches, until, window, totals) for s in opened))
    elapsed = time.perf_counter() - started
    cpu = me.cpu_times().user + me.cpu_times().system - cpu0
    for session in opened:
        await session.close()
    return {
        "events_per_s": totals.events / elapsed,
        "mb_per_s": totals.batches * statistics.mean(len(b) for b, _ in batches) / elapsed / 1e6,
        "ack_p50_ms": percentile(totals.latencies, 0.5) * 1000,
        "ack_p99_ms": percentile(totals.latencies, 0.99) * 1000,
        "nacks": float(totals.nacks),
        "client_cpu_pct": 100 * cpu / elapsed,
        "runner_cpu_pct": 100 * (server.cpu_seconds() - server0) / elapsed,
    }


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = []
    for phase, by_transport in results.items():
        lines.append(f"{phase}")
        keys = list(next(iter(by_transport.values())))
        lines.append(f"  {'':<18}" + "".join(f"{t:>12}" for t in by_transport))
        for key in keys:
            values = "".join(f"{by_transport[t][key]:>12.1f}" for t in by_transport)
            lines.append(f"  {key:<18}{values}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connects", type=int, default=40)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--window", type=int, default=4)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="tf-bench-rtc-"))
    (workdir / "policies").mkdir()
    # The strict PII defaults, without the default 5,000 events/s rate limit, which would
    # otherwise be what both transports measure (nack rate_limited), as in bench/ingest.py.
    (workdir / "policies" / "bench-bank.toml").write_text(
        'version = 1\n[pii]\ntext = "mask_all"\n'
        "[rate_limit]\nevents_per_second = 10000000.0\nburst = 10000000\n"
    )
    batches = [(b, count_events(b)) for b in make_batches()]
    print(
        f"batches: {statistics.mean(n for _, n in batches):.0f} events, "
        f"{statistics.mean(len(b) for b, _ in batches) / 1000:.1f} KB on average; "
        f"{os.cpu_count()} cores; durable acks (appendfsync always)"
    )
    server = ServerChild(workdir)
    server.start()
    try:
        async with aiohttp.ClientSession() as http:
            openers: dict[str, Opener] = {
                "websocket": lambda sid: open_ws(server.base, sid),
                "webrtc": lambda sid: open_rtc(server.base, sid, http),
            }
            results: dict[str, dict[str, dict[str, float]]] = {}
            results["set-up (sequential)"] = {
                t: await setup_times(o, args.connects, f"setup-{t}") for t, o in openers.items()
            }
            one, many = {}, {}
            for t, o in openers.items():
                await throughput(o, server, batches, 2, 2, 2.0, f"warm-{t}")
                one[t] = await throughput(o, server, batches, 1, 8, args.duration, f"one-{t}")
                many[t] = await throughput(
                    o, server, batches, args.sessions, args.window, args.duration, f"many-{t}"
                )
            results["one session, 8 in flight"] = one
            results[f"{args.sessions} sessions, {args.window} in flight each"] = many
        print(table(results))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        asyncio.run(serve(Path(sys.argv[2]), int(sys.argv[3])))
    else:
        asyncio.run(main())
