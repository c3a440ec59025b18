"""Ingest benchmark: concurrent WebSocket sessions against a real `runner serve`.

Starts the Runner as a child process on its embedded Redis (AOF, appendfsync
always: every ack is durable) forwarding to a fake cloud in another process (`bench.cloud`;
`--air-gapped` writes local chunks instead), then runs three phases and prints a table:

1. throughput: N sessions, each with W batches in flight, as fast as acks come; then the
   end-to-end rate: every event the Runner stored counted at the cloud, over the time from the first
   batch until the last event arrived there (WebSocket in to cloud out);
2. latency: a fixed aggregate rate (default 10,000 events/s), ack latency p50/p99, started
   only once the forwarder has caught up, so it is the steady state with forwarding on;
3. idle: 1,000 sessions connected and idle, peak RSS of the Runner.

Batches are ~50 rrweb events / ~30 KB cut from the corpus in ../shared/corpus/rrweb
when it is there, synthetic rrweb otherwise.

    .venv/bin/python bench/ingest.py [--sessions 32] [--duration 15] [--rate 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import websockets

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.cloud import FakeCloud, free_port

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus" / "rrweb"
API_KEY = "tf_bench_key_0001"
ADMIN_TOKEN = "bench-admin"  # noqa: S105 - a throwaway benchmark Runner on loopback
TARGET_EVENTS = 50
TARGET_BYTES = 30_000


def corpus_events() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    if CORPUS.is_dir():
        for path in sorted(CORPUS.glob("*.json")):
            if path.name.startswith("_"):
                continue
            data = orjson.loads(path.read_bytes())
            events.extend(e for e in data if isinstance(e, dict) and isinstance(e.get("type"), int))
    if not events:
        for i in range(2000):
            text = f"Account {i} balance statement for customer number {i * 7919}"
            events.append(
                {
                    "type": 3,
                    "timestamp": 1700000000000 + i,
                    "data": {
                        "source": 0,
                        "texts": [{"id": i, "value": text}],
                        "attributes": [{"id": i + 1, "attributes": {"class": "row odd"}}],
                        "removes": [],
                        "adds": [],
                    },
                }
            )
    return events


def make_batches(limit: int = 64) -> list[bytes]:
    """Windows of TARGET_EVENTS consecutive events whose JSON is 0.7-1.3 x TARGET_BYTES."""
    events = corpus_events()
    sizes = [len(orjson.dumps(e)) for e in events]
    out: list[bytes] = []
    start = 0
    while len(out) < limit and start + TARGET_EVENTS <= len(events):
        size = sum(sizes[start : start + TARGET_EVENTS])
        if 0.7 * TARGET_BYTES <= size <= 1.3 * TARGET_BYTES:
            out.append(orjson.dumps(events[start : start + TARGET_EVENTS]))
            start += TARGET_EVENTS
        else:
            start += 1
    if len(out) < 8:  # too few windows of that size: cut by size instead
        out = [orjson.dumps(events[i : i + TARGET_EVENTS]) for i in range(0, len(events), 50)]
    return out


def frame(seq: int, events_json: bytes) -> bytes:
    return b'{"type":"batch","seq":%d,"events":%s}' % (seq, events_json)


def count_events(events_json: bytes) -> int:
    return len(orjson.loads(events_json))


@dataclass
class Totals:
    batches: int = 0
    events: int = 0
    nacks: int = 0
    latencies: list[float] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class RunnerChild:
    def __init__(
        self,
        workdir: Path,
        text_mode: str,
        cloud_endpoint: str = "",
        high_water_bytes: int | None = 8 * 1024**3,
    ) -> None:
        """`high_water_bytes` None keeps the Runner's default buffer caps."""
        self.port = free_port()
        self.admin = free_port()
        self.config = workdir / "runner.toml"
        policies = workdir / "policies"
        policies.mkdir()
        (policies / "bench-bank.toml").write_text(
            f"""version = 1
[pii]
text = "{text_mode}"
[rate_limit]
events_per_second = 10000000.0
burst = 10000000
"""
        )
        caps = (
            f"[buffer]\nhigh_water_bytes = {high_water_bytes}\n"
            f"tenant_high_water_bytes = {high_water_bytes}"
            if high_water_bytes
            else ""
        )
        self.config.write_text(
            f"""
[runner]
data_dir = "{workdir / "data"}"
log_level = "warning"
[ingest]
listen = "127.0.0.1:{self.port}"
max_connections_per_project = 5000
idle_timeout_s = 600
[admin]
listen = "127.0.0.1:{self.admin}"
token = "{ADMIN_TOKEN}"
[control_plane]
policies_dir = "{policies}"
{caps}
[cloud]
endpoint = "{cloud_endpoint}"
max_attempts = 10000
max_age_s = 86400
[[projects]]
id = "bench"
tenant = "bench-bank"
api_keys = ["{API_KEY}"]
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "runner.log"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runner.cli", "serve", "--config", str(self.config)],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        import urllib.request

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"runner exited: {self.log.read_text()[-2000:]}")
            try:
                url = f"http://127.0.0.1:{self.admin}/readyz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)  # start-up poll in a benchmark driver
        raise SystemExit("runner did not become ready")

    def status(self) -> dict[str, Any]:
        """The Runner's /admin/status."""
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}/admin/status",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 - loopback
            body: dict[str, Any] = orjson.loads(r.read())
            return body

    def rss(self) -> tuple[int, int, int]:
        """RSS in bytes of (the main process, its embedded redis-server, its PII workers)."""
        assert self.proc is not None
        main = psutil.Process(self.proc.pid)
        redis = workers = 0
        for child in main.children(recursive=True):
            if "redis-server" in child.name():
                redis += child.memory_info().rss
            else:
                workers += child.memory_info().rss
        return main.memory_info().rss, redis, workers

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


async def open_session(url: str, session_id: str) -> Any:
    ws = await websockets.connect(url, max_size=None, compression=None, ping_interval=None)
    hello = {"type": "hello", "v": 1, "token": API_KEY, "session_id": session_id}
    await ws.send(orjson.dumps(hello).decode())
    welcome = orjson.loads(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    return ws


async def run_session(
    url: str,
    session_id: str,
    batches: list[tuple[bytes, int]],
    totals: Totals,
    until: float,
    window: int,
    pace: asyncio.Queue[None] | None,
) -> None:
    ws = await open_session(url, session_id)
    sent: dict[int, float] = {}
    slots = asyncio.Semaphore(window)
    done = asyncio.Event()

    async def receive() -> None:
        async for raw in ws:
            reply = orjson.loads(raw)
            seq = reply["seq"]
            started = sent.pop(seq)
            if reply["type"] == "ack":
                totals.batches += 1
                totals.events += batches[seq % len(batches)][1]
                totals.latencies.append(time.perf_counter() - started)
            else:
                totals.nacks += 1
            slots.release()
            if done.is_set() and not sent:
                return

    receiver = asyncio.create_task(receive())
    seq = 0
    while time.monotonic() < until:
        if pace is not None:
            try:
                await asyncio.wait_for(pace.get(), max(0.001, until - time.monotonic()))
            except TimeoutError:
                break
        await slots.acquire()
        seq += 1
        body, _ = batches[seq % len(batches)]
        sent[seq] = time.perf_counter()
        await ws.send(frame(seq, body).decode())
    done.set()
    if sent:
        await asyncio.wait_for(receiver, 30)
    receiver.cancel()
    await ws.close()


async def pacer(queue: asyncio.Queue[None], per_second: float, until: float) -> None:
    """Releases batch tokens at a fixed rate."""
    start = time.monotonic()
    issued = 0
    while time.monotonic() < until:
        due = int((time.monotonic() - start) * per_second)
        for _ in range(due - issued):
            queue.put_nowait(None)
        issued = due
        await asyncio.sleep(0.002)  # the pacing tick of a fixed-rate load generator


async def phase(
    url: str,
    batches: list[tuple[bytes, int]],
    sessions: int,
    duration: float,
    window: int,
    rate_events: float | None,
    tag: str,
) -> dict[str, float]:
    totals = Totals()
    until = time.monotonic() + duration
    pace: asyncio.Queue[None] | None = None
    tasks = []
    if rate_events:
        pace = asyncio.Queue()
        mean_events = statistics.mean(n for _, n in batches)
        tasks.append(asyncio.create_task(pacer(pace, rate_events / mean_events, until)))
    start = time.perf_counter()
    await asyncio.gather(
        *(
            run_session(url, f"{tag}-{i}", batches, totals, until, window, pace)
            for i in range(sessions)
        )
    )
    elapsed = time.perf_counter() - start
    for task in tasks:
        task.cancel()
    return {
        "events": float(totals.events),
        "events_per_s": totals.events / elapsed,
        "batches_per_s": totals.batches / elapsed,
        "mb_per_s": totals.batches * statistics.mean(len(b) for b, _ in batches) / elapsed / 1e6,
        "p50_ms": percentile(totals.latencies, 0.50) * 1000,
        "p99_ms": percentile(totals.latencies, 0.99) * 1000,
        "nacks": float(totals.nacks),
    }


async def idle(url: str, count: int, runner: RunnerChild) -> dict[str, float]:
    before_main, _, _ = runner.rss()
    sockets = []
    for i in range(count):
        sockets.append(await open_session(url, f"idle-{i}"))
    main, redis, workers = runner.rss()
    for ws in sockets:
        await ws.close()
    return {
        "sessions": float(count),
        "main_rss_mb": main / 1e6,
        "main_rss_before_mb": before_main / 1e6,
        "redis_rss_mb": redis / 1e6,
        "main_plus_redis_mb": (main + redis) / 1e6,
        "pii_workers_rss_mb": workers / 1e6,
    }


def stored(runner: RunnerChild) -> int:
    """Events the Runner has stored so far (acked events minus those the policy drops)."""
    return int(runner.status()["ingest"]["events_stored"])


async def caught_up(cloud: FakeCloud | None, runner: RunnerChild, deadline_s: float = 600) -> int:
    """Wait until the cloud holds every event the Runner stored; returns that count (0 when
    air-gapped: nothing to wait for)."""
    if cloud is None:
        return 0
    target = stored(runner)
    end = time.monotonic() + deadline_s
    while cloud.events.value < target:
        if time.monotonic() > end:
            raise SystemExit(f"the cloud has {cloud.events.value} of {target} stored events")
        await asyncio.sleep(0.05)  # poll interval of a deadline-bounded wait
    if cloud.events.value != target:
        raise SystemExit(f"the cloud has {cloud.events.value} events, the Runner stored {target}")
    return target


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rows(result: dict[str, float]) -> Iterator[str]:
    for key, value in result.items():
        yield f"  {key:<24} {value:>12.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument(
        "--rate", type=float, default=10_000.0, help="events/s for the latency phase"
    )
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--text", choices=["mask_all", "detect"], default="mask_all")
    parser.add_argument(
        "--air-gapped", action="store_true", help="no fake cloud: chunks go to local storage"
    )
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="tf-bench-"))
    encoded = make_batches()
    batches = [(b, count_events(b)) for b in encoded]
    print(
        f"batches: {statistics.mean(n for _, n in batches):.0f} events, "
        f"{statistics.mean(len(b) for b, _ in batches) / 1000:.1f} KB on average "
        f"({'corpus' if CORPUS.is_dir() else 'synthetic'}); durable acks (appendfsync always); "
        f"text = {args.text}"
    )
    cloud = None if args.air_gapped else FakeCloud.start()
    runner = RunnerChild(workdir, args.text, cloud.endpoint if cloud else "")
    runner.start()
    try:
        await phase(runner.url, batches, 4, 3, args.window, None, "warm")
        before = await caught_up(cloud, runner)
        started = time.perf_counter()
        peak = await phase(
            runner.url, batches, args.sessions, args.duration, args.window, None, "max"
        )
        print(f"throughput: {args.sessions} sessions x {args.window} in flight")
        print("\n".join(rows(peak)))
        if cloud is not None:
            at_end = cloud.events.value
            delivered = await caught_up(cloud, runner) - before
            took = time.perf_counter() - started
            print("end to end (WebSocket in, fake cloud out; every stored event delivered)")
            print("\n".join(rows({
                "events_at_cloud": float(delivered),
                "at_cloud_by_ingest_end": float(at_end - before),
                "caught_up_after_s": took - args.duration,
                "e2e_events_per_s": delivered / took,
                "chunks": float(cloud.chunks.value),
            })))  # fmt: skip
        paced = await phase(
            runner.url, batches, args.sessions, args.duration, args.window, args.rate, "paced"
        )
        print(f"latency at {args.rate:.0f} events/s (forwarding on, caught up before)")
        print("\n".join(rows(paced)))
        await caught_up(cloud, runner)
        resting = await idle(runner.url, args.idle, runner)
        print(f"idle: {args.idle} sessions connected")
        print("\n".join(rows(resting)))
        main_rss, redis_rss, workers_rss = runner.rss()
        print(
            f"final RSS: main {main_rss / 1e6:.0f} MB, redis-server {redis_rss / 1e6:.0f} MB, "
            f"PII workers {workers_rss / 1e6:.0f} MB"
        )
    finally:
        runner.stop()
        if cloud is not None:
            cloud.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
