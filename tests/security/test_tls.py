"""Listener TLS: versions, ciphers, mutual TLS, CRLs, and rotation without dropping sessions."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from runner.security.settings import TlsSettings
from runner.security.tls import ReloadingTls, TlsConfigError, server_context
from runner.telemetry.metrics import Metrics
from tests.security.support import (
    PEER_CN_HEADER,
    Http,
    client_ssl,
    refused,
    serve_tls,
    write_atomic,
    write_ca,
    write_leaf,
)
from tests.support import until

FAST = 0.05  # reload poll interval for tests


@asynccontextmanager
async def reloading(settings: TlsSettings, name: str = "ingest") -> AsyncIterator[ReloadingTls]:
    tls = ReloadingTls(name, settings)
    await tls.start()
    try:
        yield tls
    finally:
        await tls.stop()


def server_files(ca: trustme.CA, folder: Path, cn: str = "server-one") -> tuple[Path, Path]:
    return write_leaf(ca.issue_cert("localhost", "127.0.0.1", common_name=cn), folder, "server")


def crl(ca: trustme.CA, revoked: list[x509.Certificate], age: timedelta) -> bytes:
    """A CRL of `ca`, issued `age` ago, revoking `revoked`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - age)
        .next_update(now + timedelta(days=1))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - age)
            .build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


async def test_tls13_by_default(ca: trustme.CA, tmp_path: Path) -> None:
    """A listener with only a certificate configured speaks TLS 1.3."""
    cert, key = server_files(ca, tmp_path)
    async with serve_tls(server_context(TlsSettings(cert_file=cert, key_file=key))) as served:
        http = await Http.open(served.port, client_ssl(ca))
        assert (await http.get())[0] == 200
        assert http.version() == "TLSv1.3"
        await http.close()


async def test_tls12_client_refused_by_default(ca: trustme.CA, tmp_path: Path) -> None:
    """A client that cannot speak TLS 1.3 fails the handshake unless 1.2 is allowed."""
    cert, key = server_files(ca, tmp_path)
    context = server_context(TlsSettings(cert_file=cert, key_file=key))
    async with serve_tls(context) as served:
        tls12 = client_ssl(ca, max_version=ssl.TLSVersion.TLSv1_2)
        assert await refused(served.port, tls12) == "handshake"
        assert served.handled == 0


async def test_tls12_when_allowed_only_with_aead(ca: trustme.CA, tmp_path: Path) -> None:
    """min_version 1.2 admits 1.2 clients with ECDHE+AEAD suites and refuses CBC-only ones."""
    cert, key = server_files(ca, tmp_path)
    context = server_context(TlsSettings(cert_file=cert, key_file=key, min_version="1.2"))
    async with serve_tls(context) as served:
        http = await Http.open(served.port, client_ssl(ca, max_version=ssl.TLSVersion.TLSv1_2))
        assert (await http.get())[0] == 200
        assert http.version() == "TLSv1.2"
        cipher = http.writer.get_extra_info("cipher")[0]
        assert cipher.startswith("ECDHE-")
        assert "GCM" in cipher or "CHACHA20" in cipher
        await http.close()
        cbc = client_ssl(ca, max_version=ssl.TLSVersion.TLSv1_2)
        cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
        assert await refused(served.port, cbc) == "handshake"


async def test_mtls_refuses_client_without_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    """With a client CA configured, a client presenting no certificate is never served."""
    cert, key = server_files(ca, tmp_path)
    settings = TlsSettings(
        cert_file=cert, key_file=key, client_ca_file=write_ca(ca, tmp_path / "c")
    )
    async with serve_tls(server_context(settings)) as served:
        await refused(served.port, client_ssl(ca))
        assert served.handled == 0


async def test_mtls_refuses_client_from_other_ca(
    ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path
) -> None:
    """A client certificate issued by a CA outside client_ca_file is refused in the handshake."""
    cert, key = server_files(ca, tmp_path)
    settings = TlsSettings(
        cert_file=cert, key_file=key, client_ca_file=write_ca(ca, tmp_path / "c")
    )
    stranger = other_ca.issue_cert("sdk@elsewhere", common_name="stranger")
    async with serve_tls(server_context(settings)) as served:
        await refused(served.port, client_ssl(ca, leaf=stranger))
        assert served.handled == 0


async def test_mtls_serves_client_from_trusted_ca(ca: trustme.CA, tmp_path: Path) -> None:
    """A client certificate from the configured CA completes the handshake and is visible."""
    cert, key = server_files(ca, tmp_path)
    settings = TlsSettings(
        cert_file=cert, key_file=key, client_ca_file=write_ca(ca, tmp_path / "c")
    )
    sdk = ca.issue_cert("sdk@bank", common_name="sdk-branch-7")
    async with serve_tls(server_context(settings)) as served:
        http = await Http.open(served.port, client_ssl(ca, leaf=sdk))
        status, headers, _ = await http.get()
        assert status == 200
        assert headers[PEER_CN_HEADER.lower()] == "sdk-branch-7"
        await http.close()


async def test_rotation_keeps_live_session_and_serves_new_cert(
    ca: trustme.CA, tmp_path: Path
) -> None:
    """A renewed server certificate is used for new handshakes; an open session keeps working."""
    cert, key = server_files(ca, tmp_path, cn="server-one")
    settings = TlsSettings(cert_file=cert, key_file=key, reload_interval_s=FAST)
    async with reloading(settings) as tls, serve_tls(tls.context) as served:
        live = await Http.open(served.port, client_ssl(ca))
        assert (await live.get())[0] == 200
        assert live.server_cn() == "server-one"

        server_files(ca, tmp_path, cn="server-two")
        await until(lambda: tls.reloads == 1, what="the renewed certificate to be loaded")

        fresh = await Http.open(served.port, client_ssl(ca))
        assert fresh.server_cn() == "server-two"
        assert (await fresh.get())[0] == 200
        assert (await live.get())[0] == 200  # the old session was not dropped ...
        assert live.server_cn() == "server-one"  # ... and still runs on its own handshake
        assert tls.status()["certificate"]["subject"].startswith("CN=server-two,")
        await fresh.close()
        await live.close()


async def test_half_written_rotation_keeps_current_cert(ca: trustme.CA, tmp_path: Path) -> None:
    """A new certificate whose key has not arrived yet is refused; the old one stays served."""
    cert, key = server_files(ca, tmp_path, cn="server-one")
    settings = TlsSettings(cert_file=cert, key_file=key, reload_interval_s=FAST)
    renewed = ca.issue_cert("localhost", "127.0.0.1", common_name="server-two")
    async with reloading(settings) as tls, serve_tls(tls.context) as served:
        write_atomic(cert, b"".join(b.bytes() for b in renewed.cert_chain_pems))
        await until(lambda: tls.reload_failures >= 1, what="the mismatched pair to be refused")
        assert "do not load" in (tls.status()["last_error"] or "")
        http = await Http.open(served.port, client_ssl(ca))
        assert http.server_cn() == "server-one"
        await http.close()

        write_atomic(key, renewed.private_key_pem.bytes())
        await until(lambda: tls.reloads == 1, what="the completed pair to be loaded")
        http = await Http.open(served.port, client_ssl(ca))
        assert http.server_cn() == "server-two"
        assert tls.status()["last_error"] is None
        await http.close()


async def test_client_ca_rotation(ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path) -> None:
    """A CA added to client_ca_file is trusted without restart; a removed one is reported."""
    cert, key = server_files(ca, tmp_path)
    bundle = write_ca(ca, tmp_path / "clients.pem")
    settings = TlsSettings(
        cert_file=cert, key_file=key, client_ca_file=bundle, reload_interval_s=FAST
    )
    newcomer = other_ca.issue_cert("sdk@new", common_name="new-branch")
    async with reloading(settings) as tls, serve_tls(tls.context) as served:
        await refused(served.port, client_ssl(ca, leaf=newcomer))

        write_atomic(bundle, ca.cert_pem.bytes() + other_ca.cert_pem.bytes())
        await until(lambda: tls.reloads == 1, what="the extended CA bundle to be loaded")
        http = await Http.open(served.port, client_ssl(ca, leaf=newcomer))
        assert (await http.get())[0] == 200
        await http.close()
        assert tls.status()["ca_removed_pending_restart"] is False

        write_atomic(bundle, other_ca.cert_pem.bytes())
        await until(lambda: tls.reloads == 2, what="the shrunk CA bundle to be seen")
        assert tls.status()["ca_removed_pending_restart"] is True


async def test_revoked_client_certificate_refused_after_crl_update(
    ca: trustme.CA, tmp_path: Path
) -> None:
    """A client certificate revoked in a renewed CRL is refused on its next handshake."""
    cert, key = server_files(ca, tmp_path)
    sdk = ca.issue_cert("sdk@bank", common_name="sdk-lost-laptop")
    sdk_cert = x509.load_pem_x509_certificate(sdk.cert_chain_pems[0].bytes())
    crl_file = tmp_path / "clients.crl"
    write_atomic(crl_file, crl(ca, [], age=timedelta(hours=1)))
    settings = TlsSettings(
        cert_file=cert,
        key_file=key,
        client_ca_file=write_ca(ca, tmp_path / "clients.pem"),
        client_crl_file=crl_file,
        reload_interval_s=FAST,
    )
    async with reloading(settings) as tls, serve_tls(tls.context) as served:
        live = await Http.open(served.port, client_ssl(ca, leaf=sdk))
        assert (await live.get())[0] == 200

        write_atomic(crl_file, crl(ca, [sdk_cert], age=timedelta(minutes=1)))
        await until(lambda: tls.reloads == 1, what="the new CRL to be loaded")
        before = served.handled
        await refused(served.port, client_ssl(ca, leaf=sdk))
        assert served.handled == before
        await live.close()


async def test_expiry_in_status_and_metrics(ca: trustme.CA, tmp_path: Path) -> None:
    """A certificate expiring within expiry_warning_days is flagged in status and a metric."""
    soon = ca.issue_cert(
        "localhost", common_name="short-lived", not_after=datetime.now(UTC) + timedelta(days=5)
    )
    cert, key = write_leaf(soon, tmp_path, "server")
    settings = TlsSettings(cert_file=cert, key_file=key, expiry_warning_days=30)
    async with reloading(settings) as tls:
        status = tls.status()
        assert status["expiring"] is True
        assert 4.5 < status["certificate"]["days_left"] <= 5
        metrics = Metrics()
        metrics.add_collector(tls.collect)
        text = metrics.render().decode()
        assert 'traceflow_tls_certificate_expiring{listener="ingest"} 1.0' in text
        assert 'traceflow_tls_certificate_expiry_timestamp_seconds{certificate="leaf"' in text
        assert 'traceflow_tls_reloads_total{listener="ingest",result="ok"} 0.0' in text


async def test_fresh_certificate_not_flagged(ca: trustme.CA, tmp_path: Path) -> None:
    """A certificate with more than expiry_warning_days left is not flagged."""
    cert, key = server_files(ca, tmp_path)  # trustme certificates last about ten years
    async with reloading(TlsSettings(cert_file=cert, key_file=key)) as tls:
        assert tls.status()["expiring"] is False


async def test_unreadable_files_stop_start_up(tmp_path: Path) -> None:
    """A missing certificate file is an error at start, naming the file."""
    settings = TlsSettings(cert_file=tmp_path / "nope.pem", key_file=tmp_path / "nope.key")
    with pytest.raises(TlsConfigError, match=r"nope\.pem"):
        await ReloadingTls("ingest", settings).start()


def test_incomplete_settings_refused(tmp_path: Path) -> None:
    """A key or client CA without a certificate, or an unknown key, is a configuration error."""
    with pytest.raises(ValidationError, match="need cert_file"):
        TlsSettings(key_file=tmp_path / "k")
    with pytest.raises(ValidationError, match="needs client_ca_file"):
        TlsSettings(cert_file=tmp_path / "c", client_crl_file=tmp_path / "crl")
    with pytest.raises(ValidationError, match="Extra inputs"):
        TlsSettings.model_validate({"cert_file": "c", "verify_client": False})
    with pytest.raises(ValidationError):
        TlsSettings(cert_file=tmp_path / "c", min_version="1.1")  # type: ignore[arg-type]
