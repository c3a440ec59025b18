"""Mutual TLS to the cloud: the sender presents its client certificate and trusts the given CA."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from runner.forward.chunker import Chunk, StreamEntry, encode
from runner.forward.sender import CloudSender, Outcome
from runner.forward.settings import CloudSettings
from tests.forward.support import FakeCloud


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> Path:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _issue(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(x509.SubjectAlternativeName([loopback]), critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    ca = _issue("test-ca", ca_key, ca_name, ca_key, ca=True)
    server_key, client_key = _key(), _key()
    return Pki(
        ca=_write(tmp_path / "ca.pem", ca_key, ca),
        server_cert=_write(tmp_path / "server.pem", server_key,
                           _issue("cloud", server_key, ca_name, ca_key, ca=False)),
        server_key=tmp_path / "server.key",
        client_cert=_write(tmp_path / "client.pem", client_key,
                           _issue("runner-1", client_key, ca_name, ca_key, ca=False)),
        client_key=tmp_path / "client.key",
    )  # fmt: skip


@pytest.fixture
async def tls_cloud(pki: Pki) -> AsyncIterator[FakeCloud]:
    """The fake cloud behind TLS that requires a client certificate from the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.verify_mode = ssl.CERT_REQUIRED
    server = FakeCloud(ssl_context=context)
    await server.up()
    yield server
    await server.down()


def _chunk() -> Chunk:
    entry = StreamEntry(id="1-0", session_id="s", project="p", seq=1, count=1, events=b"[{}]")
    chunk = Chunk("ef" * 16, "acme", 0, "t", (entry,))
    chunk.body = encode(chunk, "r", 3)
    return chunk


async def test_client_certificate_is_presented_and_ca_trusted(
    pki: Pki, tls_cloud: FakeCloud
) -> None:
    """With client_cert/client_key/ca_file the chunk is accepted over mutual TLS."""
    settings = CloudSettings.model_validate(
        {
            "endpoint": f"https://127.0.0.1:{tls_cloud.port}",
            "client_cert": str(pki.client_cert),
            "client_key": str(pki.client_key),
            "ca_file": str(pki.ca),
        }
    )
    sender = CloudSender(settings, "runner-1", "")
    await sender.start()
    try:
        result = await sender.send(_chunk())
    finally:
        await sender.close()
    assert result.outcome is Outcome.ACCEPTED
    assert len(tls_cloud.accepted) == 1


async def test_without_client_certificate_the_handshake_fails_retryably(
    pki: Pki, tls_cloud: FakeCloud
) -> None:
    """A cloud that refuses the handshake is a transport error: retried, never dead-lettered."""
    settings = CloudSettings.model_validate(
        {"endpoint": f"https://127.0.0.1:{tls_cloud.port}", "ca_file": str(pki.ca)}
    )
    sender = CloudSender(settings, "runner-1", "")
    await sender.start()
    try:
        result = await sender.send(_chunk())
    finally:
        await sender.close()
    assert (result.outcome, result.status) == (Outcome.RETRY, None)
    assert tls_cloud.accepted == {}
