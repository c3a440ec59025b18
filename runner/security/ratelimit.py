"""Brute-force protection: a source with too many failed credentials is refused for a while.

`check(source)` runs before a credential is looked at; `failed(source)` after one is refused.
After `max_failures` failures within `window_s` the source is blocked for `block_s`: its
attempts are refused at once (close 4429, HTTP 429 with `Retry-After`) without testing the
credential, so guessing keys or tokens costs the attacker the whole block per few guesses.
Attempts while blocked do not extend the block, so a misconfigured SDK retrying in a loop
gets back in once its key is fixed.

Sources are IP addresses; IPv6 addresses are grouped by prefix (a /64 by default) because
one host controls a whole /64. Memory is bounded: at most `max_sources` sources are held,
the least recently seen forgotten first.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from runner.errors import ProtocolError
from runner.security.settings import AuthThrottleSettings

CLOSE_TOO_MANY = 4429  # runner.ingest.messages.CLOSE_TOO_MANY


class AuthThrottled(ProtocolError):
    """The source failed too often; close 4429 / HTTP 429, retry after `retry_after_s`."""

    retriable = True

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(CLOSE_TOO_MANY, "too many failed authentication attempts")
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        """Whole seconds for an HTTP `Retry-After` header."""
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass(slots=True)
class _Entry:
    window_start: float
    failures: int = 0
    blocked_until: float = 0.0


def source_key(address: str | None, ipv6_prefix: int = 64) -> str:
    """The key a source is counted under: the IPv4 address, or the IPv6 prefix."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return address  # a unix socket path or a name: counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


class FailedAuthLimiter:
    """Counts failed authentications per source and blocks sources that fail too often."""

    def __init__(
        self, settings: AuthThrottleSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.refused = 0
        """Attempts refused early because their source was blocked."""
        self.blocks = 0
        """Times a source became blocked."""

    def check(self, address: str | None) -> None:
        """Raise AuthThrottled when the source is blocked; call before checking a credential."""
        key = source_key(address, self._settings.ipv6_prefix)
        entry = self._entries.get(key)
        if entry is None or not entry.blocked_until:
            return
        remaining = entry.blocked_until - self._clock()
        if remaining > 0:
            self.refused += 1
            raise AuthThrottled(remaining)
        del self._entries[key]  # the block is over: start afresh

    def failed(self, address: str | None) -> bool:
        """Count a refused credential; True when this failure blocked the source."""
        s = self._settings
        key = source_key(address, s.ipv6_prefix)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None or (not entry.blocked_until and now - entry.window_start > s.window_s):
            entry = _Entry(window_start=now)
            self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > s.max_sources:
            self._entries.popitem(last=False)
        if entry.blocked_until:
            return False
        entry.failures += 1
        if entry.failures < s.max_failures:
            return False
        entry.blocked_until = now + s.block_s
        self.blocks += 1
        return True

    def blocked(self) -> int:
        """Sources blocked right now."""
        now = self._clock()
        return sum(1 for e in self._entries.values() if e.blocked_until > now)

    def tracked(self) -> int:
        return len(self._entries)

    def status(self) -> dict[str, int]:
        return {
            "blocked_sources": self.blocked(),
            "tracked_sources": self.tracked(),
            "refused": self.refused,
            "blocks": self.blocks,
        }

    def collect(self) -> Iterator[Metric]:
        """Metric families read at scrape time (`Metrics.add_collector(limiter.collect)`)."""
        blocked = GaugeMetricFamily(
            "traceflow_auth_blocked_sources", "Sources refused for failing authentication."
        )
        blocked.add_metric([], self.blocked())
        yield blocked
        refused = CounterMetricFamily(
            "traceflow_auth_throttled",
            "Authentication attempts refused early because their source was blocked.",
        )
        refused.add_metric([], self.refused)
        yield refused
