"""Outage benchmark (issue 4): the cloud goes away for 10 minutes while SDKs send 5,000
events/s; does the backlog stay under the buffer cap, and how long does it take to drain?

Simulated, not computed: a real `runner serve` (embedded Redis, AOF, appendfsync always, the
default buffer caps) forwards to the fake cloud of `bench.cloud`, which answers 503 with
`Retry-After: 1` for `--outage-s` seconds while the load generator keeps a fixed rate of
corpus batches coming. Every second the Runner's /admin/status is read for the buffered
bytes; any nack (backpressure at the cap) is counted. Then the cloud comes back while the
load goes on at the same rate, and the benchmark measures how long until the cloud has
everything stored before the current 5-second slice (the backlog is gone), and finally that
every event the Runner stored (acked events minus what the policy drops) arrived once.

    .venv/bin/python -m bench.outage [--outage-s 600] [--rate 5000] [--sessions 16]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from bench.cloud import MB, FakeCloud
from bench.ingest import (
    CORPUS,
    RunnerChild,
    caught_up,
    count_events,
    make_batches,
    phase,
    raise_fd_limit,
    stored,
)
from runner.config import BufferSection

SLICE_S = 5.0


async def watch(runner: RunnerChild, peak: list[int], stop: asyncio.Event) -> None:
    """Record the highest buffered byte count /admin/status reports, once a second."""
    while not stop.is_set():
        status = await asyncio.to_thread(runner.status)
        peak[0] = max(peak[0], int(status["buffer"]["bytes_total"]))
        peak[1] = int(status["buffer"]["high_water_bytes"])
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            continue


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-s", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=5000.0, help="events/s throughout")
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--max-catch-up-s", type=float, default=1800.0)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="tf-outage-"))
    batches = [(b, count_events(b)) for b in make_batches()]
    mean_bytes = statistics.mean(len(b) for b, _ in batches)
    mean_events = statistics.mean(n for _, n in batches)
    print(
        f"batches: {mean_events:.0f} events, {mean_bytes / 1000:.1f} KB "
        f"({'corpus' if CORPUS.is_dir() else 'synthetic'}); outage {args.outage_s:.0f} s "
        f"at {args.rate:,.0f} events/s; default buffer caps"
    )
    cloud = FakeCloud.start()
    runner = RunnerChild(workdir, "mask_all", cloud.endpoint, high_water_bytes=None)
    runner.start()
    peak = [0, 0]
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(runner, peak, stop))
    try:
        cloud.set_down(True)
        out = await phase(runner.url, batches, args.sessions, args.outage_s, 4, args.rate, "outage")
        backlog_peak = peak[0]
        print("during the outage (cloud answering 503)")
        print(f"  events acked             {out['events']:>12,.0f}  ({out['events_per_s']:,.0f}/s)")
        print(f"  events stored            {stored(runner):>12,}  (the policy drops the rest)")
        print(f"  nacks (backpressure)     {out['nacks']:>12,.0f}")
        print(f"  ack p50 / p99 ms         {out['p50_ms']:>6.1f} / {out['p99_ms']:.1f}")
        print(f"  refused POSTs at cloud   {cloud.refused.value:>12,}")
        tenant_cap = BufferSection().tenant_high_water_bytes  # one tenant: its cap binds first
        print(
            f"  peak buffered            {backlog_peak / MB:>10,.0f} MB: "
            f"{backlog_peak / tenant_cap:.0%} of the tenant cap ({tenant_cap / MB:,.0f} MB), "
            f"{backlog_peak / peak[1]:.0%} of the total cap ({peak[1] / MB:,.0f} MB)"
        )
        cloud.set_down(False)
        back = time.perf_counter()
        drained_after = None
        while time.perf_counter() - back < args.max_catch_up_s:
            before = stored(runner)
            await phase(runner.url, batches, args.sessions, SLICE_S, 4, args.rate, "after")
            if cloud.events.value >= before:
                drained_after = time.perf_counter() - back
                break
        try:
            total = await caught_up(cloud, runner, deadline_s=120)
        except SystemExit:
            forward = runner.status()["forward"]
            print(orjson.dumps(forward, option=orjson.OPT_INDENT_2).decode())
            raise
        total_s = time.perf_counter() - back
        print("after the cloud came back (ingest still at the same rate)")
        if drained_after is None:
            print(f"  backlog NOT drained within {args.max_catch_up_s:.0f} s")
        else:
            print(f"  backlog drained within   {drained_after:>10.1f} s (5 s slices)")
            print(
                f"  delivery rate            {total / total_s if total_s else 0:>10,.0f} events/s"
                " (every stored event / time since the cloud came back)"
            )
        print(f"  events at cloud          {cloud.events.value:>12,} of {total:,} stored")
    finally:
        stop.set()
        await asyncio.gather(watcher, return_exceptions=True)
        runner.stop()
        cloud.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
