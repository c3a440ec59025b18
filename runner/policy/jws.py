"""Verifying (and, for the CLI, making) signed policies: compact JWS, EdDSA/Ed25519 only.

PyJWT's `PyJWS` does the parsing and the signature check; this module decides
what is acceptable before and after it:

1. the whole token is at most `max_bytes` (else `too_large`);
2. the protected header parses (else `malformed`);
3. `alg` is exactly `EdDSA` (else `wrong_alg`: refuses `none`, HS256 with the
   public key as secret, RS*/ES*);
4. `kid` names a pinned key (else `unknown_kid`); the key is chosen by the
   Runner from its pins, never taken from the token (`jwk`/`jku`/`x5u` are ignored);
5. the signature verifies with that key (else `bad_signature`);
6. the payload is a JSON object that validates as a `Policy` (else `schema`);
7. `expires_at`, when set, is in the future (else `expired`).

Two forms are used. The control plane sends the usual compact form
`header.payload.signature`. Local policy files carry a *detached* signature
(RFC 7797, `b64: false`, so the payload segment is empty and the signed bytes
are the file's exact bytes) in `<file>.jws`; its protected header names the
file (`tf_file`), so a signed file renamed to another tenant's name is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.exceptions import (
    DecodeError,
    InvalidAlgorithmError,
    InvalidSignatureError,
    InvalidTokenError,
)
from pydantic import ValidationError

from runner.policy import errors as r
from runner.policy.errors import PolicyRefused
from runner.policy.keys import thumbprint_kid
from runner.policy.model import Policy

ALGORITHM: Final = "EdDSA"
TYP: Final = "traceflow-policy+jws"
FILE_HEADER: Final = "tf_file"
"""Protected header of a detached file signature: the name of the file it signs."""
DEFAULT_MAX_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Verified:
    """A payload whose signature checked out, and the pinned key that signed it."""

    payload: bytes
    kid: str


class Verifier:
    """Checks compact and detached JWS against the pinned keys only."""

    def __init__(
        self, keys: Mapping[str, Ed25519PublicKey], max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self._keys = dict(keys)
        self._max_bytes = max_bytes
        self._jws = jwt.PyJWS(algorithms=[ALGORITHM])

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def verify(self, token: str | bytes) -> Verified:
        """A compact JWS with its payload inside; raises `PolicyRefused`."""
        raw = self._bounded(token)
        kid, key, header = self._header(raw)
        if header.get("b64", True) is not True:
            raise PolicyRefused(r.MALFORMED, "a detached signature where a policy was expected")
        payload = self._decode(raw, key, None)
        return Verified(payload=payload, kid=kid)

    def verify_detached(self, signature: str | bytes, content: bytes, file_name: str) -> Verified:
        """A detached (`b64: false`) signature over `content`, made for `file_name`."""
        raw = self._bounded(signature)
        kid, key, header = self._header(raw)
        if header.get("b64") is not False:
            raise PolicyRefused(r.MALFORMED, "a file signature must be detached (b64: false)")
        signed_name = header.get(FILE_HEADER)
        self._decode(raw, key, content)
        if signed_name != file_name:
            raise PolicyRefused(
                r.WRONG_FILE, f"the signature was made for {signed_name!r}, not {file_name!r}"
            )
        return Verified(payload=content, kid=kid)

    def _bounded(self, token: str | bytes) -> bytes:
        raw = token.encode("utf-8", "replace") if isinstance(token, str) else token
        if len(raw) > self._max_bytes:
            raise PolicyRefused(r.TOO_LARGE, f"{len(raw)} bytes, the limit is {self._max_bytes}")
        return raw.strip()

    def _header(self, raw: bytes) -> tuple[str, Ed25519PublicKey, dict[str, Any]]:
        try:
            header = self._jws.get_unverified_header(raw)
        except (DecodeError, InvalidTokenError) as e:
            raise PolicyRefused(r.MALFORMED, f"not a compact JWS ({e})") from e
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise PolicyRefused(r.WRONG_ALG, f"alg {alg!r} is not accepted, only {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise PolicyRefused(r.UNKNOWN_KID, "the header names no kid")
        key = self._keys.get(kid)
        if key is None:
            raise PolicyRefused(r.UNKNOWN_KID, f"kid {kid!r} is not pinned")
        return kid, key, header

    def _decode(self, raw: bytes, key: Ed25519PublicKey, detached: bytes | None) -> bytes:
        try:
            decoded = self._jws.decode_complete(
                raw, key=key, algorithms=[ALGORITHM], detached_payload=detached
            )
        except InvalidSignatureError as e:
            raise PolicyRefused(r.BAD_SIGNATURE, "the signature does not verify") from e
        except InvalidAlgorithmError as e:
            raise PolicyRefused(r.WRONG_ALG, str(e)) from e
        except (DecodeError, InvalidTokenError) as e:
            raise PolicyRefused(r.MALFORMED, str(e)) from e
        payload: bytes = decoded["payload"]
        return payload


def describe(error: ValidationError) -> str:
    """Where a payload failed validation, without echoing its values (they may be sensitive)."""
    parts = []
    for item in error.errors()[:10]:
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - 10
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def decode_policy(payload: bytes, source: str) -> Policy:
    """A JSON payload → `Policy` with `source` set; raises `PolicyRefused(schema)`."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise PolicyRefused(r.SCHEMA, "the payload is not JSON") from e
    if not isinstance(data, dict):
        raise PolicyRefused(r.SCHEMA, "the payload is not a JSON object")
    data.pop("source", None)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        raise PolicyRefused(r.SCHEMA, describe(e)) from e
    return policy.model_copy(update={"source": source})


def check_expiry(policy: Policy, now: datetime | None = None) -> None:
    if policy.expired(now or datetime.now(UTC)):
        raise PolicyRefused(r.EXPIRED, f"version {policy.version} expired at {policy.expires_at}")


def verify_policy(
    token: str | bytes, verifier: Verifier, source: str, now: datetime | None = None
) -> tuple[Policy, str]:
    """Signature, then schema, then expiry: the policy and the kid that signed it."""
    verified = verifier.verify(token)
    policy = decode_policy(verified.payload, source)
    check_expiry(policy, now)
    return policy, verified.kid


# -- signing (the CLI and tests; the Runner only verifies) -----------------------------------


def sign(payload: bytes, key: Ed25519PrivateKey, kid: str | None = None) -> str:
    """A compact JWS over `payload` (the control plane's wire form)."""
    kid = kid or thumbprint_kid(key.public_key())
    headers = {"kid": kid, "typ": TYP}
    return jwt.PyJWS().encode(payload, key, algorithm=ALGORITHM, headers=headers)


def sign_detached(
    content: bytes, key: Ed25519PrivateKey, file_name: str, kid: str | None = None
) -> str:
    """A detached (`b64: false`) JWS over a file's exact bytes, bound to its name."""
    kid = kid or thumbprint_kid(key.public_key())
    headers = {"kid": kid, "typ": TYP, FILE_HEADER: file_name}
    return jwt.PyJWS().encode(
        content, key, algorithm=ALGORITHM, headers=headers, is_payload_detached=True
    )
