"""Policy sync over TLS: a private CA, mutual TLS, and a control plane that never answers."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runner.policy.sync import APPLIED, FAILED
from tests.policy.conftest import MakeManager, settings
from tests.policy.support import ControlPlane, Signer


class Pki:
    """A throwaway CA that issues a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test control plane CA")])
        self.ca = (
            self._builder(name, name, self.ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = self._write("ca.pem", self.ca.public_bytes(serialization.Encoding.PEM))

    def _builder(
        self, subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path

    def issue(self, name: str, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = self._builder(subject, self.ca.subject, key.public_key())
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(self.ca_key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return (
            self._write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            self._write(f"{name}.key", key_pem),
        )

    def server_context(self, require_client: bool) -> ssl.SSLContext:
        cert, key = self.issue("server", server=True)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        if require_client:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(self.ca_file))
        return context


async def test_private_ca_is_trusted_only_when_configured(
    tmp_path: Path, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """An https control plane with a private CA works with ca_file and fails without it."""
    pki = Pki(tmp_path)
    cp = ControlPlane()
    await cp.start(tls=pki.server_context(require_client=False))
    try:
        cp.publish(signer.token(1))
        untrusted = await make_manager(
            settings(cp.url, signer, policies_dir), data_dir=tmp_path / "a"
        )
        assert "SSL" in (untrusted.status()["last_error"] or "")
        trusted = await make_manager(
            settings(cp.url, signer, policies_dir, ca_file=pki.ca_file), data_dir=tmp_path / "b"
        )
        assert trusted.status()["version"] == 1
        cp.publish(signer.token(2))
        assert await trusted.sync_once() == APPLIED
    finally:
        await cp.stop()


async def test_mutual_tls_presents_the_client_certificate(
    tmp_path: Path, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """With client_cert and client_key, a control plane that requires mutual TLS answers."""
    pki = Pki(tmp_path)
    cert, key = pki.issue("runner", server=False)
    cp = ControlPlane()
    await cp.start(tls=pki.server_context(require_client=True))
    try:
        cp.publish(signer.token(3))
        without = await make_manager(
            settings(cp.url, signer, policies_dir, ca_file=pki.ca_file), data_dir=tmp_path / "a"
        )
        assert without.status()["version"] == 0
        with_cert = await make_manager(
            settings(
                cp.url, signer, policies_dir, ca_file=pki.ca_file, client_cert=cert, client_key=key
            ),
            data_dir=tmp_path / "b",
        )
        assert with_cert.status()["version"] == 3
    finally:
        await cp.stop()


async def test_a_control_plane_that_never_answers_times_out(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """A request with no answer fails after request_timeout_s; the policy in force stays."""
    control_plane.publish(signer.token(1))
    manager = await make_manager(
        settings(control_plane.url, signer, policies_dir, request_timeout_s=0.2)
    )
    control_plane.hang = True
    assert await manager.sync_once() == FAILED
    assert "Timeout" in (manager.status()["last_error"] or "")
    assert manager.status()["version"] == 1
