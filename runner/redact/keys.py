"""Where the token master key and the vault's key-encryption key come from.

In order: the environment variable named in `[pii]` (how containers and Helm pass secrets),
then the key file named in `[pii]`, then, for local and development use only and when
`generate_dev_keys` is on, a key generated once into `<data_dir>/pii/` with mode 0600.
runner.toml itself never holds a key. A key is 32 bytes written as 64 hex characters or
base64; a key file may also hold the 32 raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runner.redact.errors import KeyConfigError

KEY_BYTES = 32
KeySource = Literal["env", "file", "generated", "dev-file"]


@dataclass(frozen=True, slots=True)
class LoadedKey:
    """A key and where it came from (the source is logged, the key never)."""

    key: bytes
    source: KeySource
    path: Path | None = None
    loose_permissions: bool = False


def parse_key(raw: bytes, what: str) -> bytes:
    """Decode a 32-byte key written as hex, base64 or raw bytes."""
    text = raw.strip()
    if len(raw) == KEY_BYTES and not _printable(raw):
        return raw
    try:
        if len(text) == 2 * KEY_BYTES:
            return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        pass
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decode(text + b"=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise KeyConfigError(f"the {what} must be {KEY_BYTES} bytes, as 64 hex characters or base64")


def _printable(raw: bytes) -> bool:
    return all(32 <= b < 127 or b in (9, 10, 13) for b in raw)


def load_key(
    what: str,
    env_name: str,
    file: Path | None,
    dev_file: Path,
    generate: bool,
    environ: Mapping[str, str] | None = None,
) -> LoadedKey:
    """Load one key; raises KeyConfigError naming what to configure when there is none."""
    env = os.environ if environ is None else environ
    from_env = env.get(env_name, "")
    if from_env.strip():
        return LoadedKey(parse_key(from_env.encode(), what), "env")
    if file is not None:
        try:
            raw = file.read_bytes()
        except OSError as e:
            raise KeyConfigError(f"cannot read the {what} file {file}: {e.strerror}") from e
        return LoadedKey(parse_key(raw, what), "file", file, _loose(file))
    if dev_file.exists():
        return LoadedKey(
            parse_key(dev_file.read_bytes(), what), "dev-file", dev_file, _loose(dev_file)
        )
    if not generate:
        raise KeyConfigError(
            f"no {what}: set the environment variable {env_name} or a key file in [pii]"
        )
    dev_file.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(dev_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return LoadedKey(parse_key(dev_file.read_bytes(), what), "dev-file", dev_file)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(key) + b"\n")
    return LoadedKey(key, "generated", dev_file)


def _loose(path: Path) -> bool:
    """True when group or others may read the key file."""
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False
