"""JWT authentication: valid tokens per algorithm, every refusal, key rotation from files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import ValidationError

from runner.errors import StartupError
from runner.security.jwt import JwtProject, JwtRejected, JwtVerifier, looks_like_jwt
from runner.security.settings import JwtSettings
from tests.support import until

AUD = "traceflow-ingest"
ISS = "https://idp.bank.example"
TENANT = "acme-bank"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class Project:
    id: str
    tenant: str
    jwt: JwtSettings | None
    enabled: bool = True


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(key: PrivateKey, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    data: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


def write_jwks(path: Path, *keys: dict[str, Any]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps({"keys": list(keys)}))
    tmp.replace(path)
    return path


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "session-42",
        "tid": TENANT,
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: PrivateKey, alg: str, kid: str | None = None, **overrides: Any) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def settings(**values: Any) -> JwtSettings:
    return JwtSettings(audience=(AUD,), issuer=(ISS,), **values)


async def started(projects: Sequence[JwtProject]) -> JwtVerifier:
    verifier = JwtVerifier(projects)
    await verifier.start()
    return verifier


@pytest.fixture
async def pem_verifier(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[JwtVerifier]:
    """Project `web` trusting one RSA public key from a PEM file."""
    path = tmp_path / "idp.pem"
    path.write_bytes(public_pem(rsa_key))
    verifier = await started([Project("web", TENANT, settings(public_key_files=(path,)))])
    yield verifier
    await verifier.stop()


def rejected(verifier: JwtVerifier, token: str) -> JwtRejected:
    with pytest.raises(JwtRejected) as caught:
        verifier.verify(token)
    return caught.value


async def test_rs256_from_pem_file(pem_verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    """A valid RS256 token yields the project, its tenant and the subject."""
    identity = pem_verifier.verify(sign(rsa_key, "RS256"))
    assert (identity.project, identity.tenant, identity.subject) == ("web", TENANT, "session-42")


async def test_es256_and_eddsa_from_jwks(tmp_path: Path) -> None:
    """ES256 and EdDSA tokens verify against JWKS keys chosen by kid."""
    es, ed = ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()
    jwks = write_jwks(tmp_path / "jwks.json", jwk(es, "es-1", "ES256"), jwk(ed, "ed-1", "EdDSA"))
    verifier = await started([Project("app", TENANT, settings(jwks_file=jwks))])
    try:
        assert verifier.verify(sign(es, "ES256", kid="es-1")).project == "app"
        assert verifier.verify(sign(ed, "EdDSA", kid="ed-1", sub="user-7")).subject == "user-7"
    finally:
        await verifier.stop()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(time.time()) - 120}, "token expired"),
        ({"nbf": int(time.time()) + 600}, "token not yet valid"),
        ({"aud": "some-other-service"}, "wrong audience"),
        ({"iss": "https://evil.example"}, "wrong issuer"),
        ({"exp": None}, "missing required claim"),
        ({"aud": None}, "missing required claim"),
        ({"sub": None}, "missing required claim"),
        ({"tid": "other-bank"}, "tid is not the project's tenant"),
    ],
)
async def test_claims_checked(
    pem_verifier: JwtVerifier,
    rsa_key: rsa.RSAPrivateKey,
    overrides: dict[str, Any],
    reason: str,
) -> None:
    """exp, nbf, aud, iss, sub and tid are enforced; each refusal has a fixed reason."""
    error = rejected(pem_verifier, sign(rsa_key, "RS256", **overrides))
    assert error.reason == reason
    assert error.close_code == 4401


async def test_expiry_within_leeway_accepted(
    pem_verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A token a few seconds past exp is still accepted within leeway_s (clock skew)."""
    assert pem_verifier.verify(sign(rsa_key, "RS256", exp=int(time.time()) - 5)).project == "web"


async def test_alg_none_refused(pem_verifier: JwtVerifier) -> None:
    """An unsigned token (`alg: none`) is refused before any key is used."""
    header = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    token = f"{header}.{b64(orjson.dumps(claims()))}."
    assert rejected(pem_verifier, token).reason == "algorithm not allowed"


async def test_hs256_signed_with_public_key_refused(
    pem_verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    """Algorithm confusion: HS256 keyed with the RSA public key (which anyone has) is refused."""
    header = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    signing_input = f"{header}.{b64(orjson.dumps(claims()))}"
    mac = hmac.new(public_pem(rsa_key), signing_input.encode(), hashlib.sha256).digest()
    assert rejected(pem_verifier, f"{signing_input}.{b64(mac)}").reason == "algorithm not allowed"


async def test_unconfigured_key_refused(pem_verifier: JwtVerifier) -> None:
    """A token signed by a key the project does not trust fails on its signature."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert rejected(pem_verifier, sign(stranger, "RS256")).reason == "bad signature"


async def test_unknown_kid_and_algorithm_refused(tmp_path: Path) -> None:
    """A kid absent from the JWKS, or an algorithm with no configured key, is refused."""
    es = ec.generate_private_key(ec.SECP256R1())
    jwks = write_jwks(tmp_path / "jwks.json", jwk(es, "es-1", "ES256"))
    verifier = await started([Project("app", TENANT, settings(jwks_file=jwks))])
    try:
        reason = rejected(verifier, sign(es, "ES256", kid="es-9")).reason
        assert reason == "no trusted key for this token"
        ed = ed25519.Ed25519PrivateKey.generate()
        assert rejected(verifier, sign(ed, "EdDSA")).reason == "no trusted key for this token"
        assert rejected(verifier, "not.a.jwt").reason == "not a JWT"
    finally:
        await verifier.stop()


async def test_disabled_project_refused_with_4403(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A valid token for a disabled project is refused with 4403, like its API keys."""
    path = tmp_path / "idp.pem"
    path.write_bytes(public_pem(rsa_key))
    project = Project("off", TENANT, settings(public_key_files=(path,)), enabled=False)
    verifier = await started([project])
    assert rejected(verifier, sign(rsa_key, "RS256")).close_code == 4403


async def test_shared_key_routed_by_audience(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """Two projects trusting one IdP key are told apart by audience; no token fits both."""
    path = tmp_path / "idp.pem"
    path.write_bytes(public_pem(rsa_key))

    def trusting(audience: str) -> JwtSettings:
        return JwtSettings(audience=(audience,), issuer=(ISS,), public_key_files=(path,))

    projects = [
        Project("web", TENANT, trusting("web")),
        Project("app", "other-bank", trusting("app")),
    ]
    verifier = await started(projects)
    assert verifier.verify(sign(rsa_key, "RS256", aud="web")).project == "web"
    identity = verifier.verify(sign(rsa_key, "RS256", aud="app", tid="other-bank"))
    assert (identity.project, identity.tenant) == ("app", "other-bank")
    both = sign(rsa_key, "RS256", aud=["web", "app"], tid=None)
    assert rejected(verifier, both).reason == "token fits more than one project"


async def test_max_lifetime(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """With max_lifetime_s set, tokens need iat and may not live longer than that."""
    path = tmp_path / "idp.pem"
    path.write_bytes(public_pem(rsa_key))
    verifier = await started(
        [Project("web", TENANT, settings(public_key_files=(path,), max_lifetime_s=600))]
    )
    now = int(time.time())
    assert verifier.verify(sign(rsa_key, "RS256", iat=now, exp=now + 600)).project == "web"
    long_lived = sign(rsa_key, "RS256", iat=now, exp=now + 86_400)
    assert rejected(verifier, long_lived).reason == "token lives longer than max_lifetime_s"
    assert rejected(verifier, sign(rsa_key, "RS256", iat=None)).reason == "missing required claim"


async def test_jwks_rotation_without_restart(tmp_path: Path) -> None:
    """A key added to the JWKS is trusted, and a key removed from it is revoked, without restart."""
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    jwks = write_jwks(tmp_path / "jwks.json", jwk(old, "2024", "ES256"))
    verifier = await started(
        [Project("app", TENANT, settings(jwks_file=jwks, reload_interval_s=0.05))]
    )
    try:
        assert verifier.verify(sign(old, "ES256", kid="2024")).project == "app"
        assert rejected(verifier, sign(new, "ES256", kid="2025")).reason.startswith("no trusted")

        write_jwks(jwks, jwk(old, "2024", "ES256"), jwk(new, "2025", "ES256"))
        await until(lambda: verifier.reloads == 1, what="the added key to be loaded")
        assert verifier.verify(sign(new, "ES256", kid="2025")).project == "app"

        write_jwks(jwks, jwk(new, "2025", "ES256"))
        await until(lambda: verifier.reloads == 2, what="the revoked key to be dropped")
        assert rejected(verifier, sign(old, "ES256", kid="2024")).reason.startswith("no trusted")

        jwks.write_text("{ broken")
        await until(lambda: verifier.reload_failures == 1, what="the broken JWKS to be refused")
        assert verifier.verify(sign(new, "ES256", kid="2025")).project == "app"  # kept
        assert verifier.status()["keys_by_project"] == {"app": 1}
    finally:
        await verifier.stop()


async def test_private_or_symmetric_key_material_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A JWKS with a private or `oct` key, or a PEM private key, stops start-up."""
    private = json.loads(
        jwt.get_algorithm_by_name("ES256").to_jwk(ec.generate_private_key(ec.SECP256R1()))
    )
    jwks = write_jwks(tmp_path / "jwks.json", private)
    with pytest.raises(StartupError, match="private or symmetric"):
        await started([Project("app", TENANT, settings(jwks_file=jwks))])
    write_jwks(jwks, {"kty": "oct", "k": b64(b"secret"), "kid": "h"})
    with pytest.raises(StartupError, match="private or symmetric"):
        await started([Project("app", TENANT, settings(jwks_file=jwks))])
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(StartupError, match="holds a private key"):
        await started([Project("app", TENANT, settings(public_key_files=(pem,)))])


async def test_weak_or_unallowed_keys_refused(tmp_path: Path) -> None:
    """RSA under 2048 bits, or a key whose algorithm the project does not allow, stops start-up."""
    weak = tmp_path / "weak.pem"
    weak.write_bytes(public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))  # noqa: S505 - the weak key under test
    with pytest.raises(StartupError, match="1024 bits"):
        await started([Project("web", TENANT, settings(public_key_files=(weak,)))])
    es = tmp_path / "es.pem"
    es.write_bytes(public_pem(ec.generate_private_key(ec.SECP256R1())))
    only_rsa = settings(public_key_files=(es,), algorithms=("RS256",))
    with pytest.raises(StartupError, match="allows RS256"):
        await started([Project("web", TENANT, only_rsa)])


def test_settings_need_audience_and_issuer(tmp_path: Path) -> None:
    """Keys without audience or issuer are a configuration error; no keys means JWT is off."""
    assert JwtSettings().enabled is False
    with pytest.raises(ValidationError, match="audience and issuer"):
        JwtSettings(public_key_files=(tmp_path / "k.pem",), issuer=(ISS,))
    with pytest.raises(ValidationError):
        JwtSettings.model_validate({"algorithms": ["HS256"]})


def test_api_keys_are_not_jwts() -> None:
    """Tokens are routed: `tf_` keys to the API key check, three-part tokens to JWT."""
    assert looks_like_jwt("eyJ.eyJ.sig")
    assert not looks_like_jwt("tf_live_a.b.c")
    assert not looks_like_jwt(None)
