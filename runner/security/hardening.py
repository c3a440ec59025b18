"""Listener hardening: request-head limits, slow-client timeouts, per-source caps, safe binds.

aiohttp's server takes its limits as keyword arguments of `web.AppRunner` (passed on to each
connection's `RequestHandler`): `max_line_size`, `max_field_size` and `max_headers` bound the
request head (over them: `400`), and `keepalive_timeout` closes a connection that has not
delivered a complete request head in time. aiohttp arms that timer when the connection is
made and re-arms it only after a response, and it closes the connection only while it is
still waiting for a request head, so it is also the slow-loris timeout for the first request
and never cuts a long WebSocket session or a handler at work. A TLS client that stalls in
the handshake is cut by `HardenedTCPSite` after `TlsSettings.handshake_timeout_s` (asyncio's
own default is 60 s, which `web.TCPSite` does not let one change).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from runner.errors import ConfigError
from runner.security.ratelimit import source_key
from runner.security.settings import ListenerLimits, TlsSettings

MIN_EXPOSED_ADMIN_TOKEN = 24

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def app_runner_kwargs(limits: ListenerLimits) -> dict[str, Any]:
    """Keyword arguments for `web.AppRunner(app, **app_runner_kwargs(limits))`."""
    return {
        "keepalive_timeout": limits.header_timeout_s,
        "max_line_size": limits.max_line_size,
        "max_field_size": limits.max_field_size,
        "max_headers": limits.max_headers,
        "lingering_time": limits.lingering_time_s,
    }


class HardenedTCPSite(web.TCPSite):
    """`web.TCPSite` that also bounds the TLS handshake (`ssl_handshake_timeout`).

    It replaces `TCPSite.start` with the same `loop.create_server` call plus that one argument,
    so it reads TCPSite's own fields; `tests/security/test_hardening.py` pins the behaviour
    against the installed aiohttp.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        ssl_context: Any = None,
        handshake_timeout_s: float = 10.0,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog)
        self._handshake_timeout_s = handshake_timeout_s

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        if server is None:
            raise RuntimeError("the AppRunner is not set up")
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._handshake_timeout_s if self._ssl_context else None,
        )
        sockets = self._server.sockets
        self._bound_port = int(sockets[0].getsockname()[1]) if sockets else self._port


def source_limit_middleware(limits: ListenerLimits) -> Middleware:
    """Refuse a source's requests beyond `max_connections_per_source` in flight (`429`).

    A WebSocket session is one request for as long as it is open, so this caps the sessions
    of one address. Sources are grouped as for brute-force protection (IPv6 by /64).
    """
    in_flight: Counter[str] = Counter()
    cap = limits.max_connections_per_source

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if cap <= 0:
            return await handler(request)
        key = source_key(request.remote)
        if in_flight[key] >= cap:
            return web.Response(
                status=429,
                body=orjson.dumps({"error": "too_many_connections_from_source"}),
                content_type="application/json",
                headers={"Retry-After": "1"},
            )
        in_flight[key] += 1
        try:
            return await handler(request)
        finally:
            in_flight[key] -= 1
            if in_flight[key] <= 0:
                del in_flight[key]

    return limit


def is_loopback(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1; a wildcard or any other name is exposed."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_admin_bind(listen: str, tls: TlsSettings, token: str) -> None:
    """Refuse an admin listener off loopback unless it has TLS and a strong bearer token.

    The admin API can drain the Runner and shows its state; off loopback it must not be
    reachable in clear text or with a guessable token.
    """
    host = listen.rpartition(":")[0]
    if is_loopback(host):
        return
    missing = []
    if not tls.enabled:
        missing.append("[admin.tls] with cert_file")
    if len(token) < MIN_EXPOSED_ADMIN_TOKEN:
        missing.append(f"an admin token of at least {MIN_EXPOSED_ADMIN_TOKEN} characters")
    if missing:
        raise ConfigError(
            f"admin.listen: {listen} is not a loopback address; that needs " + " and ".join(missing)
        )


def exposure_warnings(ingest_listen: str, ingest_tls: TlsSettings) -> list[str]:
    """Things worth a warning at start-up that are legitimate in some deployments."""
    warnings = []
    if not is_loopback(ingest_listen.rpartition(":")[0]) and not ingest_tls.enabled:
        warnings.append(
            "ingest listens off loopback without TLS: terminate TLS in front of it "
            "(load balancer or ingress), or set [ingest.tls]"
        )
    if ingest_tls.enabled and ingest_tls.min_version == "1.2":
        warnings.append("ingest accepts TLS 1.2 (min_version = '1.2')")
    return warnings
