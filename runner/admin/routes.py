"""The admin listener (PROTOCOL §4): `/healthz`, `/readyz`, `/admin/status`, `/admin/drain`.

Loopback by default. `/healthz` and `/readyz` are open (probes carry no
token); `/admin/*` needs `Authorization: Bearer <admin token>`, compared in
constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from runner.ingest.auth import bearer
from runner.telemetry.audit import AuditLog


class Operable(Protocol):
    """What the admin routes need of the Runner."""

    async def readiness(self) -> dict[str, str]: ...

    def status(self) -> dict[str, Any]: ...

    def request_drain(self, deadline_s: float) -> None: ...

    def metrics_text(self) -> bytes: ...


OPERABLE_KEY: web.AppKey[Operable] = web.AppKey("operable")
TOKEN_KEY: web.AppKey[str] = web.AppKey("admin_token")
AUDIT_KEY: web.AppKey[AuditLog] = web.AppKey("audit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _authorized(request: web.Request) -> bool:
    """Constant-time check of the admin token; every attempt is audited (path, result)."""
    expected = request.app[TOKEN_KEY]
    given = bearer(request.headers.get("Authorization")) or ""
    ok = bool(expected) and hmac.compare_digest(given.encode(), expected.encode())
    if ok:
        request.app[AUDIT_KEY].record("admin.access", path=request.path, source=request.remote)
    else:
        request.app[AUDIT_KEY].auth_failure(request.remote or "", "admin", "bad admin token")
    return ok


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when every check passes; the body names the ones that failed."""
    failed = await request.app[OPERABLE_KEY].readiness()
    if failed:
        return _json({"status": "not ready", "failed": failed}, status=503)
    return _json({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of every Runner metric."""
    body = request.app[OPERABLE_KEY].metrics_text()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _json({"error": "unauthorized"}, status=401)
    return _json(request.app[OPERABLE_KEY].status())


async def drain(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _json({"error": "unauthorized"}, status=401)
    try:
        deadline = float(request.query.get("deadline_s", "60"))
    except ValueError:
        return _json({"error": "deadline_s must be a number of seconds"}, status=400)
    request.app[AUDIT_KEY].record("drain.requested", deadline_s=deadline, source=request.remote)
    request.app[OPERABLE_KEY].request_drain(deadline)
    return _json({"status": "draining", "deadline_s": deadline}, status=202)


def admin_app(operable: Operable, token: str, audit: AuditLog) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[OPERABLE_KEY] = operable
    app[TOKEN_KEY] = token
    app[AUDIT_KEY] = audit
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/status", status)
    app.router.add_post("/admin/drain", drain)
    return app
