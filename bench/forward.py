"""Benchmark of the forwarder (issue 4).

    .venv/bin/python bench/forward.py [--backlog-mb 1024] [--levels 1,3,6] [--skip-drain]

1. Encoding on the rrweb corpus (../shared/corpus/rrweb, skipped cleanly if absent): every
   stream cut into batches of 100 events (one stream entry each), chunked with the default
   limits, encoded to PROTOCOL §2 NDJSON and zstd-compressed. Prints chunks/s, MB/s in
   (redacted-event bytes as buffered) and out (compressed), and the compression ratio, per
   zstd level, on one thread and on the default 2-thread encoder pool. The corpus events are
   not redacted: masked text compresses better, so the ratio here is a floor.
2. Drain: a backlog of `--backlog-mb` of buffered events (the corpus batches again, under
   many session ids) is written to a real redis-server (AOF, appendfsync always) the way the
   buffer writes it, then a Forwarder drains it to a local fake cloud running in another
   process (it reads each body and answers 200). Prints fill and drain time, events/s, MB/s.
   Because the backlog repeats the small corpus, its compression ratio is not meaningful.
3. The outage budget of the issue (10 minutes at 5,000 events/s), computed from the corpus'
   mean event size and the measured drain rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from redis.asyncio import Redis  # noqa: E402

from bench.cloud import FakeCloud  # noqa: E402
from runner.buffer.keys import FORWARD_GROUP, Keys  # noqa: E402
from runner.forward.chunker import Chunk, ChunkBuilder, StreamEntry, encode  # noqa: E402
from runner.forward.forwarder import Forwarder  # noqa: E402
from runner.forward.settings import CloudSettings, ForwardSettings  # noqa: E402
from runner.policy.store import PolicyStore  # noqa: E402
from runner.telemetry.logging import configure  # noqa: E402
from tests.support import RedisProc, make_config  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus" / "rrweb"
BATCH_EVENTS = 100
TENANT = "bench-tenant"
MB = 1024 * 1024


def corpus_batches() -> list[list[Any]]:
    """Every corpus stream, cut into SDK-sized batches."""
    batches: list[list[Any]] = []
    for path in sorted(CORPUS.glob("*.json")):
        if path.name.startswith("_"):
            continue
        events = orjson.loads(path.read_bytes())
        if not isinstance(events, list):
            continue
        for start in range(0, len(events), BATCH_EVENTS):
            batches.append(events[start : start + BATCH_EVENTS])
    return batches


def entries_for(batches: list[list[Any]]) -> list[StreamEntry]:
    now = int(time.time() * 1000)
    return [
        StreamEntry(
            id=f"{now}-{k}",
            session_id=f"s{k % 97}",
            project="web",
            seq=k + 1,
            policy_version=1,
            count=len(batch),
            received_ms=now,
            events=orjson.dumps(batch),
        )
        for k, batch in enumerate(batches)
    ]


def chunks_of(entries: list[StreamEntry], settings: ForwardSettings) -> list[Chunk]:
    builder = ChunkBuilder(
        TENANT,
        settings.chunk_max_bytes,
        settings.chunk_max_events,
        settings.linger_s,
        time.monotonic,
        lambda: int(time.time() * 1000),
    )
    chunks = [c for e in entries for c in builder.add(e)]
    last = builder.seal()
    return [*chunks, last] if last else chunks


def bench_encoding(levels: list[int]) -> float | None:
    """Section 1; returns the corpus' mean buffered bytes per event (for section 3)."""
    if not CORPUS.is_dir():
        print(f"corpus not found at {CORPUS}: skipping the encoding benchmark")
        return None
    batches = corpus_batches()
    entries = entries_for(batches)
    events = sum(e.count for e in entries)
    raw = sum(len(e.events) for e in entries)
    chunks = chunks_of(entries, ForwardSettings())
    print(f"\n## 1. encoding: {len(batches)} batches, {events} events, {raw / MB:.2f} MB of events")
    print(f"   {len(chunks)} chunk(s) at the default limits (1 MiB NDJSON, 10,000 events)")
    print("   level  threads  chunks/s   MB/s in  MB/s out   ratio  (NDJSON/zstd)")
    for level in levels:
        bodies = [encode(c, "bench", level) for c in chunks]
        out = sum(len(b) for b in bodies)
        ndjson = sum(len(_ndjson(c)) for c in chunks)
        for threads in (1, 2):
            rounds, elapsed = _time_encode(chunks, level, threads)
            n = rounds * len(chunks)
            mb_in = rounds * raw / MB / elapsed
            mb_out = rounds * out / MB / elapsed
            print(
                f"   {level:>5}  {threads:>7}  {n / elapsed:>8.1f}  {mb_in:>8.1f}"
                f"  {mb_out:>8.1f}  {raw / out:>6.2f}x  ({ndjson / out:.2f}x)"
            )
    return raw / events


def _ndjson(chunk: Chunk) -> bytes:
    import zstandard

    data: bytes = zstandard.ZstdDecompressor().decompress(
        encode(chunk, "bench", 1), max_output_size=64 * MB
    )
    return data


def _time_encode(chunks: list[Chunk], level: int, threads: int) -> tuple[int, float]:
    """Encode the chunks repeatedly for about two seconds; returns (rounds, seconds)."""
    rounds = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        while time.perf_counter() - start < 2.0:
            list(pool.map(lambda c: encode(c, "bench", level), chunks * threads))
            rounds += threads
    return rounds, time.perf_counter() - start


async def fill(redis: Redis, keys: Keys, target: int, batches: list[list[Any]]) -> tuple[int, int]:
    """Write `target` bytes of entries as the buffer does; returns (entries, events)."""
    stream = keys.stream(TENANT)
    await redis.xgroup_create(stream, FORWARD_GROUP, id="0", mkstream=True)
    await redis.sadd(keys.tenants(), TENANT)
    encoded = [(orjson.dumps(b), len(b)) for b in batches]
    written = entries = events = 0
    seqs: dict[str, int] = {}
    while written < target:
        pipe = redis.pipeline(transaction=False)
        size = 0
        for k in range(500):
            body, n = encoded[(entries + k) % len(encoded)]
            sid = f"s{(entries + k) % 997}"
            seqs[sid] = seqs.get(sid, 0) + 1
            fields = {"sid": sid, "proj": "web", "seq": seqs[sid], "pv": 1, "n": n,
                      "t": int(time.time() * 1000), "ev": body}  # fmt: skip
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
            size += len(body)
            events += n
        pipe.incrby(keys.bytes(TENANT), size)
        await pipe.execute()
        entries += 500
        written += size
    return entries, events


async def bench_drain(backlog_mb: int, mean_event: float | None) -> None:
    if not CORPUS.is_dir():
        print("corpus not found: skipping the drain benchmark")
        return
    batches = corpus_batches()
    print(f"\n## 2. drain of a {backlog_mb} MB backlog to a local fake cloud")
    tmp = Path(tempfile.mkdtemp(prefix="bench-forward-"))
    proc = RedisProc(tmp / "redis")
    proc.start()
    cloud = FakeCloud.start()
    redis = Redis.from_url(proc.url, socket_timeout=30)
    try:
        keys = Keys("tf")
        t0 = time.perf_counter()
        entries, events = await fill(redis, keys, backlog_mb * MB, batches)
        fill_s = time.perf_counter() - t0
        info = await redis.info("memory")
        print(f"   filled {entries} entries / {events} events in {fill_s:.1f} s "
              f"(redis used_memory {int(info['used_memory']) / MB:.0f} MB)")  # fmt: skip
        config = make_config(tmp / "data", proc.url)
        forwarder = Forwarder(
            redis=redis,
            config=config,
            policies=PolicyStore(),
            keys=keys,
            cloud=CloudSettings(endpoint=cloud.endpoint),
            settings=ForwardSettings(),
            environ={},
        )
        t0 = time.perf_counter()
        await forwarder.start()
        left = await forwarder.run_until_empty(3600)
        drain_s = time.perf_counter() - t0
        state = forwarder.state()["tenants"][TENANT]
        await forwarder.stop()
        mb = backlog_mb if left == 0 else float("nan")
        print(f"   drained in {drain_s:.1f} s: {state['chunks_sent'] / drain_s:.1f} chunks/s, "
              f"{events / drain_s:,.0f} events/s, {mb / drain_s:.1f} MB/s in, "
              f"{cloud.bytes_in.value / MB / drain_s:.1f} MB/s out; {cloud.chunks.value} POSTs, "
              f"{left} entries left")  # fmt: skip
        budget(events / drain_s, mean_event, config.buffer.high_water_bytes)
    finally:
        await redis.aclose()
        cloud.stop()
        proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def budget(drain_eps: float, mean_event: float | None, high_water: int) -> None:
    print("\n## 3. outage budget: 10 minutes at 5,000 events/s")
    if mean_event is None:
        print("   (needs the corpus)")
        return
    backlog = 5000 * 600 * mean_event
    print(f"   mean buffered event {mean_event:.0f} B -> backlog {backlog / MB:,.0f} MB "
          f"vs buffer high-water {high_water / MB:,.0f} MB "
          f"({'fits' if backlog < high_water else 'EXCEEDS'})")  # fmt: skip
    spare = drain_eps - 5000
    if spare <= 0:
        print("   drain rate does not exceed 5,000 events/s: the backlog would not shrink")
        return
    print(f"   catch-up with ingest still at 5,000/s: {3_000_000 / spare:,.0f} s "
          f"(drain {drain_eps:,.0f}/s - ingest 5,000/s)")  # fmt: skip


def main(argv: Iterator[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog-mb", type=int, default=1024)
    parser.add_argument("--levels", default="1,3,6")
    parser.add_argument("--skip-drain", action="store_true")
    args = parser.parse_args(list(argv) if argv is not None else None)
    configure("json", "warning")
    print(f"cpus: {os.cpu_count()}  python {sys.version.split()[0]}")
    mean_event = bench_encoding([int(x) for x in args.levels.split(",")])
    if not args.skip_drain:
        asyncio.run(bench_drain(args.backlog_mb, mean_event))


if __name__ == "__main__":
    main()
