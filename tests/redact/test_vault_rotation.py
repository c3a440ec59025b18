"""Rotating the vault's key-encryption key: a keyring, re-wrapping, and the operator command."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from structlog.testing import capture_logs
from typer.testing import CliRunner, Result

from runner.redact import Redactor, RedactSettings, RedactStartupError
from runner.redact.cli import detokenize
from runner.redact.errors import KeyConfigError
from runner.redact.keys import load_key, parse_keys
from runner.redact.rotate import pii_app
from runner.redact.vault import SqliteVault
from runner.telemetry.audit import verify

TOKEN = "<EMAIL_ADDRESS:0123456789abcdef>"
OTHER = "<EMAIL_ADDRESS:fedcba9876543210>"
ADMIN = "admin-token-for-tests-0001"
KEY_ENV = "TRACEFLOW_PII_VAULT_KEY"
KEK1, KEK2 = bytes([1]) * 32, bytes([2]) * 32


def later() -> int:
    return int(time.time()) + 3600


def originals(vault: SqliteVault) -> dict[str, str]:
    return {e.tenant: e.original for t in (TOKEN, OTHER) for e in vault.lookup(t)}


def test_keyring_keeps_old_data_readable_and_wraps_new_keys_under_the_current(
    tmp_path: Path,
) -> None:
    """Under (KEK2, KEK1) old data reads and new keys use KEK2; KEK1 can go only after rewrap."""
    path = tmp_path / "vault.sqlite3"
    first = SqliteVault(path, KEK1)
    first.open()
    first.put_many("acme", [(TOKEN, "a@acme.example")], later())
    kek1_id = first.current_key_id
    first.close()

    rotated = SqliteVault(path, [KEK2, KEK1])
    rotated.open()
    rotated.put_many("globex", [(OTHER, "b@globex.example")], later())
    assert originals(rotated) == {"acme": "a@acme.example", "globex": "b@globex.example"}
    kek2_id = rotated.current_key_id
    assert rotated.key_usage() == {kek1_id: 1, kek2_id: 1}
    rotated.close()

    with pytest.raises(KeyConfigError, match=f"another key.*{kek1_id}"):
        SqliteVault(path, KEK2).open()

    rewrap = SqliteVault(path, [KEK2, KEK1])
    rewrap.open()
    report = rewrap.rewrap()
    assert (report.rewrapped, report.before, report.current) == (
        1,
        {kek1_id: 1, kek2_id: 1},
        kek2_id,
    )
    assert rewrap.rewrap().rewrapped == 0, "re-running changes nothing"
    rewrap.close()

    retired = SqliteVault(path, KEK2)
    retired.open()
    assert originals(retired) == {"acme": "a@acme.example", "globex": "b@globex.example"}
    assert retired.key_usage() == {kek2_id: 2}
    retired.close()
    with pytest.raises(KeyConfigError, match="another key"):
        SqliteVault(path, KEK1).open()


def test_vault_from_before_rotation_support_is_migrated(tmp_path: Path) -> None:
    """A vault whose data keys carry no KEK id (older schema) opens, rotates and re-wraps."""
    path = tmp_path / "vault.sqlite3"
    old = SqliteVault(path, KEK1)
    old.open()
    old.put_many("acme", [(TOKEN, "a@acme.example")], later())
    old.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE tenant_keys DROP COLUMN kek")
    db.commit()
    db.close()

    vault = SqliteVault(path, [KEK2, KEK1])
    vault.open()
    assert originals(vault) == {"acme": "a@acme.example"}
    assert vault.rewrap().rewrapped == 1
    vault.close()
    retired = SqliteVault(path, KEK2)
    retired.open()
    assert originals(retired) == {"acme": "a@acme.example"}
    retired.close()


def test_keyrings_are_parsed_current_first_and_duplicates_refused(tmp_path: Path) -> None:
    """A key file may hold several keys (one per line, or commas, with comments), current first."""
    key_file = tmp_path / "vault.key"
    key_file.write_text(f"# rotated today\n{KEK2.hex()}  # current\n{KEK1.hex()}\n")
    loaded = load_key("vault key", "UNSET_VAR", key_file, tmp_path / "d", False, {}, many=True)
    assert loaded.keys == (KEK2, KEK1)
    assert parse_keys(f"{KEK2.hex()},{KEK1.hex()}".encode(), "vault key", True) == (KEK2, KEK1)
    with pytest.raises(KeyConfigError, match="twice"):
        parse_keys(f"{KEK1.hex()}\n{KEK1.hex()}".encode(), "vault key", True)
    with pytest.raises(KeyConfigError, match="32 bytes"):
        parse_keys(f"{KEK2.hex()},{KEK1.hex()}".encode(), "token key", False)
    with pytest.raises(KeyConfigError, match="empty"):
        parse_keys(b"# nothing here\n", "vault key", True)


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("detokenize")(detokenize)
    app.add_typer(pii_app, name="pii")
    return app


Logs = list[MutableMapping[str, Any]]


def _run(args: list[str], config: Path, keys: list[bytes], logs: Logs | None = None) -> Result:
    """Invoke a command with this vault keyring; its log events go to `logs`."""
    env = {KEY_ENV: ",".join(k.hex() for k in keys), "RUNNER_ADMIN_TOKEN": ADMIN}
    with capture_logs() as captured:  # else the CLI points structlog at CliRunner's stderr
        result = CliRunner().invoke(_app(), [*args, "--config", str(config)], env=env)
    if logs is not None:
        logs.extend(captured)
    return result


def _reveal(config: Path, keys: list[bytes]) -> Result:
    return _run(["detokenize", TOKEN], config, keys)


def test_rotate_vault_key_command_lets_the_old_key_be_removed(
    tmp_path: Path, clean_env: None
) -> None:
    """After `runner pii rotate-vault-key` KEK1 can be removed and detokenize works; audited."""
    data_dir = tmp_path / "data"
    config = tmp_path / "runner.toml"
    config.write_text(f'[runner]\ndata_dir = "{data_dir}"\n[admin]\ntoken = "{ADMIN}"\n')
    vault = SqliteVault(data_dir / "pii" / "vault.sqlite3", KEK1)
    vault.open()
    vault.put_many("acme", [(TOKEN, "priya@example.com")], later())
    vault.close()

    assert _reveal(config, [KEK2, KEK1]).stdout == "priya@example.com\n"
    early = _reveal(config, [KEK2])
    assert early.exit_code == 1
    assert "another key" in early.output

    checked = _run(["pii", "rotate-vault-key", "--dry-run"], config, [KEK2, KEK1])
    assert checked.exit_code == 0, checked.output
    assert "tenant data keys per key: " in checked.stdout
    assert _reveal(config, [KEK2]).exit_code == 1, "a dry run changes nothing"

    logs: Logs = []
    rotated = _run(["pii", "rotate-vault-key"], config, [KEK2, KEK1], logs)
    assert rotated.exit_code == 0, rotated.output
    assert "re-wrapped 1 tenant data key(s)" in rotated.stdout
    assert KEK1.hex() not in rotated.output
    assert KEK2.hex() not in rotated.output
    [event] = [e for e in logs if e["event"] == "pii.vault_key_rotated"]
    assert event["rewrapped"] == 1
    assert KEK1.hex() not in repr(logs)
    assert KEK2.hex() not in repr(logs)

    assert _reveal(config, [KEK2]).stdout == "priya@example.com\n"
    refused = _reveal(config, [os.urandom(32)])
    assert refused.exit_code == 1
    assert "priya" not in refused.output

    audit = data_dir / "audit.log"
    records = [orjson.loads(line) for line in audit.read_bytes().splitlines()]
    rotations = [r for r in records if r["action"] == "vault_key_rotated"]
    assert [(r["dry_run"], r["outcome"]) for r in rotations] == [
        (True, "checked"),
        (False, "rewrapped"),
    ]
    assert rotations[1]["rewrapped"] == 1
    assert KEK1.hex() not in audit.read_text()
    assert verify(audit)[0], "the rotation records keep the audit chain intact"


def test_rotate_without_a_needed_key_fails_clearly(tmp_path: Path, clean_env: None) -> None:
    """Rotating without a KEK the vault needs exits 2 naming it; with no vault it exits 1."""
    data_dir = tmp_path / "data"
    config = tmp_path / "runner.toml"
    config.write_text(f'[runner]\ndata_dir = "{data_dir}"\n')
    vault = SqliteVault(data_dir / "pii" / "vault.sqlite3", KEK1)
    vault.open()
    vault.put_many("acme", [(TOKEN, "priya@example.com")], later())
    kek1_id = vault.current_key_id
    vault.close()
    result = _run(["pii", "rotate-vault-key"], config, [KEK2])
    assert result.exit_code == 2
    assert f"needs vault key {kek1_id}" in result.output
    assert "Traceback" not in result.output
    fresh = tmp_path / "fresh.toml"
    fresh.write_text(f'[runner]\ndata_dir = "{tmp_path / "empty"}"\n')
    no_vault = _run(["pii", "rotate-vault-key"], fresh, [KEK2])
    assert no_vault.exit_code == 1
    assert "no vault" in no_vault.output


async def test_runner_started_with_a_wrong_kek_refuses_to_start(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PII engine (what `runner serve` starts) refuses a vault that its KEK cannot open."""
    vault = SqliteVault(tmp_path / "pii" / "vault.sqlite3", KEK1)
    vault.open()
    vault.put_many("acme", [(TOKEN, "priya@example.com")], later())
    vault.close()
    monkeypatch.setenv(KEY_ENV, KEK2.hex())
    redactor = Redactor(RedactSettings(workers=1), tmp_path)
    with pytest.raises(RedactStartupError, match="it was created with another key"):
        await redactor.start()
