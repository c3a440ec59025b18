"""The local vault (envelope AES-256-GCM, expiry) and where its keys come from."""

from __future__ import annotations

import base64
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from runner.redact.errors import KeyConfigError
from runner.redact.keys import load_key, parse_key
from runner.redact.vault import SqliteVault
from tests.redact.conftest import VAULT_KEY

TOKEN = "<EMAIL_ADDRESS:0123456789abcdef>"


def test_round_trip_and_ciphertext_at_rest(vault: SqliteVault, tmp_path: Path) -> None:
    """A stored original comes back; the file holds no plaintext."""
    future = int(time.time()) + 3600
    assert vault.put_many("acme", [(TOKEN, "priya@example.com")], future) == 1
    [entry] = vault.lookup(TOKEN)
    assert (entry.tenant, entry.original) == ("acme", "priya@example.com")
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("vault.sqlite3*"))
    assert b"priya@example.com" not in raw


def test_repeated_tokens_are_written_once_and_extend_expiry(vault: SqliteVault) -> None:
    """A token seen again is not rewritten unless its expiry moves out by more than a day."""
    now = int(time.time())
    assert vault.put_many("acme", [(TOKEN, "a@b.co")], now + 100) == 1
    assert vault.put_many("acme", [(TOKEN, "a@b.co")], now + 200) == 0
    assert vault.put_many("acme", [(TOKEN, "a@b.co")], now + 200_000) == 1
    assert vault.lookup(TOKEN)[0].expires_at == now + 200_000
    assert vault.count() == 1


def test_expired_entries_are_invisible_and_purged(vault: SqliteVault) -> None:
    """Past its retention a token no longer resolves and purge removes it."""
    now = int(time.time())
    vault.put_many("acme", [(TOKEN, "a@b.co")], now + 10)
    assert vault.lookup(TOKEN, now=now + 11) == []
    assert vault.purge_expired(now=now + 11) == 1
    assert vault.count() == 0


def test_another_key_cannot_open_the_vault(vault: SqliteVault, tmp_path: Path) -> None:
    """A Runner started with a different key-encryption key refuses the vault."""
    vault.put_many("acme", [(TOKEN, "a@b.co")], int(time.time()) + 60)
    other = SqliteVault(tmp_path / "vault.sqlite3", bytes(32))
    with pytest.raises(KeyConfigError, match="another key"):
        other.open()


def test_rows_are_bound_to_their_token(vault: SqliteVault, tmp_path: Path) -> None:
    """Copying a ciphertext onto another token's row makes it undecryptable (AAD binding)."""
    future = int(time.time()) + 60
    other = "<EMAIL_ADDRESS:fedcba9876543210>"
    vault.put_many("acme", [(TOKEN, "a@b.co"), (other, "c@d.co")], future)
    db = sqlite3.connect(tmp_path / "vault.sqlite3")
    nonce, ct = db.execute("SELECT nonce, ct FROM tokens WHERE token = ?", (TOKEN,)).fetchone()
    db.execute("UPDATE tokens SET nonce = ?, ct = ? WHERE token = ?", (nonce, ct, other))
    db.commit()
    db.close()
    with pytest.raises(KeyConfigError, match="damaged"):
        vault.lookup(other)


def test_tenants_are_kept_apart(vault: SqliteVault) -> None:
    """The same token string under two tenants resolves per tenant."""
    future = int(time.time()) + 60
    vault.put_many("acme", [(TOKEN, "a@acme")], future)
    vault.put_many("globex", [(TOKEN, "a@globex")], future)
    assert [e.original for e in vault.lookup(TOKEN, "globex")] == ["a@globex"]
    assert len(vault.lookup(TOKEN)) == 2


def test_key_precedence_env_then_file_then_generated(tmp_path: Path) -> None:
    """The environment wins over the file; with neither, a 0600 key is generated once."""
    env_key, file_key = bytes([1]) * 32, bytes([2]) * 32
    key_file = tmp_path / "k"
    key_file.write_text(file_key.hex())
    dev = tmp_path / "pii" / "vault.key"
    env = {"K": base64.b64encode(env_key).decode()}
    assert load_key("vault key", "K", key_file, dev, True, env).key == env_key
    assert load_key("vault key", "K", key_file, dev, True, {}).key == file_key
    generated = load_key("vault key", "K", None, dev, True, {})
    assert generated.source == "generated"
    assert stat.S_IMODE(dev.stat().st_mode) == 0o600
    again = load_key("vault key", "K", None, dev, True, {})
    assert (again.source, again.key) == ("dev-file", generated.key)


def test_missing_or_malformed_keys_are_refused(tmp_path: Path) -> None:
    """No key and no generation, or a key of the wrong size, is a start-up error."""
    with pytest.raises(KeyConfigError, match="TRACEFLOW_PII_VAULT_KEY"):
        load_key("vault key", "TRACEFLOW_PII_VAULT_KEY", None, tmp_path / "x", False, {})
    with pytest.raises(KeyConfigError, match="32 bytes"):
        parse_key(b"too-short-passphrase", "vault key")
    with pytest.raises(KeyConfigError, match="cannot read"):
        load_key("vault key", "K", tmp_path / "missing", tmp_path / "x", True, {})
    raw = bytes(range(200, 232))
    assert parse_key(raw, "vault key") == raw


def test_readable_key_files_are_flagged(tmp_path: Path) -> None:
    """A key file that group or others can read is reported (the Runner logs a warning)."""
    key_file = tmp_path / "k"
    key_file.write_text(VAULT_KEY.hex())
    key_file.chmod(0o644)
    assert load_key("vault key", "K", key_file, tmp_path / "d", True, {}).loose_permissions


def test_runner_toml_cannot_hold_a_key() -> None:
    """A key written into the [pii] section is an unknown key, so the config is refused."""
    from runner.config import parse_config
    from runner.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"pii": {"vault_key": VAULT_KEY.hex()}}, {})
    assert parse_config({"pii": {}}, {}).pii.vault_key_env == "TRACEFLOW_PII_VAULT_KEY"
