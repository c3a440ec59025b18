"""Real TLS servers and clients for the security tests: aiohttp on a free port, raw HTTP/1.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import trustme
from aiohttp import web
from aiohttp.typedefs import Middleware
from cryptography import x509

from runner.security.hardening import HardenedTCPSite

PEER_CN_HEADER = "X-Peer-CN"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace a file the way certificate tooling should: write aside, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_leaf(leaf: trustme.LeafCert, folder: Path, name: str) -> tuple[Path, Path]:
    """Write a leaf's chain and key as `<name>.pem` and `<name>.key`."""
    folder.mkdir(parents=True, exist_ok=True)
    cert = folder / f"{name}.pem"
    key = folder / f"{name}.key"
    write_atomic(cert, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    write_atomic(key, leaf.private_key_pem.bytes())
    return cert, key


def write_ca(ca: trustme.CA, path: Path) -> Path:
    write_atomic(path, ca.cert_pem.bytes())
    return path


def cn_of(der: bytes) -> str:
    name = x509.load_der_x509_certificate(der).subject
    return str(name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def client_ssl(
    ca: trustme.CA | None = None,
    leaf: trustme.LeafCert | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A test client that trusts `ca` (and presents `leaf` when given)."""
    context = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(context)
    if leaf is not None:
        leaf.configure_cert(context)
    if max_version is not None:
        context.maximum_version = max_version
    return context


@dataclass
class Served:
    """An aiohttp app behind TLS; counts the requests that reached a handler."""

    port: int
    handled: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def serve_tls(
    context: ssl.SSLContext | None,
    *,
    middlewares: Sequence[Middleware] = (),
    handshake_timeout_s: float | None = None,
    **runner_kwargs: Any,
) -> AsyncIterator[Served]:
    """Serve `GET /` (answers the client certificate's CN, if any) and `GET /hold`.

    With `handshake_timeout_s`, the site is a `HardenedTCPSite`.
    """
    served = Served(port=0)

    async def index(request: web.Request) -> web.Response:
        served.handled += 1
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return web.Response(text="ok", headers={PEER_CN_HEADER: cn_of(peer) if peer else ""})

    async def hold(request: web.Request) -> web.Response:
        served.handled += 1
        await served.release.wait()
        return web.Response(text="released")

    app = web.Application(middlewares=list(middlewares))
    app.router.add_get("/", index)
    app.router.add_get("/hold", hold)
    runner = web.AppRunner(app, access_log=None, **runner_kwargs)
    await runner.setup()
    site: web.TCPSite
    if handshake_timeout_s is None:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    else:
        site = HardenedTCPSite(
            runner, "127.0.0.1", 0, ssl_context=context, handshake_timeout_s=handshake_timeout_s
        )
    await site.start()
    served.port = int(runner.addresses[0][1])
    try:
        yield served
    finally:
        served.release.set()
        await runner.cleanup()


class Http:
    """One HTTP/1.1 keep-alive connection, TLS or not, spoken by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls, port: int, context: ssl.SSLContext | None, server_hostname: str = "localhost"
    ) -> Http:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=context,
                server_hostname=server_hostname if context else None,
            ),
            10,
        )
        return cls(reader, writer)

    def server_cn(self) -> str:
        ssl_object = self.writer.get_extra_info("ssl_object")
        return cn_of(ssl_object.getpeercert(binary_form=True))

    def version(self) -> str:
        return str(self.writer.get_extra_info("ssl_object").version())

    async def get(self, path: str = "/") -> tuple[int, dict[str, str], bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(
            self.reader.readexactly(int(headers.get("content-length", "0"))), 10
        )
        return status, headers, body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):  # the peer may have gone already
            await self.writer.wait_closed()


async def refused(port: int, context: ssl.SSLContext) -> str:
    """Connect and ask; return where it stopped, "handshake" or "request" (fails if answered).

    Under TLS 1.3 a server that refuses the client's certificate says so after the client's
    side of the handshake is done, so the client sees that refusal on its first read.
    """
    try:
        http = await Http.open(port, context)
    except (ssl.SSLError, OSError):
        return "handshake"
    try:
        status, _, _ = await http.get()
    except (ssl.SSLError, OSError, asyncio.IncompleteReadError):
        return "request"
    finally:
        await http.close()
    raise AssertionError(f"the server answered {status}")


async def fetch(port: int, context: ssl.SSLContext, host: str = "localhost") -> tuple[int, str]:
    """GET / the way the forwarder does: an aiohttp session over a connector with `context`."""
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"https://{host}:{port}/", timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        return resp.status, resp.headers.get(PEER_CN_HEADER, "")
