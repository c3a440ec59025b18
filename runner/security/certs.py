"""Development certificates (`runner certs init`) and certificate inspection (`runner certs show`).

`init` makes a throwaway PKI for local use and tests: a CA, a server certificate with the
SANs given, and a client certificate for mutual TLS, all ECDSA P-256. Private keys are
written with mode 0600 (set on the open file, whatever the umask) and are never printed.
In production the bank's own PKI issues these; see certs/README.md.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
CA_NAME = "TRACEFLOW Runner development CA"
SERVER_NAME = "traceflow-runner"
CLIENT_NAME = "traceflow-sdk"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS = re.compile(rf"^(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}$")
BACKDATE = timedelta(minutes=5)  # tolerate small clock differences between machines


class CertsError(Exception):
    """A bad argument, or files that are there already."""


@dataclass(frozen=True, slots=True)
class Issued:
    """The files `init` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def all(self) -> tuple[Path, ...]:
        return (
            self.ca_cert,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.client_cert,
            self.client_key,
        )


def parse_san(value: str) -> x509.GeneralName:
    """An IP address, or a DNS name (a leading `*.` wildcard allowed)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    if len(value) > 253 or not _DNS.match(value):
        raise CertsError(f"--san {value!r}: not an IP address or a DNS name")
    return x509.DNSName(value.lower())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TRACEFLOW development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _ca(days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(CA_NAME)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    sans: Sequence[x509.GeneralName],
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(_name(common_name), ca.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (0600), refusing to follow a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_public(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def init(
    folder: Path,
    sans: Sequence[str] = DEFAULT_SANS,
    *,
    client_name: str = CLIENT_NAME,
    days: int = 90,
    ca_days: int = 365,
    force: bool = False,
) -> Issued:
    """Create a development CA, a server certificate for `sans` and a client certificate."""
    if not 1 <= days <= ca_days <= 3650:
        raise CertsError("need 1 <= --days <= --ca-days <= 3650")
    names = [parse_san(s) for s in sans or DEFAULT_SANS]
    issued = Issued(
        ca_cert=folder / "ca.pem",
        ca_key=folder / "ca.key",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
    present = [p for p in issued.all() if p.exists() or p.is_symlink()]
    if present and not force:
        raise CertsError(
            f"{', '.join(str(p) for p in present)} already exist; pass --force to replace them"
        )
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in present:
        path.unlink()
    ca, ca_key = _ca(ca_days)
    server, server_key = _leaf(
        ca, ca_key, SERVER_NAME, ExtendedKeyUsageOID.SERVER_AUTH, names, days
    )
    client, client_key = _leaf(ca, ca_key, client_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], days)
    for cert_path, key_path, cert, key in (
        (issued.ca_cert, issued.ca_key, ca, ca_key),
        (issued.server_cert, issued.server_key, server, server_key),
        (issued.client_cert, issued.client_key, client, client_key),
    ):
        write_private(key_path, _key_pem(key))
        _write_public(cert_path, cert)
    return issued


# -- show --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertSummary:
    """What `certs show` prints of one certificate."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    is_ca: bool
    sha256: str

    def days_left(self, now: datetime | None = None) -> float:
        return (self.not_after - (now or datetime.now(UTC))).total_seconds() / 86_400


def summarize(cert: x509.Certificate) -> CertSummary:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(
            f"IP:{n.value}" if isinstance(n, x509.IPAddress) else f"DNS:{n.value}"
            for n in san
            if isinstance(n, x509.IPAddress | x509.DNSName)
        )
    except x509.ExtensionNotFound:
        sans = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return CertSummary(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=sans,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca,
        sha256=digest,
    )


@dataclass(frozen=True, slots=True)
class FileReport:
    """One file as `show` sees it: certificates, or a private key (never its content)."""

    path: Path
    certificates: tuple[CertSummary, ...] = ()
    private_key_mode: int | None = None
    error: str | None = None

    @property
    def key_too_open(self) -> bool:
        return self.private_key_mode is not None and bool(self.private_key_mode & 0o077)


def inspect(path: Path) -> FileReport:
    """Read a PEM file: its certificates, or, for a key, only its permissions."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return FileReport(path, error=e.strerror or str(e))
    if b"PRIVATE KEY-----" in data:
        return FileReport(path, private_key_mode=stat.S_IMODE(path.stat().st_mode))
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        return FileReport(path, error="no PEM certificate in it")
    return FileReport(path, certificates=tuple(summarize(c) for c in certs))
