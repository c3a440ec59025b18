"""The admin listener (PROTOCOL §4): `/healthz`, `/readyz`, `/admin/status`, `/admin/drain`,
and `/admin/policy` (the policy in force, for `runner policy show`).

Loopback by default. `/healthz` and `/readyz` are open (probes carry no
token); `/admin/*` needs `Authorization: Bearer <admin token>`, compared in
constant time.

`POST /admin/drain?[deadline_s=60][&spill=true][&spill_deadline_s=60][&wait=true]`
(without `deadline_s`, `[forward] drain_deadline_s`) answers `202` at once, or with
`wait=true` a `200` stream of NDJSON lines: a `{"progress": …}` line every second while
the drain runs, then one `{"result": …}` line with what was forwarded, spilled and left
(`runner drain` prints them). The Runner stops after the drain either way.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from runner.ingest.auth import bearer
from runner.telemetry.audit import AuditLog


class Operable(Protocol):
    """What the admin routes need of the Runner."""

    @property
    def default_drain_deadline_s(self) -> float: ...

    async def readiness(self) -> dict[str, str]: ...

    def status(self) -> dict[str, Any]: ...

    def policy_report(self, tenant: str | None) -> dict[str, Any]: ...

    def request_drain(
        self, deadline_s: float, spill: bool | None, spill_deadline_s: float | None
    ) -> bool: ...

    async def drain_progress(self) -> dict[str, Any]: ...

    async def wait_drained(self, timeout_s: float) -> bool: ...

    def metrics_text(self) -> bytes: ...


OPERABLE_KEY: web.AppKey[Operable] = web.AppKey("operable")
TOKEN_KEY: web.AppKey[str] = web.AppKey("admin_token")
AUDIT_KEY: web.AppKey[AuditLog] = web.AppKey("audit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROGRESS_EVERY_S = 1.0
MAX_DEADLINE_S = 86_400.0
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


class BadQuery(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


def _seconds(query: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadQuery(f"{name} must be a number of seconds") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_DEADLINE_S:
        raise BadQuery(f"{name} must be between 0 and {MAX_DEADLINE_S:.0f} seconds")
    return value


def _flag(query: Mapping[str, str], name: str) -> bool | None:
    raw = query.get(name)
    if raw is None:
        return None
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise BadQuery(f"{name} must be true or false")


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


async def policy(request: web.Request) -> web.Response:
    """The policy in force, whole or as `?tenant=` gets it (`runner policy show`)."""
    if not _authorized(request):
        return _json({"error": "unauthorized"}, status=401)
    tenant = request.query.get("tenant")
    if tenant is not None and not tenant.strip():
        return _json({"error": "tenant must not be empty"}, status=400)
    return _json(request.app[OPERABLE_KEY].policy_report(tenant))


async def drain(request: web.Request) -> web.StreamResponse:
    """Start a drain; with `wait=true`, stream its progress and result as NDJSON."""
    if not _authorized(request):
        return _json({"error": "unauthorized"}, status=401)
    try:
        deadline = _seconds(request.query, "deadline_s", None)
        spill = _flag(request.query, "spill")
        spill_deadline = _seconds(request.query, "spill_deadline_s", None)
        wait = bool(_flag(request.query, "wait"))
    except BadQuery as e:
        return _json({"error": str(e)}, status=400)
    operable = request.app[OPERABLE_KEY]
    if deadline is None:
        deadline = operable.default_drain_deadline_s
    if spill_deadline == 0:
        return _json({"error": "spill_deadline_s must be more than 0 seconds"}, status=400)
    request.app[AUDIT_KEY].record(
        "drain.requested", deadline_s=deadline, spill=spill, source=request.remote
    )
    started = operable.request_drain(deadline, spill, spill_deadline)
    if not wait:
        body = {"status": "draining", "deadline_s": deadline, "already_draining": not started}
        return _json(body, status=202)
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    try:
        while not await operable.wait_drained(PROGRESS_EVERY_S):
            await response.write(
                orjson.dumps({"progress": await operable.drain_progress()}) + b"\n"
            )
        await response.write(orjson.dumps({"result": await operable.drain_progress()}) + b"\n")
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away; the drain goes on regardless
    return response


def admin_app(operable: Operable, token: str, audit: AuditLog) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[OPERABLE_KEY] = operable
    app[TOKEN_KEY] = token
    app[AUDIT_KEY] = audit
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/status", status)
    app.router.add_get("/admin/policy", policy)
    app.router.add_post("/admin/drain", drain)
    return app
