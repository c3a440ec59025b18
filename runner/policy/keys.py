"""Ed25519 keys: reading the pinned public keys, naming them, making and reading signing keys.

Pinned keys are written in runner.toml as a `kid` → key table; a key is the
32 raw bytes in base64url (what `runner policy keygen` prints) or a PEM
`PUBLIC KEY` block. They can also come from a JWKS file (`keys_file`), the
form a control plane publishes: `{"keys": [{"kty": "OKP", "crv": "Ed25519",
"x": "…", "kid": "…"}]}`. A `kid` defaults to the key's RFC 7638 thumbprint.

Only Ed25519 is accepted: an RSA, EC or Ed448 key is an error at start-up,
not a key that quietly never matches.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runner.policy.errors import PolicyKeyError

KID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
_KID = re.compile(KID_PATTERN)
MAX_KEYS_FILE_BYTES = 1024 * 1024


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url (or standard base64), with or without padding; raises ValueError."""
    cleaned = "".join(text.split())
    cleaned = cleaned.replace("+", "-").replace("/", "_")
    try:
        return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError("not base64url") from e


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_text(key: Ed25519PublicKey) -> str:
    """The form to paste into runner.toml: 32 raw bytes, base64url."""
    return b64url(raw_public(key))


def thumbprint_kid(key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url): a `kid` both sides can compute."""
    canonical = orjson.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": public_text(key)}, option=orjson.OPT_SORT_KEYS
    )
    return b64url(hashlib.sha256(canonical).digest())


def parse_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from base64url raw bytes or a PEM block; raises ValueError."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            loaded = serialization.load_pem_public_key(stripped.encode("ascii"))
        except (ValueError, UnsupportedAlgorithm) as e:
            raise ValueError("not a PEM public key") from e
        if not isinstance(loaded, Ed25519PublicKey):
            raise ValueError(f"not an Ed25519 key ({type(loaded).__name__})")
        return loaded
    raw = b64url_decode(stripped)
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def check_kid(kid: str) -> str:
    if not _KID.match(kid):
        raise ValueError(f"kid {kid!r} must match {KID_PATTERN}")
    return kid


def parse_jwks(data: bytes, where: str) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document; any other key type is an error."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise PolicyKeyError(f"{where}: not JSON ({e})") from e
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise PolicyKeyError(f'{where}: expected {{"keys": [...]}}')
    keys: dict[str, Ed25519PublicKey] = {}
    for i, entry in enumerate(entries):
        keys.update([_jwk(entry, f"{where}: keys[{i}]")])
    return keys


def _jwk(entry: Any, where: str) -> tuple[str, Ed25519PublicKey]:
    if not isinstance(entry, dict):
        raise PolicyKeyError(f"{where}: expected an object")
    if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
        raise PolicyKeyError(f"{where}: only OKP/Ed25519 keys are accepted")
    if "d" in entry:
        raise PolicyKeyError(f"{where}: holds a private key; pin public keys only")
    x = entry.get("x")
    if not isinstance(x, str):
        raise PolicyKeyError(f"{where}: missing x")
    try:
        key = parse_public_key(x)
    except ValueError as e:
        raise PolicyKeyError(f"{where}: {e}") from e
    kid = entry.get("kid")
    if kid is None:
        kid = thumbprint_kid(key)
    if not isinstance(kid, str):
        raise PolicyKeyError(f"{where}: kid must be a string")
    try:
        return check_kid(kid), key
    except ValueError as e:
        raise PolicyKeyError(f"{where}: {e}") from e


def jwks(keys: dict[str, Ed25519PublicKey]) -> bytes:
    """A JWKS document of public keys (what a control plane would publish)."""
    entries = [
        {"kty": "OKP", "crv": "Ed25519", "x": public_text(key), "kid": kid, "use": "sig"}
        for kid, key in keys.items()
    ]
    return orjson.dumps({"keys": entries}, option=orjson.OPT_INDENT_2)


def load_keys_file(path: Path) -> dict[str, Ed25519PublicKey]:
    """Read a JWKS file (blocking: call at start-up or in a thread)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEYS_FILE_BYTES + 1)
    except OSError as e:
        raise PolicyKeyError(f"{path}: cannot read ({e.strerror})") from e
    if len(data) > MAX_KEYS_FILE_BYTES:
        raise PolicyKeyError(f"{path}: larger than {MAX_KEYS_FILE_BYTES} bytes")
    return parse_jwks(data, str(path))


# -- signing keys (the CLI and tests; the Runner itself never signs) -------------------------


def write_private_key(path: Path, key: Ed25519PrivateKey, *, overwrite: bool = False) -> None:
    """Write a PKCS#8 PEM private key readable by its owner only (0600), never over another."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as e:
        raise PolicyKeyError(f"{path}: already exists (not overwritten)") from e
    except OSError as e:
        raise PolicyKeyError(f"{path}: cannot create ({e.strerror})") from e
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())


def read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PolicyKeyError(f"{path}: cannot read ({e.strerror})") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise PolicyKeyError(f"{path}: not an unencrypted PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise PolicyKeyError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key
