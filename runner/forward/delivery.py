"""What happens to one chunk: send it, retry it, pause for it, dead-letter it, or keep it locally.

`Delivery.__call__(state, chunk)` returns only once the chunk is held by the
cloud (2xx/409), by local storage (air-gapped or `forward: false`), or by the
dead-letter store; the pipeline acknowledges the stream entries after that.
While a store is unreachable it keeps retrying, so the entries stay pending in
Redis and `StoreHealth` tells readiness why.

| cloud answer                         | action                                               |
|--------------------------------------|------------------------------------------------------|
| 2xx, 409                             | done (the pipeline XACKs, trims, DECRBYs)            |
| 408, 429, 5xx, timeout, connect/DNS  | retry: backoff with full jitter, `Retry-After` wins  |
| same, `max_attempts` or `max_age_s`  | dead-letter store (reason `exhausted`)               |
| 401, 403                             | pause the tenant `auth_pause_s`, keep the chunk      |
| other 4xx                            | dead-letter store at once (reason `rejected`)        |

Attempts refused by the open circuit are not made, so they do not count; a
failed probe does not count against its chunk either (the cloud is down, not
the chunk), but the chunk's age still does.

`spill(state, chunk)` is the drain's way out (`runner drain --spill`): the chunk
goes to the dead-letter store at once with reason `drain_spill`.

Each delivery, whatever its end, is one `forward.chunk` span (`spans.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import TypeVar

import structlog
from opentelemetry import trace
from opentelemetry.trace import Span

from runner.forward.chunker import Chunk, MalformedEntry, encode, encode_raw
from runner.forward.deadletter import (
    REASON_EXHAUSTED,
    REASON_MALFORMED,
    REASON_REJECTED,
    DeadLetter,
    DeadLetterStore,
    new_letter,
)
from runner.forward.localsink import LocalSink
from runner.forward.metrics import ForwardMetrics
from runner.forward.pipeline import TenantState, reraise_if_cancelling
from runner.forward.sender import Backoff, CircuitBreaker, CloudSender, Outcome, SendResult
from runner.forward.settings import CloudSettings, ForwardSettings
from runner.forward.spans import chunk_span, finish, header_for, record_attempt
from runner.forward.storage import ObjectNotFound, StoreUnavailable
from runner.policy.store import PolicyStore

log = structlog.get_logger(__name__)

EV_CHUNK_SENT = "forward.chunk_sent"
EV_CHUNK_RETRY = "forward.chunk_retry"
EV_AUTH_REFUSED = "forward.auth_refused"
EV_DEAD_LETTERED = "forward.dead_lettered"
EV_STORE_UNAVAILABLE = "forward.store_unavailable"
EV_STORE_RECOVERED = "forward.store_recovered"
EV_STORED_LOCALLY = "forward.stored_locally"
EV_REPLAY_DELIVERED = "forward.replay_delivered"
EV_MALFORMED = "forward.malformed_chunk"

REASON_SPILLED = "drain_spill"
"""A drain with `--spill` could not forward the chunk by its deadline (a dead-letter reason)."""

T = TypeVar("T")


class StoreHealth:
    """Why the dead-letter / local store is unusable: from the last health check or write."""

    def __init__(self) -> None:
        self.check_error: str | None = None
        self.write_error: str | None = None

    @property
    def problem(self) -> str | None:
        return self.write_error or self.check_error


class Attempts:
    """How one chunk has fared so far."""

    def __init__(self) -> None:
        self.count = 0
        self.first_failure_ms = 0
        self.first_failure = 0.0
        self.last: SendResult | None = None

    def failed(self, result: SendResult, counted: bool) -> None:
        if counted:
            self.count += 1
        if not self.first_failure:
            self.first_failure = time.monotonic()
            self.first_failure_ms = int(time.time() * 1000)
        self.last = result

    def exhausted(self, cloud: CloudSettings) -> bool:
        age = time.monotonic() - self.first_failure if self.first_failure else 0.0
        return self.count >= cloud.max_attempts or age >= cloud.max_age_s


class Delivery:
    """Carries chunks to their destination; one instance per Forwarder start."""

    def __init__(
        self,
        *,
        runner_id: str,
        cloud: CloudSettings,
        settings: ForwardSettings,
        policies: PolicyStore,
        sender: CloudSender | None,
        breaker: CircuitBreaker,
        dead_letters: DeadLetterStore,
        sink: LocalSink,
        encoder: Executor,
        health: StoreHealth,
        tracer: trace.Tracer | None = None,
        metrics: ForwardMetrics | None = None,
    ) -> None:
        self._runner_id = runner_id
        self._metrics = metrics or ForwardMetrics()
        self._cloud = cloud
        self._settings = settings
        self._policies = policies
        self._sender = sender
        self._breaker = breaker
        self._dlq = dead_letters
        self._sink = sink
        self._encoder = encoder
        self._health = health
        self._tracer = tracer or trace.NoOpTracer()
        self._backoff = Backoff(
            cloud.backoff_initial_s, cloud.backoff_max_s, cloud.retry_after_max_s
        )
        self.letters_added = 0
        self.letters_removed = 0

    def local(self, tenant: str) -> bool:
        """Air-gapped, or the tenant's policy keeps its data on-prem."""
        return self._sender is None or not self._policies.current.for_tenant(tenant).forward

    async def __call__(self, state: TenantState, chunk: Chunk) -> None:
        state.local = self.local(chunk.tenant)
        with chunk_span(self._tracer, chunk) as span:
            result, error = await self._route(state, chunk, span)
            finish(span, result, chunk, error)

    async def _route(self, state: TenantState, chunk: Chunk, span: Span) -> tuple[str, str]:
        """Deliver the chunk; returns how it ended (sent, local, dead_lettered) and why not sent."""
        if chunk.malformed:
            await self._malformed(state, chunk)
            return "dead_lettered", REASON_MALFORMED
        if state.local:
            await self._store_locally(state, chunk)
            return "local", ""
        if not chunk.body:
            try:
                chunk.body = await self._run(encode, chunk)
            except MalformedEntry:
                await self._malformed(state, chunk)
                return "dead_lettered", REASON_MALFORMED
        return await self._send(state, chunk, span)

    async def spill(self, state: TenantState, chunk: Chunk) -> str:
        """Dead-letter a chunk a drain could not forward in time; returns the reason recorded.

        The reason is `drain_spill`, or `malformed` for entries that cannot be encoded. Like
        every store write it retries until the store holds the chunk durably; the caller
        bounds it with its deadline.
        """
        with chunk_span(self._tracer, chunk) as span:
            reason = REASON_MALFORMED if chunk.malformed else REASON_SPILLED
            if reason == REASON_SPILLED and not chunk.body:
                try:
                    chunk.body = await self._run(encode, chunk)
                except MalformedEntry:
                    reason = REASON_MALFORMED
            if reason == REASON_MALFORMED:
                chunk.body = await self._run(encode_raw, chunk)
            await self._dead_letter(state, chunk, reason, Attempts())
            finish(span, "spilled", chunk)
        return reason

    async def _run(self, fn: Callable[[Chunk, str, int], bytes], chunk: Chunk) -> bytes:
        loop = asyncio.get_running_loop()
        level = self._settings.zstd_level
        return await loop.run_in_executor(self._encoder, fn, chunk, self._runner_id, level)

    async def _send(self, state: TenantState, chunk: Chunk, span: Span) -> tuple[str, str]:
        assert self._sender is not None
        attempts = Attempts()
        header = header_for(span)
        tries = 0
        while True:
            pause = state.paused_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)  # the tenant is paused after a 401/403
                continue
            probe = await self._breaker.acquire()
            result: SendResult | None = None
            try:
                result = await self._sender.send(chunk, header)
            finally:
                await self._breaker.record(probe, result)
            tries += 1
            self._metrics.request(chunk.tenant, result.status)
            record_attempt(span, tries, result, probe)
            span.set_attribute("traceflow.attempts", tries)
            if result.status is not None:
                span.set_attribute("http.response.status_code", result.status)
            if result.outcome is Outcome.ACCEPTED:
                self._accepted(state, chunk, result)
                if chunk.replay_of:
                    await self._forget_letter(chunk)
                return "sent", ""
            state.note_error(result.error, result.status)
            if result.outcome is Outcome.AUTH:
                state.auth_failures += 1
                state.paused_until = time.monotonic() + self._cloud.auth_pause_s
                log.error(
                    EV_AUTH_REFUSED,
                    tenant=chunk.tenant,
                    status=result.status,
                    pause_s=self._cloud.auth_pause_s,
                )
                continue
            if result.outcome is Outcome.PERMANENT:
                attempts.failed(result, counted=True)
                await self._dead_letter(state, chunk, REASON_REJECTED, attempts)
                return "dead_lettered", REASON_REJECTED
            attempts.failed(result, counted=not probe)
            if attempts.exhausted(self._cloud):
                await self._dead_letter(state, chunk, REASON_EXHAUSTED, attempts)
                return "dead_lettered", REASON_EXHAUSTED
            await self._wait_to_retry(state, chunk, attempts, result)

    def _accepted(self, state: TenantState, chunk: Chunk, result: SendResult) -> None:
        state.chunks_sent += 1
        state.events_sent += chunk.events
        state.bytes_sent += len(chunk.body)
        state.last_status = result.status
        self._metrics.accepted(chunk.tenant, chunk.body)
        log.debug(
            EV_CHUNK_SENT,
            tenant=chunk.tenant,
            chunk_id=chunk.chunk_id,
            events=chunk.events,
            bytes=len(chunk.body),
            status=result.status,
        )

    async def _wait_to_retry(
        self, state: TenantState, chunk: Chunk, attempts: Attempts, result: SendResult
    ) -> None:
        state.retries += 1
        delay = self._backoff.delay(max(attempts.count, 1), result.retry_after_s)
        log.info(
            EV_CHUNK_RETRY,
            tenant=chunk.tenant,
            chunk_id=chunk.chunk_id,
            attempt=attempts.count,
            status=result.status,
            error=result.error,
            delay_s=round(delay, 2),
        )
        state.retrying += 1
        try:
            await asyncio.sleep(delay)
        finally:
            state.retrying -= 1

    async def _malformed(self, state: TenantState, chunk: Chunk) -> None:
        log.error(EV_MALFORMED, tenant=chunk.tenant, chunk_id=chunk.chunk_id)
        chunk.body = await self._run(encode_raw, chunk)
        await self._dead_letter(state, chunk, REASON_MALFORMED, Attempts())

    async def _dead_letter(
        self, state: TenantState, chunk: Chunk, reason: str, attempts: Attempts
    ) -> None:
        """Write the chunk to the dead-letter store, retrying until it is durable there."""
        previous: DeadLetter | None = None
        if chunk.replay_of:
            with contextlib.suppress(ObjectNotFound, StoreUnavailable, ValueError):
                previous = await self._dlq.get(chunk.replay_of, chunk.tenant)
        last = attempts.last
        letter = new_letter(
            chunk_id=chunk.chunk_id,
            tenant=chunk.tenant,
            reason=reason,
            last_status=last.status if last else None,
            last_error=last.error if last else reason,
            attempts=attempts.count,
            first_failure_ms=attempts.first_failure_ms,
            policy_version=chunk.policy_version,
            runner_id=self._runner_id,
            events=chunk.events,
            entries=len(chunk.entries),
            size=len(chunk.body),
            created_at=chunk.created_at,
            previous=previous,
        )
        dlq = self._dlq
        await self._durably(state, lambda: dlq.put(letter, chunk.body))
        state.chunks_dead_lettered += 1
        by_reason = state.dead_lettered_by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1
        if previous is None:
            self.letters_added += 1
        log.warning(
            EV_DEAD_LETTERED,
            tenant=chunk.tenant,
            chunk_id=chunk.chunk_id,
            reason=reason,
            status=letter.last_status,
            attempts=letter.attempts,
            events=chunk.events,
        )

    async def _store_locally(self, state: TenantState, chunk: Chunk) -> None:
        sink = self._sink
        objects = await self._durably(state, lambda: sink.write(chunk))
        state.chunks_local += 1
        state.events_sent += chunk.events
        log.debug(
            EV_STORED_LOCALLY,
            tenant=chunk.tenant,
            chunk_id=chunk.chunk_id,
            objects=objects,
            events=chunk.events,
        )

    async def _durably(self, state: TenantState, write: Callable[[], Awaitable[T]]) -> T:
        """Run a storage write until it succeeds; readiness says why while it does not."""
        failures = 0
        while True:
            try:
                result = await write()
            except StoreUnavailable as e:
                reraise_if_cancelling()
                failures += 1
                if self._health.write_error is None:
                    log.error(EV_STORE_UNAVAILABLE, error=str(e))
                self._health.write_error = str(e)
                state.note_error(f"store: {e}")
                state.retrying += 1
                try:
                    await asyncio.sleep(self._backoff.delay(failures))
                finally:
                    state.retrying -= 1
                continue
            if self._health.write_error is not None:
                log.info(EV_STORE_RECOVERED)
            self._health.write_error = None
            return result

    async def _forget_letter(self, chunk: Chunk) -> None:
        """A replayed dead letter was accepted: remove it from the store."""
        try:
            await self._dlq.delete(chunk.tenant, chunk.replay_of)
            self.letters_removed += 1
        except StoreUnavailable as e:
            log.warning(EV_STORE_UNAVAILABLE, error=str(e), op="delete_replayed")
        log.info(EV_REPLAY_DELIVERED, tenant=chunk.tenant, chunk_id=chunk.chunk_id)
