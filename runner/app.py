"""The Runner: builds the parts, starts them in order, drains and stops them in reverse.

The process around it (signals, serving until told to stop) is `runner.process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import structlog
from aiohttp import web
from opentelemetry import trace
from prometheus_client.core import CounterMetricFamily, Metric
from redis.asyncio import Redis
from redis.exceptions import RedisError

from runner import __version__
from runner.admin.routes import admin_app
from runner.admin.token import serving_token
from runner.buffer.embedded import EmbeddedRedis
from runner.buffer.keys import Keys
from runner.buffer.redis_streams import StreamBuffer, check_durability
from runner.config import Config
from runner.drain import DrainReport, flush_buffer
from runner.errors import BufferUnavailable, ConfigError, StartupError
from runner.forward.forwarder import Forwarder
from runner.ingest.auth import ProjectDirectory
from runner.ingest.batch import batch_handler
from runner.ingest.connection import Connections
from runner.ingest.session import Ingestor
from runner.ingest.webrtc import PeerConnections, add_webrtc_routes
from runner.ingest.websocket import CONFIG_KEY, CONNECTIONS_KEY, INGESTOR_KEY, stream_handler
from runner.policy.ratelimit import RateLimiter
from runner.policy.store import PolicyStore
from runner.policy.sync import PolicyManager
from runner.redact import Redactor
from runner.security.hardening import (
    HardenedTCPSite,
    app_runner_kwargs,
    check_admin_bind,
    exposure_warnings,
    source_limit_middleware,
)
from runner.security.jwt import JwtVerifier
from runner.security.ratelimit import FailedAuthLimiter
from runner.security.settings import ListenerLimits
from runner.security.tls import ReloadingTls, TlsConfigError
from runner.telemetry.audit import AuditLog
from runner.telemetry.metrics import Metrics, gauge_family
from runner.telemetry.tracing import TRACER_NAME, build_provider

log = structlog.get_logger(__name__)

EV_STARTED = "runner.started"
EV_EXPOSURE = "runner.exposure"
EV_DRAINING = "runner.draining"
EV_DRAINED = "runner.drained"
EV_STOP_TIMEOUT = "runner.stop_timeout"
STOP_TIMEOUT_S = 30.0
EV_STOPPED = "runner.stopped"
READY_CHECK_TIMEOUT_S = 1.0
GOAWAY_RECONNECT_MS = 500


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class Runner:
    """One Runner process: ingest and admin listeners over the buffer and the PII engine.

    `redactor` and `tracer_provider` may be passed in (tests share one PII engine across
    Runners, and read spans from an in-memory exporter); a passed-in redactor is started
    and stopped by its owner, not by the Runner.
    """

    def __init__(
        self,
        config: Config,
        *,
        redactor: Redactor | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self.tracer_provider = tracer_provider or build_provider(
            config.telemetry.otlp_endpoint, config.runner.id
        )
        self.audit = AuditLog(config.telemetry.resolved_audit_path(config.runner.data_dir))
        self._own_redactor = redactor is None
        self.policies = PolicyStore()
        self.connections = Connections()
        self.draining = False
        self.drain_requested = asyncio.Event()
        self.drain_done = asyncio.Event()
        self.drain_deadline_s = config.forward.drain_deadline_s
        self.drain_spill: bool | None = None
        self.drain_spill_deadline_s: float | None = None
        self.drain_report = DrainReport()
        self.embedded: EmbeddedRedis | None = None
        self.redis: Redis | None = None
        self.buffer: StreamBuffer | None = None
        self.redactor: Redactor | None = redactor
        self.ingestor: Ingestor | None = None
        self.policy_manager: PolicyManager | None = None
        self.forwarder: Forwarder | None = None
        self.peers: PeerConnections | None = None
        self._web: list[web.AppRunner] = []
        self._started = 0.0
        self.ingest_address: tuple[str, int] = ("", 0)
        self.tls: dict[str, ReloadingTls] = {
            name: ReloadingTls(name, section.tls)
            for name, section in (("ingest", config.ingest), ("admin", config.admin))
            if section.tls.enabled
        }
        self.jwt = JwtVerifier(config.projects)
        self.auth_limiter = FailedAuthLimiter(config.ingest.auth_throttle)
        self.admin_address: tuple[str, int] = ("", 0)

    async def start(self) -> None:
        """Start Redis (or connect), the buffer, the PII engine, then open the listeners.

        If any part fails, the parts already started are stopped before the error propagates.
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        cfg.runner.data_dir.mkdir(parents=True, exist_ok=True)
        admin_token = serving_token(cfg)
        try:
            check_admin_bind(cfg.admin.listen, cfg.admin.tls, admin_token)
        except ConfigError as e:
            raise StartupError(str(e)) from e
        for warning in exposure_warnings(cfg.ingest.listen, cfg.ingest.tls):
            log.warning(EV_EXPOSURE, detail=warning)
        for tls in self.tls.values():
            try:
                await tls.start()
            except TlsConfigError as e:
                raise StartupError(f"{tls.name}.tls: {e}") from e
            self.metrics.add_collector(tls.collect)
        await self.jwt.start()
        self.metrics.add_collector(self.auth_limiter.collect)
        await self.audit.start()
        url = cfg.buffer.redis_url
        if url == "embedded":
            self.embedded = EmbeddedRedis(cfg.runner.data_dir, cfg.buffer.redis_server)
            await self.embedded.start()
            url = self.embedded.url
        self.redis = Redis.from_url(url, socket_timeout=10, health_check_interval=5)
        try:
            await self.redis.ping()
        except RedisError as e:
            raise StartupError(f"cannot reach Redis at {url.split('@')[-1]}: {e}") from e
        await check_durability(self.redis, cfg.buffer.accept_weaker_durability)
        self.policy_manager = PolicyManager(
            cfg.control_plane,
            cfg.runner.data_dir,
            self.policies,
            runner_id=cfg.runner.id,
            audit=lambda action, fields: self.audit.record(action, **fields),
        )
        await self.policy_manager.start()
        self.buffer = StreamBuffer(self.redis, cfg.buffer)
        await self.buffer.start()
        if cfg.forward.enabled:
            self.forwarder = Forwarder(
                self.redis,
                cfg,
                self.policies,
                Keys(cfg.buffer.stream_prefix),
                tracer=self._tracer(),
            )
            await self.forwarder.start()
        if self.redactor is None:
            self.redactor = Redactor(cfg.pii, cfg.runner.data_dir)
            await self.redactor.start()
        directory = ProjectDirectory(cfg.projects, cfg.ingest.max_connections_per_project)
        self.ingestor = Ingestor(
            cfg,
            directory,
            self.policies,
            self.redactor,
            self.buffer,
            self.metrics,
            self._tracer(),
            self.audit,
            RateLimiter(self.redis, cfg.buffer.stream_prefix),
            jwt=self.jwt,
            auth_limiter=self.auth_limiter,
        )
        if cfg.webrtc.enabled:
            self.peers = PeerConnections(
                cfg.webrtc, cfg.ingest, cfg.buffer.retry_after_ms, self.ingestor, self.connections
            )
            await self.peers.start()
            self.metrics.add_collector(self.peers.collect)
        self.metrics.add_collector(self._collect)
        if self.forwarder is not None:
            self.metrics.add_collector(self.forwarder.collect)
        self.ingest_address = await self._listen(
            self._ingest_app(), cfg.ingest.listen, "ingest", cfg.ingest.limits
        )
        self.admin_address = await self._listen(
            admin_app(self, admin_token, self.audit), cfg.admin.listen, "admin", cfg.admin.limits
        )
        self._started = time.monotonic()
        log.info(
            EV_STARTED,
            version=__version__,
            ingest=f"{self.ingest_address[0]}:{self.ingest_address[1]}",
            admin=f"{self.admin_address[0]}:{self.admin_address[1]}",
            air_gapped=cfg.air_gapped,
        )

    def _tracer(self) -> trace.Tracer:
        return self.tracer_provider.get_tracer(TRACER_NAME, __version__)

    def _ingest_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.ingest.max_message_bytes,
            middlewares=[source_limit_middleware(self.config.ingest.limits)],
        )
        assert self.ingestor is not None
        app[CONFIG_KEY] = self.config
        app[INGESTOR_KEY] = self.ingestor
        app[CONNECTIONS_KEY] = self.connections
        app.router.add_get("/v1/stream", stream_handler)
        app.router.add_post("/v1/batch", batch_handler)
        if self.peers is not None:
            add_webrtc_routes(app, self.peers)
        return app

    async def _listen(
        self, app: web.Application, listen: str, name: str, limits: ListenerLimits
    ) -> tuple[str, int]:
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, **app_runner_kwargs(limits)
        )
        await runner.setup()
        self._web.append(runner)
        host, port = _host_port(listen)
        tls = self.tls.get(name)
        site = HardenedTCPSite(
            runner,
            host,
            port,
            ssl_context=tls.context if tls is not None else None,
            handshake_timeout_s=(
                self.config.ingest if name == "ingest" else self.config.admin
            ).tls.handshake_timeout_s,
            backlog=1024,
        )
        await site.start()
        bound = runner.addresses[0]
        return str(bound[0]), int(bound[1])

    # -- operations ------------------------------------------------------------

    def _collect(self) -> Iterator[Metric]:
        """Gauges read from the parts at scrape time."""
        buffer = self.buffer
        if buffer is not None:
            depth = buffer.depth()
            yield gauge_family(
                "traceflow_buffer_bytes",
                "Buffered bytes not yet forwarded.",
                ["tenant"],
                {(t,): v for t, v in buffer.usage().items()},
            )
            yield gauge_family(
                "traceflow_buffer_entries",
                "Entries in the tenant stream.",
                ["tenant"],
                {(t,): d[0] for t, d in depth.items()},
            )
            yield gauge_family(
                "traceflow_buffer_oldest_age_seconds",
                "Age of the oldest buffered entry.",
                ["tenant"],
                {(t,): d[1] for t, d in depth.items() if d[1] is not None},
            )
        yield gauge_family(
            "traceflow_policy_version",
            "Version of the policy in force.",
            [],
            {(): self.policies.current.version},
        )
        yield gauge_family(
            "traceflow_draining", "1 while the Runner drains.", [], {(): int(self.draining)}
        )
        manager = self.policy_manager
        if manager is not None:
            refusals = CounterMetricFamily(
                "traceflow_policy_refusals", "Policies refused, by reason.", labels=["reason"]
            )
            for reason, count in manager.refusals.items():
                refusals.add_metric([reason], count)
            yield refusals
            applied = CounterMetricFamily("traceflow_policy_applied", "Policies put in force.")
            applied.add_metric([], manager.applied)
            yield applied

    async def readiness(self) -> dict[str, str]:
        """Failed readiness checks by name; empty when ready."""
        failed: dict[str, str] = {}
        if self.draining:
            failed["draining"] = "the Runner is draining"
        if self.redis is None or self.buffer is None:
            failed["buffer"] = "not started"
            return failed
        try:
            await asyncio.wait_for(self.redis.ping(), READY_CHECK_TIMEOUT_S)
        except (RedisError, TimeoutError, OSError) as e:
            failed["buffer"] = f"Redis unreachable ({type(e).__name__})"
        if self.buffer.over_high_water():
            failed["buffer_high_water"] = "buffer is at its high-water mark"
        if self.forwarder is not None and (reason := self.forwarder.ready()):
            failed["forwarder"] = reason
        if self.policies.current is None:
            failed["policy"] = "no policy in force"
        return failed

    def policy_report(self, tenant: str | None) -> dict[str, Any]:
        return self.policy_manager.report(tenant) if self.policy_manager else {}

    def status(self) -> dict[str, Any]:
        buffer = self.buffer
        ingestor = self.ingestor
        return {
            "version": __version__,
            "runner_id": self.config.runner.id,
            "uptime_s": round(time.monotonic() - self._started, 1) if self._started else 0,
            "draining": self.draining,
            "air_gapped": self.config.air_gapped,
            "security": {
                "tls": {name: tls.status() for name, tls in self.tls.items()},
                "jwt": self.jwt.status(),
                "auth_throttle": self.auth_limiter.status(),
            },
            "policy": (
                self.policy_manager.status()
                if self.policy_manager
                else {
                    "version": self.policies.current.version,
                    "source": self.policies.current.source,
                }
            ),
            "sessions": dict(ingestor.stats.sessions_open) if ingestor else {},
            "ingest": {
                "batches_acked": ingestor.stats.batches_acked if ingestor else 0,
                "batches_duplicate": ingestor.stats.batches_duplicate if ingestor else 0,
                "batches_nacked": ingestor.stats.batches_nacked if ingestor else 0,
                "events_stored": ingestor.stats.events_stored if ingestor else 0,
            },
            "ingest_rate": {
                "events_per_s": round(
                    self.metrics.sample_rate(
                        "events", ingestor.stats.events_stored if ingestor else 0
                    ),
                    1,
                ),
            },
            "buffer": {
                "bytes_by_tenant": buffer.usage() if buffer else {},
                "depth_by_tenant": {
                    tenant: {"entries": entries, "oldest_age_s": age}
                    for tenant, (entries, age) in (buffer.depth() if buffer else {}).items()
                },
                "bytes_total": buffer.used_total() if buffer else 0,
                "high_water_bytes": self.config.buffer.high_water_bytes,
                "embedded_redis_restarts": self.embedded.restarts if self.embedded else 0,
            },
            "forward": self.forwarder.state() if self.forwarder else {},
            "drain": self.drain_report.to_dict(),
        }

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    def reload(self) -> None:
        """SIGHUP: re-read the policies folder and poll the control plane now."""
        if self.policy_manager is not None:
            self.policy_manager.reload()

    def request_drain(
        self,
        deadline_s: float,
        spill: bool | None = None,
        spill_deadline_s: float | None = None,
    ) -> bool:
        """Ask `serve` to drain; False when a drain was already requested (it keeps its terms)."""
        if self.drain_requested.is_set():
            return False
        self.drain_deadline_s = deadline_s
        self.drain_spill = spill
        self.drain_spill_deadline_s = spill_deadline_s
        self.drain_requested.set()
        return True

    @property
    def default_drain_deadline_s(self) -> float:
        """The deadline of a drain that names none (SIGTERM, `runner drain` without one)."""
        return self.config.forward.drain_deadline_s

    async def drain_progress(self) -> dict[str, Any]:
        """The drain report, with open sessions and the live backlog while forwarding."""
        sessions = sum(self.ingestor.stats.sessions_open.values()) if self.ingestor else 0
        return await self.drain_report.progress(sessions, self.forwarder)

    async def wait_drained(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the drain to finish; True once it has."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain_done.wait(), timeout_s)
        return self.drain_done.is_set()

    async def _stop_part(self, name: str, stopping: Awaitable[Any]) -> None:
        try:
            await asyncio.wait_for(stopping, STOP_TIMEOUT_S)
        except TimeoutError:
            log.error(EV_STOP_TIMEOUT, part=name, timeout_s=STOP_TIMEOUT_S)

    async def drain(
        self,
        deadline_s: float,
        spill: bool | None = None,
        spill_deadline_s: float | None = None,
    ) -> int:
        """Drain within the deadline; returns the entries left in Redis for the next start.

        Order (uvicorn's shutdown): go unready → goaway and close 1001 to every session
        (each finishes the batches it already read) → forward the buffer until it is
        empty or the deadline → stop claiming and let in-flight chunks finish → with
        spill (`spill`, else `[forward] drain_spill`), move what is left to the
        dead-letter store within `spill_deadline_s` (else `[forward] spill_deadline_s`).
        `drain_report` shows the progress; `drain_done` is set at the end.
        """
        settings = self.config.forward
        report = self.drain_report = DrainReport(
            deadline_s=deadline_s,
            spill=settings.drain_spill if spill is None else spill,
            spill_deadline_s=spill_deadline_s or settings.spill_deadline_s,
            started=time.monotonic(),
        )
        self.draining = True
        log.info(EV_DRAINING, deadline_s=deadline_s, spill=report.spill)
        try:
            report.state = "sessions"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connections.goaway(GOAWAY_RECONNECT_MS), deadline_s)
            end = report.started + deadline_s
            await flush_buffer(report, self.forwarder, self.config.runner.id, end)
        except BaseException as e:
            report.state, report.error = "failed", type(e).__name__
            raise
        finally:
            report.finished = time.monotonic()
            self.drain_done.set()
        log.info(EV_DRAINED, **report.outcome())
        self.audit.record("drain.finished", **report.outcome())
        return report.remaining_entries

    async def stop(self) -> None:
        """Close listeners, then sessions, the engine, policy sync, forwarder, buffer and Redis.

        Each part gets STOP_TIMEOUT_S; one that does not stop in time is logged by name
        and left behind, so shutdown never hangs (what was acked is already in Redis).
        """
        for runner in reversed(self._web):
            await self._stop_part("listener", runner.cleanup())
        self._web.clear()
        if self.peers is not None:
            await self._stop_part("webrtc", self.peers.stop())
        for tls in self.tls.values():
            await self._stop_part("tls", tls.stop())
        await self._stop_part("jwt", self.jwt.stop())
        if self.buffer is not None:
            with contextlib.suppress(BufferUnavailable):
                await self._stop_part("buffer", self.buffer.stop())
        if self.redactor is not None and self._own_redactor:
            await self._stop_part("pii", self.redactor.stop())
        if self.policy_manager is not None:
            await self._stop_part("policy", self.policy_manager.stop())
        if self.forwarder is not None:
            await self._stop_part("forwarder", self.forwarder.stop())
        if self.redis is not None:
            await self._stop_part("redis_client", self.redis.aclose())
        if self.embedded is not None:
            await self._stop_part("embedded_redis", self.embedded.stop())
        await self._stop_part("audit", self.audit.stop())
        log.info(EV_STOPPED)
