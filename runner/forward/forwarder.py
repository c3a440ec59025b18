"""The Forwarder: every tenant's batches to the cloud, the dead-letter store or local storage.

Lifecycle: the constructor only stores; `start()` opens the executors, the
storage and the HTTP client and starts one supervised pipeline per tenant
(found in `<p>:tenants`); `flush(deadline_s)` stops claiming new entries and
lets in-flight chunks finish; `spill(deadline_s, report)` (a drain with
`--spill`) stops the pipelines and moves what is left to the dead-letter store
(spill.py); `stop()` cancels the rest (it stays pending in Redis and is sent
again after the next start).

    tenants set ──▶ one TenantPipeline per tenant (pipeline.py: read, chunk, order, ack)
                          └──▶ Delivery (delivery.py: send / retry / pause / DLQ / local)

Also here: readiness (`ready()`), status (`state()`), Prometheus families
(`collect()`), store health checks, and retention from each tenant's
`retention_days`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog
from opentelemetry import trace
from prometheus_client.core import Metric
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from runner.buffer.keys import Keys
from runner.config import Config
from runner.errors import StartupError
from runner.forward.deadletter import DeadLetters
from runner.forward.delivery import EV_STORE_RECOVERED, EV_STORE_UNAVAILABLE, Delivery, StoreHealth
from runner.forward.localsink import LocalSink
from runner.forward.metrics import ForwardMetrics, families
from runner.forward.pipeline import TenantPipeline, TenantState, reraise_if_cancelling
from runner.forward.reader import TenantStream
from runner.forward.sender import CircuitBreaker, CloudSender
from runner.forward.settings import CloudSettings, DlqSettings, ForwardSettings
from runner.forward.spill import Spiller, SpillReport
from runner.forward.storage import ObjectStore, StoreUnavailable, open_store
from runner.policy.store import PolicyStore

log = structlog.get_logger(__name__)

EV_STARTED = "forward.started"
EV_STOPPED = "forward.stopped"
EV_TENANT_FAILED = "forward.tenant_failed"
EV_RETENTION_FAILED = "forward.retention_failed"
EV_FAILED = "forward.failed"
EV_REDIS_ERROR = "forward.redis_error"

DLQ_COUNT_EVERY_S = 60.0
PIPELINE_RESTART_MAX_S = 30.0

S = TypeVar("S", bound=BaseModel)


def _coerce(value: object, kind: type[S]) -> S:
    if isinstance(value, kind):
        return value
    if isinstance(value, BaseModel):
        return kind.model_validate(value.model_dump())
    return kind()


def settings_for(config: Config) -> tuple[CloudSettings, DlqSettings, ForwardSettings]:
    """The forwarding sections of a Config (accepting the older placeholder sections too)."""
    return (
        _coerce(getattr(config, "cloud", None), CloudSettings),
        _coerce(getattr(config, "dlq", None), DlqSettings),
        _coerce(getattr(config, "forward", None), ForwardSettings),
    )


class Forwarder:
    """Moves every tenant's stream entries to their destination, acknowledging last."""

    def __init__(
        self,
        redis: Redis,
        config: Config,
        policies: PolicyStore,
        keys: Keys,
        *,
        cloud: CloudSettings | None = None,
        dlq: DlqSettings | None = None,
        settings: ForwardSettings | None = None,
        environ: Mapping[str, str] | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        own_cloud, own_dlq, own_forward = settings_for(config)
        self._redis = redis
        self._config = config
        self._policies = policies
        self._keys = keys
        self.cloud = cloud or own_cloud
        self.dlq_settings = dlq or own_dlq
        self.settings = settings or own_forward
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._tracer = tracer or trace.NoOpTracer()
        self._metrics = ForwardMetrics()
        self.runner_id = config.runner.id
        self._data_dir: Path = config.runner.data_dir
        self._breaker = CircuitBreaker(
            self.cloud.breaker_failures, self.cloud.breaker_open_s, self.cloud.breaker_open_max_s
        )
        self._sender: CloudSender | None = None
        self._encoder: ThreadPoolExecutor | None = None
        self._io: ThreadPoolExecutor | None = None
        self._store: ObjectStore | None = None
        self._dlq: DeadLetters | None = None
        self._sink: LocalSink | None = None
        self._main: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        self._tenants: dict[str, TenantState] = {}
        self._pipelines: dict[str, TenantPipeline] = {}
        self._claiming = True
        self._progress = asyncio.Event()
        self._scan_now = asyncio.Event()
        self._store_health = StoreHealth()
        self._delivery: Delivery | None = None
        self._dlq_count = 0
        self._dlq_delta_base = 0
        self._dlq_counted_at = 0.0
        self._retention_version = -1

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open storage and the HTTP client, then start reading every tenant's stream."""
        self._encoder = ThreadPoolExecutor(
            self.settings.compress_workers, thread_name_prefix="fwd-encode"
        )
        self._io = ThreadPoolExecutor(self.dlq_settings.io_workers, thread_name_prefix="fwd-store")
        try:
            store = open_store(self.dlq_settings, self._data_dir, self._io, self._environ)
        except ValueError as e:
            raise StartupError(f"[dlq]: {e}") from e
        self._store = store
        self._dlq = DeadLetters(store)
        self._sink = LocalSink(store, self.settings, self.runner_id, self._encoder)
        if not self.cloud.air_gapped:
            self._sender = CloudSender(self.cloud, self.runner_id, self.cloud.bearer(self._environ))
            await self._sender.start()
        self._delivery = Delivery(
            runner_id=self.runner_id,
            cloud=self.cloud,
            settings=self.settings,
            policies=self._policies,
            sender=self._sender,
            breaker=self._breaker,
            dead_letters=self._dlq,
            sink=self._sink,
            encoder=self._encoder,
            health=self._store_health,
            tracer=self._tracer,
            metrics=self._metrics,
        )
        await self._check_store()
        await self._count_letters()
        self._claiming = True
        self._main = asyncio.create_task(self._run(), name="forwarder")
        self._main.add_done_callback(self._main_done)
        log.info(
            EV_STARTED,
            mode="air_gapped" if self.cloud.air_gapped else "cloud",
            store=store.description,
        )

    async def stop(self) -> None:
        """Cancel whatever is still running; unacknowledged entries stay pending in Redis."""
        await self._halt()
        if self._sender is not None:
            await self._sender.close()
            self._sender = None
        for executor in (self._encoder, self._io):
            if executor is not None:
                # Waiting for a blocking storage call must not block the event loop.
                await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        self._encoder = self._io = None
        log.info(EV_STOPPED)

    async def _halt(self) -> None:
        """Cancel the pipelines (what they held stays pending in Redis); storage stays open."""
        self._claiming = False
        if self._main is not None:
            self._main.cancel()
            try:
                await self._main
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # stop() itself was cancelled: let that through
            except Exception:  # noqa: BLE001, S110 - already logged by _main_done
                pass
            self._main = None

    async def flush(self, deadline_s: float) -> int:
        """Stop claiming, let in-flight chunks finish; returns entries still unacknowledged here."""
        self._claiming = False
        self._scan_now.set()
        end = time.monotonic() + deadline_s
        while True:
            self._progress.clear()
            remaining = self._held()
            left = end - time.monotonic()
            if (remaining == 0 and not self._pipelines) or left <= 0 or self._main is None:
                return remaining
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)

    async def spill(self, deadline_s: float, report: SpillReport) -> SpillReport:
        """Stop forwarding; put every entry this Runner may take in the dead-letter store.

        For a drain with `--spill`, after `flush`. Each chunk is acknowledged only once the
        store holds it; what is not spilled by the deadline stays in Redis. Air-gapped, there
        is nothing to spill (the local store is the chunks' home): the report says so.
        """
        if self.cloud.air_gapped:
            report.skipped["*"] = "air-gapped: chunks stay in local storage; nothing to spill"
            return report
        await self._halt()
        assert self._delivery is not None
        assert self._store is not None
        try:
            tenants = await self._tenant_names()
        except RedisError as e:
            report.error = f"Redis: {type(e).__name__}"
            return report
        spiller = Spiller(
            streams=self._stream,
            states=lambda tenant: self._tenants.setdefault(tenant, TenantState(tenant)),
            delivery=self._delivery,
            settings=self.settings,
            store=self._store,
            report=report,
        )
        return await spiller.run(tenants, deadline_s)

    def totals(self) -> dict[str, int]:
        """Counters over every tenant since start: chunks and events delivered, dead letters."""
        states = self._tenants.values()
        return {
            "chunks": sum(t.chunks_sent + t.chunks_local for t in states),
            "events": sum(t.events_sent for t in states),
            "dead_lettered": sum(t.chunks_dead_lettered for t in states),
        }

    async def run_until_empty(self, deadline_s: float) -> int:
        """Burst mode: wait until every tenant stream is acknowledged; returns what is left."""
        end = time.monotonic() + deadline_s
        while True:
            self._progress.clear()
            self._scan_now.set()
            remaining = await self.backlog()
            left = end - time.monotonic()
            if remaining == 0 or left <= 0:
                return remaining
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), min(left, 0.25))

    async def backlog(self) -> int:
        """Entries not yet acknowledged, over every tenant stream in Redis."""
        total = 0
        for tenant in await self._tenant_names():
            total += await self._stream(tenant).remaining()
        return total

    # -- status ------------------------------------------------------------------------

    def ready(self) -> str | None:
        """Why the forwarder is not ready, or None when it is."""
        if self._main is not None and self._main.done() and not self._main.cancelled():
            error = self._main.exception()
            return f"forwarder stopped: {type(error).__name__}" if error else "forwarder stopped"
        problem = self._store_health.problem
        if problem is None:
            return None
        what = "local chunk store" if self.cloud.air_gapped else "dead-letter store"
        return f"{what} unreachable: {problem}"

    def state(self) -> dict[str, Any]:
        tenants = {name: t.snapshot() for name, t in sorted(self._tenants.items())}
        errors = [t for t in self._tenants.values() if t.last_error_at is not None]
        last = max(errors, key=lambda t: t.last_error_at or 0.0) if errors else None
        return {
            "mode": "air_gapped" if self.cloud.air_gapped else "cloud",
            "running": self._main is not None and not self._main.done(),
            "claiming": self._claiming,
            "circuit": {
                "state": self._breaker.state.value,
                "probe_in_s": round(self._breaker.retry_in(), 1),
                "opened": self._breaker.opened_count,
            },
            "dlq": {
                "store": self._dlq.description if self._dlq else "",
                "count": self._letters(),
                "ready": self.ready() is None,
                "error": self._store_health.problem,
            },
            "last_error": last.last_error if last else None,
            "held_entries": self._held(),
            "tenants": tenants,
        }

    def collect(self) -> Iterator[Metric]:
        """Prometheus families at scrape time: `metrics.add_collector(forwarder.collect)`."""
        yield from families(self.state())
        yield from self._metrics.collect()

    def _stream(self, tenant: str) -> TenantStream:
        return TenantStream(self._redis, self._keys, tenant, self.runner_id, self.settings.trim)

    def _letters(self) -> int:
        """The last count of dead letters, plus what this process added and removed since."""
        delivery = self._delivery
        delta = (delivery.letters_added - delivery.letters_removed) if delivery else 0
        return max(0, self._dlq_count + delta - self._dlq_delta_base)

    def _held(self) -> int:
        return sum(t.held for t in self._tenants.values())

    def _notify(self) -> None:
        self._progress.set()

    def _main_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(EV_FAILED, error=type(task.exception()).__name__)

    # -- supervision -------------------------------------------------------------------

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self._scan_tenants(), name="fwd-scan")
            group.create_task(self._health(), name="fwd-health")
            group.create_task(self._housekeeping(), name="fwd-retention")

    async def _tenant_names(self) -> list[str]:
        members = await self._redis.smembers(self._keys.tenants())
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def _scan_tenants(self) -> None:
        while self._claiming:
            try:
                names = await self._tenant_names()
            except RedisError as e:
                reraise_if_cancelling()
                log.warning(EV_REDIS_ERROR, op="tenants", error=type(e).__name__)
                names = []
            for name in names:
                if name not in self._pipelines and self._group is not None and self._claiming:
                    self._start_pipeline(name)
            self._scan_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._scan_now.wait(), self.settings.tenant_scan_s)

    def _start_pipeline(self, tenant: str) -> None:
        state = self._tenants.setdefault(tenant, TenantState(tenant))
        pipeline = self._pipelines[tenant] = self._new_pipeline(self._stream(tenant), state)
        assert self._group is not None
        self._group.create_task(self._supervise(tenant, pipeline), name=f"fwd-{tenant}")

    def _new_pipeline(self, stream: TenantStream, state: TenantState) -> TenantPipeline:
        assert self._delivery is not None
        return TenantPipeline(
            stream,
            state,
            self.settings,
            self.cloud,
            self._delivery,
            lambda: self._claiming,
            self._notify,
        )

    async def _supervise(self, tenant: str, pipeline: TenantPipeline) -> None:
        """Run a tenant's pipeline; if it breaks, log it and start it again from Redis."""
        failures = 0
        try:
            while True:
                try:
                    await pipeline.run()
                    return
                except Exception as e:
                    # One tenant must not stop the others: log it and restart from Redis.
                    reraise_if_cancelling()
                    failures += 1
                    state = self._tenants[tenant]
                    state.restarts += 1
                    state.note_error(f"pipeline: {type(e).__name__}")
                    log.error(EV_TENANT_FAILED, tenant=tenant, error=type(e).__name__, exc_info=e)
                    await asyncio.sleep(min(PIPELINE_RESTART_MAX_S, 0.5 * 2**failures))
                    if not self._claiming:
                        return
                    pipeline = self._pipelines[tenant] = self._new_pipeline(pipeline.stream, state)
        finally:
            self._pipelines.pop(tenant, None)
            self._notify()

    async def _health(self) -> None:
        while True:
            await asyncio.sleep(self.dlq_settings.health_interval_s)
            await self._check_store()
            if time.monotonic() - self._dlq_counted_at >= DLQ_COUNT_EVERY_S:
                await self._count_letters()

    async def _check_store(self) -> None:
        assert self._dlq is not None
        try:
            await self._dlq.check()
        except StoreUnavailable as e:
            if self._store_health.check_error is None:
                log.error(EV_STORE_UNAVAILABLE, store=self._dlq.description, error=str(e))
            self._store_health.check_error = str(e)
            return
        if self._store_health.check_error is not None:
            log.info(EV_STORE_RECOVERED, store=self._dlq.description)
        self._store_health.check_error = None

    async def _count_letters(self) -> None:
        assert self._dlq is not None
        self._dlq_counted_at = time.monotonic()
        delivery = self._delivery
        base = (delivery.letters_added - delivery.letters_removed) if delivery else 0
        with contextlib.suppress(StoreUnavailable):
            self._dlq_count = await self._dlq.count()
            self._dlq_delta_base = base

    async def _housekeeping(self) -> None:
        """Apply each tenant's retention to the dead letters and local chunks."""
        last = 0.0
        while True:
            version = self._policies.current.version
            if version != self._retention_version or time.monotonic() - last >= (
                self.settings.retention_interval_s
            ):
                await self._apply_retention()
                self._retention_version = version
                last = time.monotonic()
            await asyncio.sleep(min(60.0, self.settings.retention_interval_s))

    async def _apply_retention(self) -> None:
        assert self._dlq is not None
        assert self._sink is not None
        try:
            tenants = await self._tenant_names()
        except RedisError as e:
            reraise_if_cancelling()
            log.warning(EV_REDIS_ERROR, op="retention", error=type(e).__name__)
            return
        policy = self._policies.current
        for tenant in tenants:
            days = policy.for_tenant(tenant).retention_days
            try:
                await self._dlq.apply_retention(tenant, days)
                await self._sink.apply_retention(tenant, days)
            except (StoreUnavailable, ValueError) as e:
                log.warning(EV_RETENTION_FAILED, tenant=tenant, error=str(e))
