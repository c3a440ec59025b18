"""The local `policies/` folder: readable TOML policy files, optionally signed.

Layout (see `policies/README.md`):

    policies/
      default.toml          the policy of every tenant that has no file of its own
      acme-bank.toml        tenant `acme-bank` (the file name is the tenant id)
      acme-bank.toml.jws    optional detached signature of acme-bank.toml

A file holds one tenant's policy in the shape of PROTOCOL §3 (`sampling`,
`features`, `pii`, `rate_limit`, `retention_days`, `forward`) plus an optional
top-level `version`. Each file is complete on its own: what it leaves out takes
the strict built-in value, not the value in `default.toml`, so deleting a line
never makes a tenant less private than the built-in default. Unlike a policy
from the control plane, a misspelt key is an error (people type these files).

The folder's policy version is the highest `version` of its files; bump it when
you change a file so the new rules can be told apart downstream.

Signing: `runner policy sign FILE --key KEY` writes `FILE.jws`, a detached JWS
(EdDSA, `b64: false`) over the file's exact bytes whose header names the file.
A present signature must verify against a pinned key; with
`require_signed_files = true` every file needs one. Any bad file refuses the
whole folder: the policy in force stays.

Everything here is blocking file I/O: the manager calls it in a thread.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runner.policy import errors as r
from runner.policy.errors import PolicyRefused
from runner.policy.jws import Verifier, describe
from runner.policy.model import SOURCE_FILES, Policy, TenantPolicy

DEFAULT_FILE = "default.toml"
DEFAULT_TENANT = "default"
SUFFIX = ".toml"
SIGNATURE_SUFFIX = ".jws"
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_FILE_BYTES = 1024 * 1024

Fingerprint = tuple[tuple[str, int, int], ...]
"""(name, mtime_ns, size) of every policy and signature file: changes when any file does."""


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """One parsed, checked policy file."""

    path: Path
    tenant: str
    version: int
    policy: TenantPolicy
    signed_by: str | None


@dataclass(frozen=True, slots=True)
class FolderPolicy:
    """The folder's policy and what it was made from."""

    policy: Policy
    files: tuple[PolicyFile, ...]

    @property
    def signed(self) -> bool:
        return bool(self.files) and all(f.signed_by is not None for f in self.files)


def tenant_of(path: Path) -> str:
    """`default.toml` → `default`; `acme-bank.toml` → `acme-bank`; raises on a bad name."""
    name = path.name
    if not name.endswith(SUFFIX):
        raise PolicyRefused(r.SCHEMA, f"{name}: a policy file name ends with {SUFFIX}")
    tenant = name[: -len(SUFFIX)]
    if not TENANT_PATTERN.match(tenant):
        raise PolicyRefused(r.SCHEMA, f"{name}: the name must be a tenant id ([A-Za-z0-9_.-])")
    return tenant


def _read(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise PolicyRefused(r.SCHEMA, f"{path.name}: cannot read ({e.strerror})") from e
    if len(data) > limit:
        raise PolicyRefused(r.TOO_LARGE, f"{path.name}: larger than {limit} bytes")
    return data


def parse_file(
    path: Path,
    content: bytes,
    signature: bytes | None,
    verifier: Verifier | None,
    require_signed: bool,
) -> PolicyFile:
    """Check a file's signature (when present or required), then its TOML and schema."""
    tenant = tenant_of(path)
    signed_by: str | None = None
    if signature is not None:
        if verifier is None:
            raise PolicyRefused(r.UNKNOWN_KID, f"{path.name}: signed, but no keys are pinned")
        signed_by = verifier.verify_detached(signature, content, path.name).kid
    elif require_signed:
        raise PolicyRefused(r.UNSIGNED, f"{path.name}: no {path.name}{SIGNATURE_SUFFIX}")
    try:
        data: dict[str, Any] = tomllib.loads(content.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PolicyRefused(r.SCHEMA, f"{path.name}: not UTF-8") from e
    except tomllib.TOMLDecodeError as e:
        raise PolicyRefused(r.SCHEMA, f"{path.name}: not valid TOML ({e})") from e
    version = data.pop("version", 0)
    if type(version) is not int or version < 0:
        raise PolicyRefused(r.SCHEMA, f"{path.name}: version must be a whole number >= 0")
    try:
        policy = TenantPolicy.model_validate(data, extra="forbid")
    except ValidationError as e:
        raise PolicyRefused(r.SCHEMA, f"{path.name}: {describe(e)}") from e
    return PolicyFile(path, tenant, version, policy, signed_by)


def read_file(
    path: Path, verifier: Verifier | None, require_signed: bool, limit: int = MAX_FILE_BYTES
) -> PolicyFile:
    """Read and check one policy file and its signature file, if any."""
    content = _read(path, limit)
    sig_path = path.with_name(path.name + SIGNATURE_SUFFIX)
    signature = _read(sig_path, limit) if sig_path.exists() else None
    return parse_file(path, content, signature, verifier, require_signed)


def policy_paths(folder: Path) -> list[Path]:
    """The policy files of a folder, sorted; none when it does not exist."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise PolicyRefused(r.SCHEMA, f"{folder}: cannot list ({e.strerror})") from e
    return sorted(
        Path(e.path)
        for e in entries
        if e.name.endswith(SUFFIX) and not e.name.startswith(".") and e.is_file()
    )


def load_folder(
    folder: Path,
    verifier: Verifier | None,
    require_signed: bool = False,
    limit: int = MAX_FILE_BYTES,
) -> FolderPolicy | None:
    """The folder's policy, or None when it has no policy files; raises `PolicyRefused`."""
    paths = policy_paths(folder)
    if not paths:
        return None
    files = tuple(read_file(path, verifier, require_signed, limit) for path in paths)
    policy = Policy(
        version=max(f.version for f in files),
        tenants={f.tenant: f.policy for f in files},
        source=SOURCE_FILES,
    )
    return FolderPolicy(policy=policy, files=files)


def fingerprint(folder: Path) -> Fingerprint:
    """A cheap summary of the folder (names, mtimes, sizes) to notice edits by polling."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return ()
    marks = []
    for entry in entries:
        if entry.name.endswith((SUFFIX, SUFFIX + SIGNATURE_SUFFIX)):
            try:
                st = entry.stat()
            except OSError:
                continue
            marks.append((entry.name, st.st_mtime_ns, st.st_size))
    return tuple(sorted(marks))
