"""POST chunks to the cloud (PROTOCOL §2) and say what each answer means.

`CloudSender` owns one keep-alive aiohttp session (and the client certificate
when configured) and turns every reply or failure into an `Outcome`:

| reply                                      | outcome     |
|--------------------------------------------|-------------|
| 2xx, 409                                   | `ACCEPTED`  |
| 401, 403                                   | `AUTH`      |
| 408, 429, 5xx, 3xx, timeout, connect / DNS | `RETRY`     |
| any other 4xx                              | `PERMANENT` |

`Backoff` is exponential with full jitter, stretched to honour `Retry-After`;
`CircuitBreaker` stops all sends after a run of failures and lets one probe
through once the open period ends. What to do with each outcome is the
forwarder's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
import structlog

from runner import __version__
from runner.forward.chunker import Chunk
from runner.forward.settings import CloudSettings

log = structlog.get_logger(__name__)

EV_CIRCUIT_OPEN = "forward.circuit_open"
EV_CIRCUIT_CLOSED = "forward.circuit_closed"

MAX_ERROR_BODY = 4096


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    RETRY = "retry"
    AUTH = "auth"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    status: int | None
    """The HTTP status, or None when no answer came (connection error, timeout)."""
    error: str
    """A short description for logs and dead-letter metadata ("" when accepted)."""
    retry_after_s: float | None = None

    @property
    def cloud_alive(self) -> bool:
        """The cloud answered in a way that shows it is up (for the circuit breaker)."""
        return self.status is not None and self.status != 408 and self.status < 500


def classify(status: int) -> Outcome:
    if 200 <= status < 300 or status == 409:
        return Outcome.ACCEPTED
    if status in (401, 403):
        return Outcome.AUTH
    if status in (408, 429) or status >= 500 or 300 <= status < 400:
        return Outcome.RETRY
    if 400 <= status < 500:
        return Outcome.PERMANENT
    return Outcome.RETRY  # 1xx as a final answer: a broken proxy, worth another try


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


def traceparent(chunk_id: str) -> str:
    """A W3C traceparent for when tracing is off: the chunk id as trace id, a new span each.

    With tracing on, the header carries the chunk span's context instead (`spans.py`).
    """
    trace_id = chunk_id[:32].rjust(32, "0")
    if set(trace_id) == {"0"}:
        trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


class Backoff:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(n-1)))."""

    def __init__(
        self,
        base_s: float,
        cap_s: float,
        retry_after_cap_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self._base = base_s
        self._cap = cap_s
        self._retry_after_cap = retry_after_cap_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        ceiling = min(self._cap, self._base * 2 ** min(max(attempt - 1, 0), 62))
        wait = self._rng.uniform(0, ceiling)
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self._retry_after_cap))
        return wait


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after consecutive failures; after the open period one probe decides.

    `acquire()` waits while the circuit is open or a probe is out and returns
    True for the caller that is the probe. Every acquire must be followed by
    exactly one `record(probe, result)`; `result=None` means the send never
    finished (cancelled), which reopens the circuit at once for another probe.
    """

    def __init__(
        self,
        failures: int,
        open_s: float,
        open_max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failures
        self._open_s = open_s
        self._open_max_s = open_max_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._period = open_s
        self._reopen_at = 0.0
        self._changed = asyncio.Condition()
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        return self._state

    def retry_in(self) -> float:
        """Seconds until the next probe may go (0 when closed)."""
        if self._state is BreakerState.OPEN:
            return max(0.0, self._reopen_at - self._clock())
        return 0.0

    async def acquire(self) -> bool:
        async with self._changed:
            while True:
                if self._state is BreakerState.CLOSED:
                    return False
                if self._state is BreakerState.OPEN:
                    left = self._reopen_at - self._clock()
                    if left <= 0:
                        self._state = BreakerState.HALF_OPEN
                        return True
                    # When the open period is over, loop round and become the probe.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), left)
                    continue
                await self._changed.wait()  # half-open: wait for the probe's verdict

    async def record(self, probe: bool, result: SendResult | None) -> None:
        async with self._changed:
            if result is None:
                if probe:
                    self._state = BreakerState.OPEN
                    self._reopen_at = self._clock()
                    self._changed.notify_all()
                return
            if result.cloud_alive:
                if self._state is not BreakerState.CLOSED:
                    log.info(EV_CIRCUIT_CLOSED, after_s=round(self._period, 1))
                self._state = BreakerState.CLOSED
                self._consecutive = 0
                self._period = self._open_s
                self._changed.notify_all()
                return
            if probe:
                self._period = min(self._period * 2, self._open_max_s)
                self._open(result)
                return
            self._consecutive += 1
            if self._state is BreakerState.CLOSED and self._consecutive >= self._threshold:
                self._open(result)

    def _open(self, result: SendResult) -> None:
        self._state = BreakerState.OPEN
        self._reopen_at = self._clock() + self._period
        self.opened_count += 1
        log.warning(EV_CIRCUIT_OPEN, for_s=round(self._period, 1), status=result.status)
        self._changed.notify_all()


def _ssl_context(settings: CloudSettings) -> ssl.SSLContext | None:
    if not settings.endpoint.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if settings.client_cert is not None:
        context.load_cert_chain(
            str(settings.client_cert),
            str(settings.client_key) if settings.client_key else None,
        )
    return context


class CloudSender:
    """One keep-alive HTTP client for `POST {endpoint}/v1/chunks`."""

    def __init__(self, settings: CloudSettings, runner_id: str, token: str) -> None:
        self._settings = settings
        self._runner_id = runner_id
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        s = self._settings
        connector = aiohttp.TCPConnector(
            limit=s.max_connections,
            keepalive_timeout=s.keepalive_s,
            ssl=_ssl_context(s) or True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=s.request_timeout_s, sock_connect=s.connect_timeout_s
            ),
            headers={"User-Agent": f"traceflow-runner/{__version__}"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def headers(self, chunk: Chunk, trace_header: str | None = None) -> dict[str, str]:
        """The §2 headers; `trace_header` is the chunk span's traceparent when tracing is on."""
        headers = {
            "Content-Type": "application/x-ndjson",
            "Content-Encoding": "zstd",
            "Idempotency-Key": chunk.chunk_id,
            "X-TraceFlow-Runner": self._runner_id,
            "X-TraceFlow-Tenant": chunk.tenant,
            "X-TraceFlow-Policy-Version": str(chunk.policy_version),
            "traceparent": trace_header or traceparent(chunk.chunk_id),
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def send(self, chunk: Chunk, trace_header: str | None = None) -> SendResult:
        """One attempt. Never raises for network trouble: that is a `RETRY` result."""
        if self._session is None:
            raise RuntimeError("CloudSender.send before start()")
        try:
            async with self._session.post(
                self._settings.chunks_url,
                data=chunk.body,
                headers=self.headers(chunk, trace_header),
                allow_redirects=False,
            ) as response:
                # Read (and bound) the body so the connection goes back to the pool.
                await response.content.read(MAX_ERROR_BODY)
                status = response.status
                outcome = classify(status)
                retry_after = (
                    parse_retry_after(response.headers.get("Retry-After"))
                    if outcome is Outcome.RETRY
                    else None
                )
                error = "" if outcome is Outcome.ACCEPTED else f"HTTP {status}"
                return SendResult(outcome, status, error, retry_after)
        except TimeoutError:
            return SendResult(Outcome.RETRY, None, "timeout")
        except aiohttp.ClientConnectorError as e:
            return SendResult(Outcome.RETRY, None, f"connect failed ({type(e).__name__})")
        except aiohttp.ClientError as e:
            return SendResult(Outcome.RETRY, None, f"transport error ({type(e).__name__})")
