"""`[control_plane]` settings: defaults work, bad keys and contradictions fail at load."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from runner.policy.errors import PolicyKeyError
from runner.policy.keys import jwks, raw_public
from runner.policy.settings import ControlPlaneSettings
from tests.policy.support import Signer


def test_empty_section_is_valid() -> None:
    """With nothing set, the Runner uses ./policies and no control plane."""
    s = ControlPlaneSettings()
    assert (s.endpoint, s.sync_enabled, s.policies_dir) == ("", False, Path("policies"))
    assert s.token_env == "RUNNER_CONTROL_PLANE_TOKEN"


def test_keys_accept_base64url_and_pem(signer: Signer) -> None:
    """A pinned key may be base64url raw bytes or a PEM block."""
    pem = (
        signer.key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    s = ControlPlaneSettings(endpoint="https://cp.example/", keys={"a": signer.public, "b": pem})
    pinned = s.pinned_keys()
    assert raw_public(pinned["a"]) == raw_public(pinned["b"])
    assert s.policy_url("r-1") == "https://cp.example/v1/runners/r-1/policy"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"endpoint": "https://cp.example"}, "no keys are pinned"),
        ({"endpoint": "ftp://cp.example", "keys": {}}, "http"),
        ({"keys": {"k": "c2hvcnQ"}}, "32 bytes"),
        ({"keys": {"k": "not-a-key"}}, "not base64url"),
        ({"keys": {"bad kid!": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}}, "kid"),
        ({"require_signed_files": True}, "pinned keys"),
        ({"backoff_initial_s": 10, "backoff_max_s": 1}, "backoff"),
        ({"client_key": "k.pem"}, "client_cert"),
        ({"poll_jitter": 0.9}, "less than or equal"),
        ({"keyz": {}}, "Extra inputs"),
    ],
)
def test_bad_settings_fail_loudly(values: dict[str, object], message: str) -> None:
    """Typos, bad keys and contradictions are configuration errors, not silent refusals later."""
    with pytest.raises(ValidationError, match=message):
        ControlPlaneSettings.model_validate(values)


def test_non_ed25519_pem_is_refused() -> None:
    """An Ed448 key is not accepted as a pin."""
    pem = (
        Ed448PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(ValidationError, match="not an Ed25519 key"):
        ControlPlaneSettings(keys={"k": pem})


def test_keys_file_adds_jwks_keys(tmp_path: Path, signer: Signer) -> None:
    """A JWKS keys file adds its Ed25519 keys; a kid pinned twice with two keys is an error."""
    other = Ed25519PrivateKey.generate().public_key()
    path = tmp_path / "keys.json"
    path.write_bytes(jwks({"from-file": other}))
    s = ControlPlaneSettings(endpoint="http://cp", keys=signer.pins, keys_file=path)
    assert sorted(s.pinned_keys()) == sorted([signer.kid, "from-file"])
    path.write_bytes(jwks({signer.kid: other}))
    with pytest.raises(PolicyKeyError, match="pinned twice"):
        s.pinned_keys()


def test_keys_file_refuses_private_and_foreign_keys(tmp_path: Path) -> None:
    """A JWKS entry with a private part, or of another key type, stops start-up."""
    path = tmp_path / "keys.json"
    s = ControlPlaneSettings(endpoint="http://cp", keys_file=path)
    path.write_text('{"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "kid": "r"}]}')
    with pytest.raises(PolicyKeyError, match="only OKP/Ed25519"):
        s.pinned_keys()
    x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    path.write_text(f'{{"keys": [{{"kty": "OKP", "crv": "Ed25519", "x": "{x}", "d": "x"}}]}}')
    with pytest.raises(PolicyKeyError, match="private key"):
        s.pinned_keys()


def test_bearer_comes_from_the_named_variable() -> None:
    """The token is read from the variable named by token_env, never from the file."""
    s = ControlPlaneSettings(token_env="CP_TOKEN")
    assert s.bearer({"CP_TOKEN": "t0k"}) == "t0k"
    assert s.bearer({}) == ""
