"""Where the token master key and the vault's key-encryption key come from.

In order: the environment variable named in `[pii]` (how containers and Helm pass secrets),
then the key file named in `[pii]`, then, for local and development use only and when
`generate_dev_keys` is on, a key generated once into `<data_dir>/pii/` with mode 0600.
runner.toml itself never holds a key. A key is 32 bytes written as 64 hex characters or
base64; a key file may also hold the 32 raw bytes.

The vault's key-encryption key may be a keyring for rotation: several keys, one per line or
separated by commas (`# comments` allowed), the current key first; the older ones only unwrap
what they wrapped (see vault.py). The token key is always one key.
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
    """The key, or the current key of a keyring."""
    source: KeySource
    path: Path | None = None
    loose_permissions: bool = False
    older: tuple[bytes, ...] = ()
    """Older keys of a keyring, still able to unwrap what they wrapped."""

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The keyring, current key first."""
        return (self.key, *self.older)


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


def parse_keys(raw: bytes, what: str, many: bool) -> tuple[bytes, ...]:
    """One key, or with `many` a keyring: keys one per line or comma-separated, current first."""
    if len(raw) == KEY_BYTES and not _printable(raw):
        return (raw,)
    if not many:
        return (parse_key(raw, what),)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise KeyConfigError(f"the {what} must be hex or base64 keys, one per line") from e
    items = [
        item.strip()
        for line in text.splitlines()
        for item in line.partition("#")[0].split(",")
        if item.strip()
    ]
    if not items:
        raise KeyConfigError(f"the {what} is empty")
    keys = tuple(parse_key(item.encode(), what) for item in items)
    if len(set(keys)) != len(keys):
        raise KeyConfigError(f"the {what} keyring holds the same key twice")
    return keys


def _printable(raw: bytes) -> bool:
    return all(32 <= b < 127 or b in (9, 10, 13) for b in raw)


def load_key(
    what: str,
    env_name: str,
    file: Path | None,
    dev_file: Path,
    generate: bool,
    environ: Mapping[str, str] | None = None,
    *,
    many: bool = False,
) -> LoadedKey:
    """Load one key (or with `many` a keyring); KeyConfigError names what to configure."""
    env = os.environ if environ is None else environ
    from_env = env.get(env_name, "")
    if from_env.strip():
        return _loaded(parse_keys(from_env.encode(), what, many), "env")
    if file is not None:
        try:
            raw = file.read_bytes()
        except OSError as e:
            raise KeyConfigError(f"cannot read the {what} file {file}: {e.strerror}") from e
        return _loaded(parse_keys(raw, what, many), "file", file, _loose(file))
    if dev_file.exists():
        keys = parse_keys(dev_file.read_bytes(), what, many)
        return _loaded(keys, "dev-file", dev_file, _loose(dev_file))
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


def _loaded(
    keys: tuple[bytes, ...], source: KeySource, path: Path | None = None, loose: bool = False
) -> LoadedKey:
    return LoadedKey(keys[0], source, path, loose, keys[1:])


def _loose(path: Path) -> bool:
    """True when group or others may read the key file."""
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False
