"""Listener hardening: slow-loris timeouts, request-head limits, per-source caps, admin binds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import trustme

from runner.errors import ConfigError
from runner.security.hardening import (
    app_runner_kwargs,
    check_admin_bind,
    exposure_warnings,
    source_limit_middleware,
)
from runner.security.settings import ListenerLimits, TlsSettings
from runner.security.tls import server_context
from tests.security.support import Http, client_ssl, serve_tls, write_leaf
from tests.support import until

STRONG_TOKEN = "a" * 32


async def closed_by_server(reader: asyncio.StreamReader, deadline_s: float) -> float:
    """Read until the server closes the connection; return how long that took."""
    start = time.monotonic()
    await asyncio.wait_for(reader.read(), deadline_s)
    return time.monotonic() - start


async def test_slow_loris_header_cut_off() -> None:
    """A client trickling its request head is disconnected after header_timeout_s."""
    limits = ListenerLimits(header_timeout_s=0.5)
    async with serve_tls(None, **app_runner_kwargs(limits)) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n")

        async def trickle() -> None:
            for i in range(1000):  # the attacker: one header byte every 50 ms, forever
                writer.write(b"X-a: b\r\n"[i % 8 : i % 8 + 1])
                await asyncio.sleep(0.05)  # the slow-loris pace is the behaviour under test

        attacker = asyncio.create_task(trickle())
        try:
            took = await closed_by_server(reader, deadline_s=10)
        finally:
            attacker.cancel()
            writer.close()
        assert 0.4 < took < 5
        assert served.handled == 0


async def test_silent_connection_cut_off() -> None:
    """A connection that never sends a request is closed after header_timeout_s."""
    async with serve_tls(None, **app_runner_kwargs(ListenerLimits(header_timeout_s=0.3))) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        assert await closed_by_server(reader, deadline_s=10) < 5
        writer.close()


async def test_long_request_not_cut_by_header_timeout() -> None:
    """A request being handled (like a WebSocket session) outlives header_timeout_s."""
    async with serve_tls(None, **app_runner_kwargs(ListenerLimits(header_timeout_s=0.2))) as served:
        http = await Http.open(served.port, None)
        http.writer.write(b"GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await until(lambda: served.handled == 1, what="the request to reach its handler")
        with pytest.raises(TimeoutError):  # nothing, not even a close, for 5x the timeout
            await asyncio.wait_for(http.reader.read(1), 1.0)
        served.release.set()
        head = await asyncio.wait_for(http.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        await http.close()


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(40))
        + b"\r\n",
    ],
    ids=["request-line", "header-field", "header-count"],
)
async def test_request_head_limits(request_head: bytes) -> None:
    """Request lines, header fields and header counts over the limits are refused with 4xx."""
    limits = ListenerLimits(max_line_size=1024, max_field_size=1024, max_headers=16)
    async with serve_tls(None, **app_runner_kwargs(limits)) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(request_head)
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status_line.split()[1] in (b"400", b"414", b"431")
        assert served.handled == 0


async def test_tls_handshake_timeout(ca: trustme.CA, tmp_path: Path) -> None:
    """A client that opens TCP but never sends its ClientHello is cut after the timeout."""
    cert, key = write_leaf(ca.issue_cert("localhost"), tmp_path, "server")
    context = server_context(TlsSettings(cert_file=cert, key_file=key))
    async with serve_tls(context, handshake_timeout_s=0.3) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        assert await closed_by_server(reader, deadline_s=10) < 5
        writer.close()
        http = await Http.open(served.port, client_ssl(ca))  # a prompt client is served
        assert (await http.get())[0] == 200
        await http.close()


async def test_connections_per_source_capped() -> None:
    """Beyond max_connections_per_source requests in flight, a source gets 429 until one ends."""
    middleware = source_limit_middleware(ListenerLimits(max_connections_per_source=2))
    async with serve_tls(None, middlewares=[middleware]) as served:
        holders = [await Http.open(served.port, None) for _ in range(2)]
        for http in holders:
            http.writer.write(b"GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await until(lambda: served.handled == 2, what="two requests in flight")
        extra = await Http.open(served.port, None)
        status, headers, _ = await extra.get()
        assert status == 429
        assert headers["retry-after"] == "1"
        served.release.set()
        for http in holders:
            assert (await asyncio.wait_for(http.reader.readuntil(b"\r\n\r\n"), 10)).startswith(
                b"HTTP/1.1 200"
            )
            await http.close()
        assert (await extra.get())[0] == 200
        await extra.close()


def test_admin_bind_on_loopback_needs_nothing() -> None:
    """The admin listener on loopback is allowed without TLS."""
    for listen in ("127.0.0.1:9090", "[::1]:9090", "localhost:9090", "127.0.0.2:1"):
        check_admin_bind(listen, TlsSettings(), "")


def test_admin_bind_off_loopback_needs_tls_and_token(tmp_path: Path) -> None:
    """Off loopback the admin listener needs TLS and a token of at least 24 characters."""
    tls = TlsSettings(cert_file=tmp_path / "c.pem", key_file=tmp_path / "k.pem")
    with pytest.raises(ConfigError, match=r"\[admin.tls\].*at least 24"):
        check_admin_bind("0.0.0.0:9090", TlsSettings(), "")
    with pytest.raises(ConfigError, match="at least 24"):
        check_admin_bind("10.0.0.5:9090", tls, "short-token")
    with pytest.raises(ConfigError, match=r"\[admin.tls\]"):
        check_admin_bind("admin.internal:9090", TlsSettings(), STRONG_TOKEN)
    check_admin_bind("0.0.0.0:9090", tls, STRONG_TOKEN)


def test_exposure_warnings(tmp_path: Path) -> None:
    """Plain TCP off loopback and TLS 1.2 on the ingest listener are warned about."""
    assert exposure_warnings("127.0.0.1:8080", TlsSettings()) == []
    assert "without TLS" in exposure_warnings("0.0.0.0:8080", TlsSettings())[0]
    tls12 = TlsSettings(cert_file=tmp_path / "c", min_version="1.2")
    assert exposure_warnings("0.0.0.0:8080", tls12) == [
        "ingest accepts TLS 1.2 (min_version = '1.2')"
    ]
