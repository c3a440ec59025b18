"""`runner policy show | verify | keygen | sign`, run as an operator would."""

from __future__ import annotations

import stat
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from runner.policy import errors as r
from runner.policy.cli import describe_startup, policy_app, verify_path
from runner.policy.errors import PolicyRefused
from runner.policy.keys import (
    parse_public_key,
    public_text,
    read_private_key,
    thumbprint_kid,
    write_private_key,
)
from runner.policy.lastgood import LastGood, atomic_write
from runner.policy.settings import ControlPlaneSettings
from tests.policy.support import Signer, iso, payload, tampered

ACME = "version = 4\nforward = false\n[pii]\ntext = 'detect'\n"


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def pinned(signer: Signer, folder: Path, **extra: object) -> ControlPlaneSettings:
    return ControlPlaneSettings.model_validate(
        {"keys": signer.pins, "policies_dir": folder, **extra}
    )


def test_keygen_writes_a_private_key_only_its_owner_reads(cli: CliRunner, tmp_path: Path) -> None:
    """keygen writes a 0600 PEM key and prints the kid and public key to pin."""
    out = tmp_path / "site.key"
    result = cli.invoke(policy_app, ["keygen", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = read_private_key(out)
    kid = thumbprint_kid(key.public_key())
    assert f"kid: {kid}" in result.stdout
    public_line = next(
        line for line in result.stdout.splitlines() if line.startswith("public key:")
    )
    assert parse_public_key(public_line.split(": ", 1)[1]) == key.public_key()
    again = cli.invoke(policy_app, ["keygen", "--out", str(out)])
    assert again.exit_code == 2
    assert "already exists" in again.stderr


def test_sign_then_verify_a_policy_file(cli: CliRunner, tmp_path: Path) -> None:
    """A .toml signed with a keygen key verifies against its pin; an edit after signing fails."""
    key_path = tmp_path / "site.key"
    assert (
        cli.invoke(policy_app, ["keygen", "--out", str(key_path), "--kid", "site-1"]).exit_code == 0
    )
    key = read_private_key(key_path)
    folder = tmp_path / "policies"
    folder.mkdir()
    toml = folder / "acme-bank.toml"
    toml.write_text(ACME)
    result = cli.invoke(policy_app, ["sign", str(toml), "--key", str(key_path), "--kid", "site-1"])
    assert result.exit_code == 0, result.output
    assert (folder / "acme-bank.toml.jws").exists()

    settings = ControlPlaneSettings.model_validate(
        {"keys": {"site-1": public_text(key.public_key())}, "require_signed_files": True}
    )
    checked = verify_path(toml, settings)
    assert (checked["tenant"], checked["version"], checked["signed_by"]) == (
        "acme-bank",
        4,
        "site-1",
    )
    assert verify_path(folder / "acme-bank.toml.jws", settings)["signed_by"] == "site-1"
    toml.write_text(ACME.replace("false", "true"))
    with pytest.raises(PolicyRefused) as caught:
        verify_path(toml, settings)
    assert caught.value.reason == r.BAD_SIGNATURE


def test_sign_refuses_a_file_the_runner_would_refuse(cli: CliRunner, tmp_path: Path) -> None:
    """sign does not sign a policy that does not validate (or has expired)."""
    key_path = tmp_path / "site.key"
    cli.invoke(policy_app, ["keygen", "--out", str(key_path)])
    bad = tmp_path / "acme-bank.toml"
    bad.write_text("[features]\nconsle = false\n")
    result = cli.invoke(policy_app, ["sign", str(bad), "--key", str(key_path)])
    assert result.exit_code == 1
    assert "schema" in result.stderr
    expired = tmp_path / "policy.json"
    expired.write_bytes(orjson.dumps(payload(3, expires_at=iso(-10))))
    result = cli.invoke(policy_app, ["sign", str(expired), "--key", str(key_path)])
    assert result.exit_code == 1
    assert "expired" in result.stderr
    assert not (tmp_path / "acme-bank.toml.jws").exists()


def test_sign_json_payload_makes_a_control_plane_jws(
    cli: CliRunner, tmp_path: Path, signer: Signer
) -> None:
    """A signed JSON payload is the wire form: it verifies as a compact JWS."""
    key_path = tmp_path / "cp.key"
    write_private_key(key_path, signer.key)
    body = tmp_path / "policy.json"
    body.write_bytes(orjson.dumps(payload(12)))
    result = cli.invoke(
        policy_app, ["sign", str(body), "--key", str(key_path), "--kid", signer.kid]
    )
    assert result.exit_code == 0, result.output
    checked = verify_path(tmp_path / "policy.json.jws", pinned(signer, tmp_path))
    assert (checked["version"], checked["signed_by"]) == (12, signer.kid)


def test_verify_refuses_a_tampered_jws(tmp_path: Path, signer: Signer) -> None:
    """verify reports a tampered compact JWS with its reason."""
    path = tmp_path / "last-good.jws"
    path.write_text(tampered(signer.token(3), version=30))
    with pytest.raises(PolicyRefused) as caught:
        verify_path(path, pinned(signer, tmp_path))
    assert caught.value.reason == r.BAD_SIGNATURE


def test_verify_command_exit_codes(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify exits 0 for a good unsigned file and 1 with the reason for a bad one."""
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "acme-bank.toml"
    good.write_text(ACME)
    result = cli.invoke(policy_app, ["verify", str(good)])
    assert result.exit_code == 0, result.output
    assert "OK: policy file, version 4, unsigned" in result.stdout
    bad = tmp_path / "other-bank.toml"
    bad.write_text("version = 'x'\n")
    result = cli.invoke(policy_app, ["verify", str(bad)])
    assert result.exit_code == 1
    assert "REFUSED (schema)" in result.stderr


def test_show_explains_where_the_policy_comes_from(tmp_path: Path, signer: Signer) -> None:
    """show follows start-up order and says which source won and what was refused."""
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "acme-bank.toml").write_text(ACME)
    data_dir = tmp_path / "data"
    with_cp = pinned(signer, folder, endpoint="https://cp.example")

    report = describe_startup(with_cp, data_dir, "acme-bank")
    assert (report["source"], report["version"]) == ("files", 4)
    assert report["policy"]["forward"] is False
    assert "the tenant's own entry" in report["entry"]

    atomic_write(LastGood(data_dir).path, signer.token(9).encode())
    report = describe_startup(with_cp, data_dir, "nobody")
    assert (report["source"], report["version"], report["kid"]) == ("last_good", 9, signer.kid)
    assert report["entry"] == "the built-in strict default"
    assert "running Runner may hold a newer policy" in report["note"]

    LastGood(data_dir).path.write_text(tampered(signer.token(9), version=10))
    report = describe_startup(with_cp, data_dir)
    assert report["source"] == "files"
    assert report["refused"][0]["reason"] == r.BAD_SIGNATURE
    assert sorted(report["tenants"]) == ["acme-bank"]


def test_show_command_prints_the_tenant_policy(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`runner policy show --offline --tenant` prints the source, the note and the rules."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "acme-bank.toml").write_text(ACME)
    (tmp_path / "runner.toml").write_text(f'[runner]\ndata_dir = "{tmp_path / "data"}"\n')
    show = ["show", "--config", "runner.toml", "--offline"]  # never a Runner on this machine
    result = cli.invoke(policy_app, [*show, "--tenant", "acme-bank"])
    assert result.exit_code == 0, result.output
    assert "policy version 4 from files" in result.stdout
    assert "computed from disk" in result.stdout
    assert '"forward": false' in result.stdout
    as_json = cli.invoke(policy_app, [*show, "--json"])
    assert orjson.loads(as_json.stdout)["tenants"]["acme-bank"]["pii"]["text"] == "detect"
