"""The HTTP side of policy sync: one conditional GET of PROTOCOL §3, nothing more.

`ControlPlaneClient.fetch(etag)` asks `GET {endpoint}/v1/runners/{runner_id}/policy`
with `If-None-Match` and returns the body and its `ETag` on 200, or None on
304. Everything else (connection refused, timeout, TLS failure, any other
status) is a `SyncFailed`; a body over `max_policy_bytes` is refused
(`too_large`) while it is read, before it is held whole. The client never
judges a policy: `sync.PolicyManager` verifies what it returns.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from runner import __version__
from runner.policy import errors as r
from runner.policy.errors import PolicyRefused, SyncFailed
from runner.policy.settings import ControlPlaneSettings

ACCEPT = "application/jose, application/jws, text/plain;q=0.5"
READ_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Fetched:
    """A 200 answer: the compact JWS and the ETag to send next time."""

    body: bytes
    etag: str | None


def ssl_context(settings: ControlPlaneSettings) -> ssl.SSLContext | None:
    """A TLS context for a private CA and/or mutual TLS (blocking: reads PEM files)."""
    if settings.ca_file is None and settings.client_cert is None:
        return None
    cafile = str(settings.ca_file) if settings.ca_file is not None else None
    context = ssl.create_default_context(cafile=cafile)
    if settings.client_cert is not None:
        key = str(settings.client_key) if settings.client_key is not None else None
        context.load_cert_chain(str(settings.client_cert), key)
    return context


class ControlPlaneClient:
    """Conditional GETs of the Runner's policy; `start()` opens the session, `close()` ends it."""

    def __init__(
        self, settings: ControlPlaneSettings, runner_id: str, environ: Mapping[str, str]
    ) -> None:
        self._settings = settings
        self._url = settings.policy_url(runner_id)
        self._runner_id = runner_id
        self._token = settings.bearer(environ)
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self._url

    async def start(self) -> None:
        try:
            context = await asyncio.to_thread(ssl_context, self._settings)
        except (OSError, ssl.SSLError) as e:
            raise SyncFailed(f"cannot load the control plane's TLS files: {e}") from e
        timeout = aiohttp.ClientTimeout(total=self._settings.request_timeout_s)
        connector = aiohttp.TCPConnector(ssl=context if context is not None else True, limit=2)
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            headers={"User-Agent": f"traceflow-runner/{__version__}"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, etag: str | None) -> Fetched | None:
        """The policy if it changed since `etag` (None on 304); raises SyncFailed/PolicyRefused."""
        if self._session is None:
            raise SyncFailed("the control plane client is not started")
        headers = {"Accept": ACCEPT, "X-TraceFlow-Runner": self._runner_id}
        if etag:
            headers["If-None-Match"] = etag
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with self._session.get(self._url, headers=headers) as resp:
                if resp.status == 304:
                    return None
                if resp.status != 200:
                    raise SyncFailed(f"the control plane answered HTTP {resp.status}")
                body = await self._bounded_body(resp)
                return Fetched(body=body, etag=resp.headers.get("ETag"))
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise SyncFailed(f"cannot reach the control plane ({type(e).__name__}: {e})") from e

    async def _bounded_body(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self._settings.max_policy_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise PolicyRefused(r.TOO_LARGE, f"{resp.content_length} bytes, the limit is {limit}")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(READ_CHUNK):
            body += chunk
            if len(body) > limit:
                raise PolicyRefused(r.TOO_LARGE, f"more than {limit} bytes")
        return bytes(body)
