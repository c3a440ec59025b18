"""Verification of signed policies: only EdDSA, only pinned keys, only valid policies."""

from __future__ import annotations

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runner.policy import errors as r
from runner.policy.errors import PolicyRefused
from runner.policy.jws import Verifier, sign, sign_detached, verify_policy
from runner.policy.keys import b64url_decode, parse_public_key, raw_public, thumbprint_kid
from runner.policy.model import SOURCE_CONTROL_PLANE
from tests.policy.support import (
    Signer,
    alg_none,
    hs256_with_public_key,
    iso,
    payload,
    tampered,
)


def verifier_for(signer: Signer, max_bytes: int = 1024 * 1024) -> Verifier:
    return Verifier({signer.kid: signer.key.public_key()}, max_bytes)


def refusal(signer: Signer, token: str | bytes) -> str:
    with pytest.raises(PolicyRefused) as caught:
        verify_policy(token, verifier_for(signer), SOURCE_CONTROL_PLANE)
    return caught.value.reason


def test_valid_policy_verifies_with_its_kid(signer: Signer) -> None:
    """A policy signed by a pinned key verifies and says which key signed it."""
    policy, kid = verify_policy(signer.token(7), verifier_for(signer), SOURCE_CONTROL_PLANE)
    assert (policy.version, kid, policy.source) == (7, signer.kid, SOURCE_CONTROL_PLANE)
    assert policy.for_tenant("acme-bank").pii.text == "detect"


def test_payload_cannot_choose_its_source(signer: Signer) -> None:
    """A `source` field in the payload is ignored: the Runner says where a policy came from."""
    token = signer.sign(orjson.dumps({**payload(3), "source": "builtin"}))
    policy, _ = verify_policy(token, verifier_for(signer), SOURCE_CONTROL_PLANE)
    assert policy.source == SOURCE_CONTROL_PLANE


def test_tampered_payload_is_refused(signer: Signer) -> None:
    """An edited payload with the original signature is refused as a bad signature."""
    assert refusal(signer, tampered(signer.token(7), version=99)) == r.BAD_SIGNATURE


def test_unknown_kid_is_refused(signer: Signer) -> None:
    """A kid that is not pinned is refused, even with a valid signature by its own key."""
    other = Signer(kid="someone-else")
    assert refusal(signer, other.token(7)) == r.UNKNOWN_KID


def test_pinned_kid_with_another_key_is_refused(signer: Signer) -> None:
    """A token naming a pinned kid but signed by another key fails the signature check."""
    impostor = Signer(kid=signer.kid)
    assert refusal(signer, impostor.token(7)) == r.BAD_SIGNATURE


def test_missing_kid_is_refused(signer: Signer) -> None:
    """A token without a kid is refused: the key is chosen by kid, never guessed."""
    import jwt

    token = jwt.PyJWS().encode(orjson.dumps(payload(1)), signer.key, algorithm="EdDSA")
    assert refusal(signer, token) == r.UNKNOWN_KID


def test_alg_none_is_refused(signer: Signer) -> None:
    """An unsigned token (`alg: none`) is refused."""
    assert refusal(signer, alg_none(7, signer.kid)) == r.WRONG_ALG


@pytest.mark.parametrize("form", ["text", "raw", "pem"])
def test_hs256_keyed_with_the_public_key_is_refused(signer: Signer, form: str) -> None:
    """HS256 keyed with the pinned public key (in any encoding) is refused as a wrong alg."""
    from cryptography.hazmat.primitives import serialization

    public = signer.key.public_key()
    secret = {
        "text": signer.public.encode(),
        "raw": raw_public(public),
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }[form]
    assert refusal(signer, hs256_with_public_key(7, signer.kid, secret)) == r.WRONG_ALG


@pytest.mark.parametrize(
    "garbage",
    [b"", b"<html>502 Bad Gateway</html>", b"a.b", b"!!!.???.***", b"e30.e30.e30.e30", b"\xff\xfe"],
)
def test_garbage_is_refused_as_malformed(signer: Signer, garbage: bytes) -> None:
    """Bodies that are not a compact JWS are refused as malformed."""
    assert refusal(signer, garbage) == r.MALFORMED


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2, 3]",
        orjson.dumps({"version": "seven"}),
        orjson.dumps({"version": -1}),
        orjson.dumps(payload(2, tenants={"t": {"sampling": {"session_rate": 2.0}}})),
        orjson.dumps(payload(2, tenants={"t": {"pii": {"actions": {"default": "publish"}}}})),
        orjson.dumps(payload(2, expires_at="next tuesday")),
        orjson.dumps(payload(2, expires_at="2030-01-01T00:00:00")),
    ],
)
def test_signed_but_invalid_payload_is_a_schema_refusal(signer: Signer, body: bytes) -> None:
    """A correctly signed payload that is not a valid policy is refused (schema)."""
    assert refusal(signer, signer.sign(body)) == r.SCHEMA


def test_schema_refusal_does_not_echo_policy_values(signer: Signer) -> None:
    """The refusal message names where the payload is wrong, not what it holds."""
    body = orjson.dumps(
        payload(2, tenants={"t": {"pii": {"allow_values": "SECRET-XYZ", "min_score": 7}}})
    )
    with pytest.raises(PolicyRefused) as caught:
        verify_policy(signer.sign(body), verifier_for(signer), SOURCE_CONTROL_PLANE)
    assert "SECRET-XYZ" not in str(caught.value)
    assert "tenants.t.pii" in str(caught.value)


def test_expired_policy_is_refused(signer: Signer) -> None:
    """A policy whose expires_at has passed is refused."""
    assert refusal(signer, signer.token(7, expires_at=iso(-1))) == r.EXPIRED


def test_future_expiry_is_accepted(signer: Signer) -> None:
    """A policy that expires in the future is accepted."""
    policy, _ = verify_policy(
        signer.token(7, expires_at=iso(3600)), verifier_for(signer), SOURCE_CONTROL_PLANE
    )
    assert policy.expires is not None


def test_oversize_token_is_refused_before_parsing(signer: Signer) -> None:
    """A token larger than the limit is refused as too large."""
    with pytest.raises(PolicyRefused) as caught:
        verifier_for(signer, max_bytes=100).verify(signer.token(1))
    assert caught.value.reason == r.TOO_LARGE


def test_detached_signature_binds_content_and_file_name(signer: Signer) -> None:
    """A file signature verifies only for the same bytes and the same file name."""
    verifier = verifier_for(signer)
    content = b"version = 2\nforward = false\n"
    sig = sign_detached(content, signer.key, "acme-bank.toml", signer.kid)
    assert verifier.verify_detached(sig, content, "acme-bank.toml").kid == signer.kid
    with pytest.raises(PolicyRefused) as edited:
        verifier.verify_detached(sig, content + b"# edit\n", "acme-bank.toml")
    with pytest.raises(PolicyRefused) as renamed:
        verifier.verify_detached(sig, content, "other-bank.toml")
    with pytest.raises(PolicyRefused) as attached:
        verifier.verify(sig)
    assert (edited.value.reason, renamed.value.reason, attached.value.reason) == (
        r.BAD_SIGNATURE,
        r.WRONG_FILE,
        r.MALFORMED,
    )


def test_attached_token_is_not_a_file_signature(signer: Signer) -> None:
    """A compact (attached) JWS is not accepted as a detached file signature."""
    with pytest.raises(PolicyRefused) as caught:
        verifier_for(signer).verify_detached(signer.token(1), b"version = 1\n", "a.toml")
    assert caught.value.reason == r.MALFORMED


def test_kid_defaults_to_rfc7638_thumbprint() -> None:
    """Without a kid, signing uses the RFC 7638 thumbprint, which the key table can pin."""
    key = Ed25519PrivateKey.generate()
    token = sign(orjson.dumps(payload(1)), key)
    kid = thumbprint_kid(key.public_key())
    _, used = verify_policy(token, Verifier({kid: key.public_key()}), SOURCE_CONTROL_PLANE)
    assert used == kid
    assert len(b64url_decode(kid)) == 32


def test_rfc7638_thumbprint_matches_the_rfc_example() -> None:
    """The thumbprint of RFC 8037's example Ed25519 key is the one the RFC gives."""
    key = parse_public_key("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
    assert thumbprint_kid(key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
