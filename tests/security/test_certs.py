"""`runner certs init` and `runner certs show`: keys 0600, usable certificates, honest expiry."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from typer.testing import CliRunner

from runner.security.cli import certs_app
from runner.security.settings import OutboundTlsSettings, TlsSettings
from runner.security.tls import client_context, server_context
from tests.security.support import fetch, serve_tls, write_leaf

cli = CliRunner()


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable."""
    old = os.umask(0)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_keys_0600(tmp_path: Path, loose_umask: None) -> None:
    """Private keys are written 0600 whatever the umask; certificates are 0644."""
    folder = tmp_path / "certs"
    result = cli.invoke(certs_app, ["init", "--dir", str(folder), "--san", "runner.bank.internal"])
    assert result.exit_code == 0, result.output
    for name in ("ca.key", "server.key", "client.key"):
        assert mode(folder / name) == 0o600
    for name in ("ca.pem", "server.pem", "client.pem"):
        assert mode(folder / name) == 0o644
    assert mode(folder) == 0o700


async def test_init_certificates_work_for_mutual_tls(tmp_path: Path) -> None:
    """The server certificate serves its SANs, and the client certificate passes mTLS."""
    folder = tmp_path / "certs"
    args = ["init", "--dir", str(folder), "--san", "localhost", "--san", "127.0.0.1"]
    assert cli.invoke(certs_app, args).exit_code == 0
    server = TlsSettings(
        cert_file=folder / "server.pem",
        key_file=folder / "server.key",
        client_ca_file=folder / "ca.pem",
    )
    client = OutboundTlsSettings(
        ca_file=folder / "ca.pem",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
    async with serve_tls(server_context(server)) as served:
        for host in ("localhost", "127.0.0.1"):
            assert await fetch(served.port, client_context(client), host) == (200, "traceflow-sdk")


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    """Existing files are kept unless --force is given."""
    folder = tmp_path / "certs"
    assert cli.invoke(certs_app, ["init", "--dir", str(folder)]).exit_code == 0
    before = (folder / "ca.pem").read_bytes()
    again = cli.invoke(certs_app, ["init", "--dir", str(folder)])
    assert again.exit_code == 2
    assert "already exist" in again.output
    assert (folder / "ca.pem").read_bytes() == before
    assert cli.invoke(certs_app, ["init", "--dir", str(folder), "--force"]).exit_code == 0
    assert (folder / "ca.pem").read_bytes() != before
    assert mode(folder / "ca.key") == 0o600


def test_init_rejects_bad_san(tmp_path: Path) -> None:
    """A SAN that is neither an IP address nor a DNS name is refused."""
    result = cli.invoke(certs_app, ["init", "--dir", str(tmp_path), "--san", "bad name!"])
    assert result.exit_code == 2
    assert "not an IP address or a DNS name" in result.output


def test_show_prints_subjects_sans_and_expiry(tmp_path: Path) -> None:
    """show lists subject, issuer, SANs and days left, and never prints a key."""
    folder = tmp_path / "certs"
    cli.invoke(certs_app, ["init", "--dir", str(folder), "--days", "30", "--san", "10.1.2.3"])
    result = cli.invoke(certs_app, ["show", "--dir", str(folder)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "subject:  CN=traceflow-runner,O=TRACEFLOW development" in out
    assert "SANs:     IP:10.1.2.3" in out
    assert "(29 days left)" in out or "(30 days left)" in out
    assert "CA:       yes" in out
    assert "private key (not shown), mode 0600" in out
    assert "PRIVATE KEY" not in out
    assert (folder / "server.key").read_text().splitlines()[1] not in out


def test_show_flags_expired_and_exposed(ca: trustme.CA, tmp_path: Path) -> None:
    """An expired certificate or a key readable by others makes show exit 1."""
    past = datetime.now(UTC) - timedelta(days=1)
    old = ca.issue_cert("old.example", not_before=past - timedelta(days=30), not_after=past)
    cert, key = write_leaf(old, tmp_path, "old")
    key.chmod(0o644)
    result = cli.invoke(certs_app, ["show", str(cert), str(key)])
    assert result.exit_code == 1
    assert "EXPIRED" in result.output
    assert "readable by others" in result.output
