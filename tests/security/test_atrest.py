"""Encryption at rest: sealed objects are unreadable without the key and survive key rotation."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from runner.errors import StartupError
from runner.security.atrest import (
    LocalKeyring,
    Sealer,
    SealError,
    is_sealed,
    load_keyring,
    parse_keyring,
)
from runner.security.settings import AtRestSettings

CHUNK = b'{"chunk_id":"c1","tenant":"acme-bank"}\n{"event":{"type":3}}\n' * 50
NAME = b"dlq/acme-bank/c1.zst"


def key() -> bytes:
    return os.urandom(32)


def sealer(*keys: tuple[str, bytes]) -> Sealer:
    return Sealer(LocalKeyring(list(keys)))


def test_round_trip_and_ciphertext_hides_content() -> None:
    """A sealed object opens to its content, and its bytes do not contain it."""
    k1 = ("k1", key())
    sealed = sealer(k1).seal(CHUNK, NAME)
    assert is_sealed(sealed)
    assert b"acme-bank" not in sealed
    assert b"chunk_id" not in sealed
    assert sealer(k1).open(sealed, NAME) == CHUNK


def test_unreadable_without_the_key() -> None:
    """An object cannot be opened with another key under the same id, or without its key."""
    sealed = sealer(("k1", key())).seal(CHUNK, NAME)
    with pytest.raises(SealError, match="does not open"):
        sealer(("k1", key())).open(sealed, NAME)
    with pytest.raises(SealError, match="not in the keyring"):
        sealer(("k2", key())).open(sealed, NAME)


def test_tampered_or_moved_object_refused() -> None:
    """A flipped bit, or the object opened under another name or tenant, is refused."""
    k1 = ("k1", key())
    sealed = bytearray(sealer(k1).seal(CHUNK, NAME))
    with pytest.raises(SealError, match="under another name"):
        sealer(k1).open(bytes(sealed), b"dlq/other-bank/c1.zst")
    sealed[-20] ^= 1
    with pytest.raises(SealError, match="altered"):
        sealer(k1).open(bytes(sealed), NAME)
    with pytest.raises(SealError, match="not a sealed object"):
        sealer(k1).open(CHUNK, NAME)


def test_key_rotation() -> None:
    """After rotation new objects use the new key and old ones stay readable until it is removed."""
    k1, k2 = ("2025-01", key()), ("2025-07", key())
    old = sealer(k1).seal(CHUNK, NAME)
    rotated = sealer(k2, k1)
    new = rotated.seal(CHUNK, NAME)
    assert Sealer.key_id(new) == "2025-07"
    assert Sealer.key_id(old) == "2025-01"
    assert rotated.open(old, NAME) == CHUNK
    assert rotated.open(new, NAME) == CHUNK
    retired = sealer(k2)
    assert retired.open(new, NAME) == CHUNK
    with pytest.raises(SealError, match="rotated out"):
        retired.open(old, NAME)


def test_keyring_from_environment_and_file(tmp_path: Path) -> None:
    """Keys come from the environment first, else a key file (hex or base64, first current)."""
    a, b = key(), key()
    env = {"TRACEFLOW_AT_REST_KEYS": f"new:{a.hex()}, old:{base64.b64encode(b).decode()}"}
    loaded = load_keyring(AtRestSettings(), env)
    assert (loaded.source, loaded.keyring.kids) == ("env", ("new", "old"))
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2025-07\nnew:{a.hex()}\nold:{b.hex()}\n")
    path.chmod(0o644)
    from_file = load_keyring(AtRestSettings(keys_file=path), {})
    assert from_file.keyring.current_kid == "new"
    assert from_file.loose_permissions is True
    sealed = Sealer(loaded.keyring).seal(CHUNK, NAME)
    assert Sealer(from_file.keyring).open(sealed, NAME) == CHUNK


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("k1:" + "ab" * 16, "32 bytes"),
        ("k1:not-a-key!", "hex characters or base64"),
        ("no-separator", "entries"),
        ("", "empty"),
    ],
)
def test_bad_keyrings_refused(text: str, error: str) -> None:
    """Short keys, undecodable keys, malformed entries and empty keyrings stop start-up."""
    with pytest.raises(StartupError, match=error):
        LocalKeyring(parse_keyring(text, "$KEYS"))


def test_duplicate_key_id_refused() -> None:
    """A key id named twice would make old objects ambiguous; it is refused."""
    with pytest.raises(StartupError, match="twice"):
        LocalKeyring([("k", key()), ("k", key())])


def test_no_key_source_refused() -> None:
    """Without a key in the environment or a file, at-rest encryption cannot start."""
    with pytest.raises(StartupError, match="TRACEFLOW_AT_REST_KEYS or keys_file"):
        load_keyring(AtRestSettings(), {})


def test_development_keyring_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    """With no key configured a one-key dev keyring is written 0600 once and read back after."""
    dev = tmp_path / "data" / "at-rest.keys"
    created = load_keyring(AtRestSettings(), {}, dev)
    assert (created.source, created.path) == ("generated", dev)
    assert stat.S_IMODE(dev.stat().st_mode) == 0o600
    again = load_keyring(AtRestSettings(), {}, dev)
    assert (again.source, again.keyring.kids) == ("dev-file", created.keyring.kids)
    sealed = Sealer(created.keyring).seal(CHUNK, NAME)
    assert Sealer(again.keyring).open(sealed, NAME) == CHUNK
    env = {"TRACEFLOW_AT_REST_KEYS": f"prod:{key().hex()}"}
    assert load_keyring(AtRestSettings(), env, dev).source == "env", "a configured key wins"
    with pytest.raises(StartupError, match="TRACEFLOW_AT_REST_KEYS or keys_file"):
        load_keyring(AtRestSettings(generate_dev_key=False), {}, tmp_path / "none.keys")
    assert not (tmp_path / "none.keys").exists()


def test_keyring_comments_may_hold_commas_and_colons() -> None:
    """`# comments` are skipped up to the end of the line, whatever they contain."""
    text = f"# rotated 2025-07: new first, old kept\nnew:{key().hex()}  # current, since July\n"
    assert [kid for kid, _ in parse_keyring(text, "keys")] == ["new"]
