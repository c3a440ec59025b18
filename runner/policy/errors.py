"""Why a policy was refused: one error type, one reason code per rule of PROTOCOL §3.

A refusal never changes the policy in force. The reason codes are stable: they
are the labels of the refusal counter, the `reason` of the audit record and the
`reason` field of the log line, so dashboards and alerts can match on them.
The message says what was wrong in words an operator can act on; it never holds
policy content (allow-lists and deny keys can name customer data).
"""

from __future__ import annotations

from typing import Final

from runner.errors import RunnerError

BAD_SIGNATURE: Final = "bad_signature"
"""The signature does not match the protected header and payload."""
UNKNOWN_KID: Final = "unknown_kid"
"""The `kid` is missing or names no key pinned in runner.toml."""
WRONG_ALG: Final = "wrong_alg"
"""`alg` is not `EdDSA` (this refuses `none`, HS* key confusion, RS*/ES*)."""
MALFORMED: Final = "malformed"
"""Not a compact JWS, bad base64url, a header that is not JSON, an unknown `crit`."""
SCHEMA: Final = "schema"
"""The payload is not JSON, or does not validate as a policy."""
EXPIRED: Final = "expired"
"""`expires_at` is in the past."""
ROLLBACK: Final = "rollback"
"""`version` is lower than the one in force."""
VERSION_REUSED: Final = "version_reused"
"""The same `version` as the one in force, but different rules."""
TOO_LARGE: Final = "too_large"
"""The body is larger than `max_policy_bytes`."""
UNSIGNED: Final = "unsigned"
"""A local policy file without a signature while `require_signed_files` is on."""
WRONG_FILE: Final = "wrong_file"
"""A detached signature made for another file (a signed file renamed or copied)."""

REASONS: Final = (
    BAD_SIGNATURE,
    UNKNOWN_KID,
    WRONG_ALG,
    MALFORMED,
    SCHEMA,
    EXPIRED,
    ROLLBACK,
    VERSION_REUSED,
    TOO_LARGE,
    UNSIGNED,
    WRONG_FILE,
)


class PolicyRefused(RunnerError):
    """A policy that must not be put in force; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, message: str, version: int | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.version = version


class SyncFailed(RunnerError):
    """The control plane could not be asked: down, a timeout, an HTTP error status."""

    retriable = True


class PolicyKeyError(RunnerError):
    """A pinned key or a signing key that cannot be read or is not Ed25519."""
