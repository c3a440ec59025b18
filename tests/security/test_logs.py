"""Security components never put tokens, keys or key material in logs or error messages."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import orjson
import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric import ec
from structlog.testing import capture_logs

from runner.errors import StartupError
from runner.security.jwt import JwtRejected, JwtVerifier
from runner.security.settings import JwtSettings, TlsSettings
from runner.security.tls import ReloadingTls
from tests.security.support import write_atomic, write_leaf
from tests.security.test_jwt import Project, jwk, write_jwks
from tests.support import until


async def test_jwt_refusals_and_reloads_leak_nothing(tmp_path: Path) -> None:
    """Refused tokens and a JWKS holding a private key never appear in reasons or logs."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwks = write_jwks(tmp_path / "jwks.json", jwk(key, "k1", "ES256"))
    settings = JwtSettings(audience=("a",), issuer=("i",), jwks_file=jwks, reload_interval_s=0.05)
    verifier = JwtVerifier([Project("web", "acme", settings)])
    with capture_logs() as logs:
        await verifier.start()
        try:
            now = int(time.time())
            claims = {"iss": "i", "aud": "b", "sub": "alice@bank.example", "exp": now + 60}
            token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})
            with pytest.raises(JwtRejected) as caught:
                verifier.verify(token)
            assert token not in str(caught.value)
            assert "alice" not in caught.value.reason
            private = orjson.loads(jwt.get_algorithm_by_name("ES256").to_jwk(key))
            write_atomic(jwks, orjson.dumps({"keys": [private]}))
            await until(lambda: verifier.reload_failures == 1, what="the private JWKS refused")
            assert private["d"] not in (verifier.last_error or "")
        finally:
            await verifier.stop()
    text = repr(logs)
    assert "jwt.keys_reload_failed" in text
    assert private["d"] not in text
    assert token not in text


async def test_tls_reload_failure_leaks_no_key(ca: trustme.CA, tmp_path: Path) -> None:
    """A failed TLS reload logs which files and why, never the key's content."""
    cert, key = write_leaf(ca.issue_cert("localhost"), tmp_path, "server")
    tls = ReloadingTls("ingest", TlsSettings(cert_file=cert, key_file=key, reload_interval_s=0.05))
    other = ca.issue_cert("localhost").private_key_pem.bytes()
    with capture_logs() as logs:
        await tls.start()
        try:
            write_atomic(key, other)
            await until(lambda: tls.reload_failures == 1, what="the mismatched key refused")
        finally:
            await tls.stop()
    body = other.decode().splitlines()[1]
    assert "tls.reload_failed" in repr(logs)
    assert body not in repr(logs)
    assert body not in (tls.status()["last_error"] or "")


async def test_startup_errors_name_files_not_content(tmp_path: Path) -> None:
    """A malformed key file is named in the error, without its content."""
    bad = tmp_path / "idp.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nc2VjcmV0LXNlY3JldA==\n-----END PUBLIC KEY-----\n")
    settings = JwtSettings(audience=("a",), issuer=("i",), public_key_files=(bad,))
    with pytest.raises(StartupError) as caught:
        await JwtVerifier([Project("web", "acme", settings)]).start()
    assert str(bad) in str(caught.value)
    assert "c2VjcmV0" not in str(caught.value)
