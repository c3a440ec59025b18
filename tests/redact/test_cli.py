"""`runner detokenize`: the only way back from a token, with admin credentials and an audit."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import typer
from structlog.testing import capture_logs
from typer.testing import CliRunner

from runner.policy.model import PiiPolicy
from runner.redact.cli import detokenize
from runner.redact.engine import DetectionEngine
from runner.redact.keys import load_key
from runner.redact.messages import BatchRequest
from runner.redact.rules import fingerprint
from runner.redact.settings import RedactSettings
from runner.redact.tokens import Tokenizer, TokenKeys
from runner.redact.vault import SqliteVault
from runner.redact.worker import WorkerState
from tests.redact.conftest import TOKEN_KEY
from tests.redact.support import Dom

EMAIL = "priya.sharma@example.com"
ADMIN = "admin-token-for-tests-0001"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("detokenize")(detokenize)
    app.command("noop")(lambda: None)  # two commands, so typer keeps the sub-command name
    return app


def _tokenize(engine: DetectionEngine, data_dir: Path) -> str:
    """Redact a page the way the Runner does, with the dev vault key under data_dir."""
    key_file = data_dir / "pii" / "vault.key"
    key = load_key("vault key", "UNSET_VAULT_KEY_VAR", None, key_file, True, {})
    vault = SqliteVault(data_dir / "pii" / "vault.sqlite3", key.key)
    vault.open()
    state = WorkerState(RedactSettings(), engine, Tokenizer(TokenKeys(TOKEN_KEY)), vault)
    dom = Dom()
    pii = PiiPolicy(text="detect")
    out = state.redact(
        BatchRequest(
            "acme", "s", pii, fingerprint(pii), 30, [dom.snapshot(dom.el("p", {}, dom.text(EMAIL)))]
        )
    )
    vault.close()
    body = orjson.loads(out.events_json)[0]["data"]["node"]["childNodes"][1]["childNodes"][1]
    token: str = body["childNodes"][0]["childNodes"][0]["textContent"]
    return token


@pytest.fixture
def setup(tmp_path: Path, engine: DetectionEngine, clean_env: None) -> tuple[Path, str]:
    """A runner.toml with an admin token and a vault holding one token."""
    data_dir = tmp_path / "data"
    config = tmp_path / "runner.toml"
    config.write_text(f'[runner]\ndata_dir = "{data_dir}"\n[admin]\ntoken = "{ADMIN}"\n')
    return config, _tokenize(engine, data_dir)


def test_detokenize_prints_only_the_original_and_audits(setup: tuple[Path, str]) -> None:
    """With the admin token the original is printed alone; the audit event names neither."""
    config, token = setup
    with capture_logs() as logs:
        result = CliRunner().invoke(
            _app(),
            ["detokenize", token, "--config", str(config)],
            env={"RUNNER_ADMIN_TOKEN": ADMIN},
        )
    assert result.exit_code == 0, result.output
    assert result.stdout == EMAIL + "\n"
    [entry] = [e for e in logs if e["event"] == "pii.detokenize"]
    assert entry["outcome"] == "revealed"
    assert entry["tenant"] == "acme"
    assert token not in repr(logs)
    assert EMAIL not in repr(logs)


@pytest.mark.parametrize("given", ["wrong-token", ""])
def test_wrong_or_missing_admin_token_is_refused(setup: tuple[Path, str], given: str) -> None:
    """Without the right admin token nothing is revealed."""
    config, token = setup
    result = CliRunner().invoke(
        _app(), ["detokenize", token, "--config", str(config)], env={"RUNNER_ADMIN_TOKEN": given}
    )
    assert result.exit_code == 3
    assert EMAIL not in result.output


def test_the_environment_cannot_supply_the_expected_admin_token(
    setup: tuple[Path, str], tmp_path: Path
) -> None:
    """RUNNER_ADMIN_TOKEN is compared with runner.toml, never used as the configured value."""
    _, token = setup
    bare = tmp_path / "bare.toml"
    bare.write_text(f'[runner]\ndata_dir = "{tmp_path / "data"}"\n')
    result = CliRunner().invoke(
        _app(), ["detokenize", token, "--config", str(bare)], env={"RUNNER_ADMIN_TOKEN": "x"}
    )
    assert result.exit_code == 3
    assert EMAIL not in result.output


def test_unknown_and_malformed_tokens(setup: tuple[Path, str]) -> None:
    """An unknown token is not found; something that is not a token is a usage error."""
    config, _ = setup
    env = {"RUNNER_ADMIN_TOKEN": ADMIN}
    unknown = CliRunner().invoke(
        _app(), ["detokenize", "<EMAIL_ADDRESS:0000000000000000>", "--config", str(config)], env=env
    )
    assert unknown.exit_code == 1
    bad = CliRunner().invoke(_app(), ["detokenize", "priya", "--config", str(config)], env=env)
    assert bad.exit_code == 2
