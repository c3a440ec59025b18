"""Real parts for policy tests: Ed25519 signers, a control plane over aiohttp, attack tokens."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ssl
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runner.policy.jws import sign
from runner.policy.keys import b64url, public_text

CP_TOKEN_ENV = "TEST_CP_TOKEN"
CP_TOKEN = "cp-bearer-secret-7f3a"
SECRET_VALUE = "ALLOW-ME-4111-SECRET"
"""A value inside a policy that must never appear in logs or audit records."""


def iso(delta_s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat()


def payload(version: int, **fields: Any) -> dict[str, Any]:
    """A PROTOCOL §3 policy payload; `tenants` defaults to one tenant with detection on."""
    body: dict[str, Any] = {
        "version": version,
        "issued_at": iso(0),
        "expires_at": None,
        "tenants": {
            "acme-bank": {
                "sampling": {"session_rate": 1.0},
                "pii": {"text": "detect", "allow_values": [SECRET_VALUE]},
                "rate_limit": {"events_per_second": 100.0, "burst": 100 + version},
            }
        },
    }
    body.update(fields)
    return body


class Signer:
    """A control plane's signing key."""

    def __init__(self, kid: str = "cp-test-1") -> None:
        self.kid = kid
        self.key = Ed25519PrivateKey.generate()

    @property
    def public(self) -> str:
        return public_text(self.key.public_key())

    @property
    def pins(self) -> dict[str, str]:
        return {self.kid: self.public}

    def token(self, version: int, **fields: Any) -> str:
        return self.sign(orjson.dumps(payload(version, **fields)))

    def sign(self, data: bytes, kid: str | None = None) -> str:
        return sign(data, self.key, kid or self.kid)


# -- attacks (hand-made on purpose: these are what an attacker would send) --------------------


def _segment(data: dict[str, Any]) -> str:
    return b64url(orjson.dumps(data))


def tampered(token: str, **changes: Any) -> str:
    """The token with its payload edited and the original signature kept."""
    header, body, signature = token.split(".")
    data = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data.update(changes)
    return f"{header}.{_segment(data)}.{signature}"


def alg_none(version: int, kid: str) -> str:
    return f"{_segment({'alg': 'none', 'kid': kid})}.{_segment(payload(version))}."


def hs256_with_public_key(version: int, kid: str, secret: bytes) -> str:
    """HS256 keyed with the verifier's own public key: the classic key-confusion attack."""
    signing_input = (
        f"{_segment({'alg': 'HS256', 'kid': kid, 'typ': 'JWT'})}.{_segment(payload(version))}"
    )
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


class ControlPlane:
    """A real HTTP control plane serving one Runner policy, with ETags and fault modes."""

    def __init__(self) -> None:
        self.body: bytes = b""
        self.etag: str | None = None
        self.status: int | None = None
        self.hits = 0
        self.requests: list[dict[str, str]] = []
        self.hang = False
        """When set, requests get no answer until the server stops (a black hole)."""
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._tls: ssl.SSLContext | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def publish(self, body: str | bytes, etag: str | None = None) -> None:
        """Serve `body` from now on, with `etag` (default: a hash of the body)."""
        self.body = body.encode() if isinstance(body, str) else body
        self.etag = etag or f'"{hashlib.sha256(self.body).hexdigest()[:16]}"'
        self.status = None

    def fail_with(self, status: int) -> None:
        self.status = status

    async def _policy(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.requests.append({**request.headers, "path": request.path})
        if self.hang:
            await self._release.wait()
        if request.match_info["runner_id"] != "runner-test":
            return web.Response(status=404)
        if self.status is not None:
            return web.Response(status=self.status, text="control plane error")
        if self.etag is not None and request.headers.get("If-None-Match") == self.etag:
            return web.Response(status=304, headers={"ETag": self.etag})
        headers = {"ETag": self.etag} if self.etag else {}
        return web.Response(body=self.body, headers=headers, content_type="application/jose")

    async def start(self, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_get("/v1/runners/{runner_id}/policy", self._policy)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        self._tls = tls
        self._release.clear()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port, ssl_context=tls)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Go down: the port refuses connections until `start()` again."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Audit:
    """An audit hook that keeps what it was given."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        self.records.append((event, fields))

    def events(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.records if name == event]
