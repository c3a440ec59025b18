"""Outbound TLS (cloud, control plane, S3): the peer's chain and host name are always checked."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme
from pydantic import ValidationError

from runner.security.settings import OutboundTlsSettings, TlsSettings
from runner.security.tls import ReloadingTls, client_context, server_context
from tests.security.support import fetch, serve_tls, write_ca, write_leaf
from tests.support import until


def cloud_tls(ca: trustme.CA, tmp_path: Path, *hosts: str) -> ssl.SSLContext:
    cert, key = write_leaf(ca.issue_cert(*hosts, common_name="cloud"), tmp_path / "srv", "cloud")
    return server_context(TlsSettings(cert_file=cert, key_file=key))


async def test_trusted_cloud_is_reached(ca: trustme.CA, tmp_path: Path) -> None:
    """A cloud certificate from the pinned CA, for the host dialled, is accepted."""
    settings = OutboundTlsSettings(ca_file=write_ca(ca, tmp_path / "ca.pem"))
    async with serve_tls(cloud_tls(ca, tmp_path, "localhost")) as served:
        assert (await fetch(served.port, client_context(settings)))[0] == 200


async def test_cloud_with_cert_from_wrong_ca_refused(
    ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path
) -> None:
    """A cloud presenting a certificate from a CA outside ca_file is refused."""
    settings = OutboundTlsSettings(ca_file=write_ca(ca, tmp_path / "ca.pem"))
    async with serve_tls(cloud_tls(other_ca, tmp_path, "localhost")) as served:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as caught:
            await fetch(served.port, client_context(settings))
        assert "certificate verify failed" in str(caught.value)
        assert served.handled == 0


async def test_cloud_with_cert_for_wrong_host_refused(ca: trustme.CA, tmp_path: Path) -> None:
    """A certificate from the right CA but for another host name is refused."""
    settings = OutboundTlsSettings(ca_file=write_ca(ca, tmp_path / "ca.pem"))
    async with serve_tls(cloud_tls(ca, tmp_path, "cloud.other.example")) as served:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as caught:
            await fetch(served.port, client_context(settings))
        assert "Hostname mismatch" in str(caught.value) or "hostname" in str(caught.value)
        assert served.handled == 0


def test_ca_file_pins_trust(ca: trustme.CA, tmp_path: Path) -> None:
    """With ca_file set, that bundle is the only trust: the system store is not loaded."""
    context = client_context(OutboundTlsSettings(ca_file=write_ca(ca, tmp_path / "ca.pem")))
    assert len(context.get_ca_certs()) == 1
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_no_setting_disables_verification() -> None:
    """Settings that would turn verification off do not exist: they are configuration errors."""
    for key in ("verify", "insecure", "check_hostname", "verify_mode"):
        with pytest.raises(ValidationError, match="Extra inputs"):
            OutboundTlsSettings.model_validate({key: False})


async def test_client_certificate_presented_and_rotated(ca: trustme.CA, tmp_path: Path) -> None:
    """The Runner's client certificate reaches an mTLS cloud, and a renewed one is used next."""
    server_cert, server_key = write_leaf(ca.issue_cert("localhost"), tmp_path / "srv", "cloud")
    mtls = TlsSettings(
        cert_file=server_cert,
        key_file=server_key,
        client_ca_file=write_ca(ca, tmp_path / "clients.pem"),
    )
    cert, key = write_leaf(ca.issue_cert("runner-1", common_name="runner-1"), tmp_path, "me")
    settings = OutboundTlsSettings(
        ca_file=write_ca(ca, tmp_path / "ca.pem"),
        client_cert=cert,
        client_key=key,
        reload_interval_s=0.05,
    )
    tls = ReloadingTls("cloud", settings)
    await tls.start()
    try:
        async with serve_tls(server_context(mtls)) as served:
            assert await fetch(served.port, tls.context) == (200, "runner-1")
            write_leaf(ca.issue_cert("runner-1", common_name="runner-1-renewed"), tmp_path, "me")
            await until(lambda: tls.reloads == 1, what="the renewed client certificate")
            assert await fetch(served.port, tls.context) == (200, "runner-1-renewed")
            assert tls.status()["mutual"] is True
    finally:
        await tls.stop()


async def test_unpinned_client_without_client_cert_is_not_watched() -> None:
    """Without files there is nothing to reload: the system store is used and no task runs."""
    tls = ReloadingTls("s3", OutboundTlsSettings())
    await tls.start()
    try:
        assert tls.context.check_hostname is True
        assert tls.status()["certificate"] is None
    finally:
        await tls.stop()
