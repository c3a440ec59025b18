"""Encryption at rest for objects the Runner keeps (dead letters, air-gapped chunks): AES-256-GCM.

Envelope encryption: every object gets a fresh random 256-bit data key (DEK); the object is
encrypted under it with AES-256-GCM, and the DEK is stored next to it wrapped by a
key-encryption key (KEK) that never touches disk in the clear here. The KEKs come from a
`KeyWrapper`: `LocalKeyring` holds them from an environment variable or a key file (or, for
development only, a keyring generated once under data_dir); a KMS or HashiCorp Vault transit
engine fits the same three-method interface (wrap, unwrap, current key id) without the data
keys ever leaving the process unwrapped. The store seals through this (forward/sealed.py).

Key rotation: the keyring's first key is current and wraps every new object; older keys stay
in the keyring to unwrap what they wrapped until that data has expired, then are removed.
A sealed object names the key id that wrapped it, so rotation needs no re-encryption.

The caller passes a `context` (for instance the object's name, `dlq/<tenant>/<chunk_id>.zst`)
that is authenticated but not stored: an object copied to another name or another tenant's
folder fails to open, as does any flipped bit.

Layout: `TFE1` | u16 header length | header JSON `{"kid", "wk", "n"}` | ciphertext + tag.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runner.errors import StartupError
from runner.security.settings import AtRestSettings

MAGIC = b"TFE1"
KEY_BYTES = 32
NONCE_BYTES = 12
_KID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_WRAP_AAD = b"traceflow-at-rest-dek:"


class SealError(Exception):
    """An object cannot be opened: wrong or missing key, tampered, or moved."""


class KeyWrapper(Protocol):
    """Wraps data keys under a key-encryption key (local keyring, KMS, Vault transit)."""

    @property
    def current_kid(self) -> str: ...

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        """Wrap a data key under the current KEK: (key id, wrapped bytes)."""
        ...

    def unwrap(self, kid: str, wrapped: bytes) -> bytes:
        """The data key wrapped under `kid`; SealError if that key is unknown or it fails."""
        ...


def parse_key(text: str, where: str) -> bytes:
    """A 32-byte key written as 64 hex characters or base64."""
    text = text.strip()
    try:
        key = (
            bytes.fromhex(text)
            if len(text) == 2 * KEY_BYTES
            else base64.b64decode(text, validate=True)
        )
    except (ValueError, binascii.Error) as e:
        raise StartupError(f"{where}: a key must be 64 hex characters or base64") from e
    if len(key) != KEY_BYTES:
        raise StartupError(f"{where}: a key must be {KEY_BYTES} bytes, not {len(key)}")
    return key


def parse_keyring(text: str, where: str) -> list[tuple[str, bytes]]:
    """`kid:key` entries separated by commas or new lines (blanks and `# comments` skipped)."""
    entries = []
    items = (i for line in text.splitlines() for i in line.partition("#")[0].split(","))
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        kid, sep, key = item.partition(":")
        kid = kid.strip()
        if not sep or not _KID.match(kid):
            raise StartupError(f"{where}: expected <key id>:<key> entries, ids of [A-Za-z0-9_.-]")
        entries.append((kid, parse_key(key, f"{where} key {kid}")))
    return entries


class LocalKeyring:
    """KEKs held in memory; the first is current. Satisfies `KeyWrapper`."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise StartupError("the at-rest keyring is empty")
        kids = [kid for kid, _ in keys]
        if len(set(kids)) != len(kids):
            raise StartupError("the at-rest keyring names a key id twice")
        self._current = kids[0]
        self._keys = {kid: AESGCM(key) for kid, key in keys}
        self.kids = tuple(kids)

    @property
    def current_kid(self) -> str:
        return self._current

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        wrapped = self._keys[self._current].encrypt(nonce, dek, _WRAP_AAD + self._current.encode())
        return self._current, nonce + wrapped

    def unwrap(self, kid: str, wrapped: bytes) -> bytes:
        aead = self._keys.get(kid)
        if aead is None:
            raise SealError(f"key {kid!r} is not in the keyring (rotated out?)")
        try:
            return aead.decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _WRAP_AAD + kid.encode()
            )
        except InvalidTag as e:
            raise SealError(f"the data key does not open under key {kid!r}") from e


KeyringOrigin = Literal["env", "file", "dev-file", "generated"]


@dataclass(frozen=True, slots=True)
class KeyringSource:
    """Where the keyring came from (logged; the keys never are)."""

    keyring: LocalKeyring
    source: KeyringOrigin
    loose_permissions: bool = False
    path: Path | None = None


def load_keyring(
    settings: AtRestSettings, environ: Mapping[str, str], dev_file: Path | None = None
) -> KeyringSource:
    """The keyring from `$keys_env`, else `keys_file`, else the development key file.

    With `dev_file` given and neither source set, the development keyring there is read, or
    created once (mode 0600, one random key) while `generate_dev_key` is on. Blocking: reads
    and may write a file.
    """
    text = environ.get(settings.keys_env, "")
    if text.strip():
        return KeyringSource(LocalKeyring(parse_keyring(text, f"${settings.keys_env}")), "env")
    if settings.keys_file is not None:
        return _from_file(settings.keys_file, "file")
    if dev_file is not None and dev_file.exists():
        return _from_file(dev_file, "dev-file")
    if dev_file is None or not settings.generate_dev_key:
        raise StartupError(f"at-rest encryption needs ${settings.keys_env} or keys_file")
    return _generate(dev_file)


def _from_file(path: Path, source: KeyringOrigin) -> KeyringSource:
    try:
        text = path.read_text(encoding="utf-8")
        loose = bool(stat.S_IMODE(path.stat().st_mode) & 0o077)
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise StartupError(f"at-rest keys_file {path}: {reason}") from e
    return KeyringSource(LocalKeyring(parse_keyring(text, str(path))), source, loose, path)


def _generate(path: Path) -> KeyringSource:
    """A one-key development keyring written to `path` with mode 0600 (never overwritten)."""
    kid = "dev-" + datetime.now(UTC).strftime("%Y%m%d")
    key = os.urandom(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return _from_file(path, "dev-file")
    except OSError as e:
        raise StartupError(f"cannot create the at-rest key file {path}: {e.strerror}") from e
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(
            "# TRACEFLOW at-rest keyring (development key, generated): <key id>:<key>, first =\n"
            "# current. Production: set $TRACEFLOW_AT_REST_KEYS or [dlq.at_rest] keys_file.\n"
            f"{kid}:{_b64(key)}\n"
        )
    return KeyringSource(LocalKeyring([(kid, key)]), "generated", path=path)


class Sealer:
    """Seals and opens objects with envelope encryption (blocking CPU work: run in a thread)."""

    def __init__(self, wrapper: KeyWrapper) -> None:
        self._wrapper = wrapper

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        dek = AESGCM.generate_key(bit_length=256)
        kid, wrapped = self._wrapper.wrap(dek)
        nonce = os.urandom(NONCE_BYTES)
        header = orjson.dumps({"kid": kid, "wk": _b64(wrapped), "n": _b64(nonce)})
        prefix = MAGIC + struct.pack(">H", len(header)) + header
        return prefix + AESGCM(dek).encrypt(nonce, plaintext, prefix + context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        kid, wrapped, nonce, prefix = _header(sealed)
        dek = self._wrapper.unwrap(kid, wrapped)
        try:
            return AESGCM(dek).decrypt(nonce, sealed[len(prefix) :], prefix + context)
        except InvalidTag as e:
            raise SealError("the object was altered, or opened under another name") from e

    @staticmethod
    def key_id(sealed: bytes) -> str:
        """The id of the key that wrapped an object (to find objects still on an old key)."""
        return _header(sealed)[0]


def is_sealed(data: bytes) -> bool:
    return data.startswith(MAGIC)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _header(sealed: bytes) -> tuple[str, bytes, bytes, bytes]:
    if not is_sealed(sealed) or len(sealed) < len(MAGIC) + 2:
        raise SealError("not a sealed object")
    (length,) = struct.unpack(">H", sealed[len(MAGIC) : len(MAGIC) + 2])
    end = len(MAGIC) + 2 + length
    try:
        header = orjson.loads(sealed[len(MAGIC) + 2 : end])
        kid, wrapped, nonce = (
            header["kid"],
            base64.b64decode(header["wk"]),
            base64.b64decode(header["n"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as e:
        raise SealError("the object's header is damaged") from e
    if not isinstance(kid, str) or len(nonce) != NONCE_BYTES:
        raise SealError("the object's header is damaged")
    return kid, wrapped, nonce, sealed[:end]
