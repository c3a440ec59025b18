"""runner.toml and environment overrides → one validated, frozen Config."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from runner.config import load_config, parse_config
from runner.errors import ConfigError
from tests.conftest import REPO


def test_example_runner_toml_loads_as_is() -> None:
    """The repo's runner.toml is a complete example that validates with no edits."""
    cfg = load_config(REPO / "runner.toml", environ={})
    assert cfg.buffer.redis_url == "embedded"
    assert cfg.air_gapped
    assert cfg.projects[0].tenant == "acme-bank"


def test_unknown_key_names_the_key() -> None:
    """A typo in a key stops start-up with a message naming section and key."""
    with pytest.raises(ConfigError, match=r"ingest\.lisen: unknown key"):
        parse_config({"ingest": {"lisen": "0.0.0.0:8080"}}, environ={})


def test_unknown_section_is_an_error() -> None:
    """A whole unknown section is refused too."""
    with pytest.raises(ConfigError, match=r"bufer: unknown key"):
        parse_config({"bufer": {}}, environ={})


def test_wrong_type_says_what_was_expected() -> None:
    """A value of the wrong type names the key and the expected type."""
    with pytest.raises(ConfigError, match=r"ingest\.max_events: Input should be a valid integer"):
        parse_config({"ingest": {"max_events": "many"}}, environ={})


def test_bad_redis_url_is_refused() -> None:
    """A Redis URL of an unknown scheme is refused with the accepted forms."""
    with pytest.raises(ConfigError, match=r"buffer\.redis_url: .*embedded"):
        parse_config({"buffer": {"redis_url": "http://x"}}, environ={})


def test_environment_overrides_the_file() -> None:
    """RUNNER_<SECTION>_<KEY> wins over the file and is read as a typed value."""
    cfg = parse_config(
        {"ingest": {"max_events": 10}},
        environ={
            "RUNNER_INGEST_MAX_EVENTS": "500",
            "RUNNER_CONTROL_PLANE_POLICIES_DIR": "/srv/policies",
            "RUNNER_ADMIN_TOKEN": "s3cret",
        },
    )
    assert cfg.ingest.max_events == 500
    assert cfg.control_plane.policies_dir == Path("/srv/policies")
    assert cfg.admin.token == "s3cret"


def test_environment_with_unknown_section_is_an_error() -> None:
    """A misspelt environment variable fails loudly instead of being ignored."""
    with pytest.raises(ConfigError, match="RUNNER_INGETS_LISTEN"):
        parse_config({}, environ={"RUNNER_INGETS_LISTEN": "0.0.0.0:1"})


def test_environment_can_set_projects_as_json() -> None:
    """RUNNER_PROJECTS carries the project list as JSON, e.g. from a Kubernetes secret."""
    digest = hashlib.sha256(b"tf_from_env_key").hexdigest()
    cfg = parse_config(
        {},
        environ={"RUNNER_PROJECTS": f'[{{"id":"p","tenant":"t","api_key_sha256":["{digest}"]}}]'},
    )
    assert cfg.projects[0].key_hashes() == {digest}


def test_api_keys_may_be_hashes() -> None:
    """Plain keys and SHA-256 digests both authenticate; a malformed digest is refused."""
    digest = hashlib.sha256(b"tf_hashed_key_1").hexdigest()
    cfg = parse_config(
        {
            "projects": [
                {
                    "id": "p",
                    "tenant": "t",
                    "api_keys": ["tf_plain_key_1"],
                    "api_key_sha256": [digest],
                }
            ]
        },
        environ={},
    )
    assert cfg.projects[0].key_hashes() == {
        digest,
        hashlib.sha256(b"tf_plain_key_1").hexdigest(),
    }
    with pytest.raises(ConfigError, match=r"projects\.0\.api_key_sha256\.0"):
        parse_config({"projects": [{"id": "p", "tenant": "t", "api_key_sha256": ["xyz"]}]}, {})


def test_duplicate_project_ids_are_refused() -> None:
    """Two projects with one id is a configuration error."""
    with pytest.raises(ConfigError, match="listed twice"):
        parse_config(
            {"projects": [{"id": "p", "tenant": "t"}, {"id": "p", "tenant": "u"}]}, environ={}
        )


def test_config_is_frozen() -> None:
    """The loaded config cannot be changed after start-up."""
    cfg = parse_config({}, environ={})
    with pytest.raises(ValidationError):
        cfg.ingest.max_events = 5


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    """`runner serve` with a bad key prints one clear line and exits 2, no traceback."""
    bad = tmp_path / "runner.toml"
    bad.write_text('[buffer]\nredis_ulr = "embedded"\n')
    result = _cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert "buffer.redis_ulr: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_config_file_exits_2(tmp_path: Path) -> None:
    """A --config path that does not exist is a configuration error, exit 2."""
    result = _cli("check-config", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_cli_help_lists_every_command() -> None:
    """`runner --help` lists each command with its description."""
    result = _cli("--help")
    assert result.returncode == 0
    for command in ("serve", "status", "drain", "version", "check-config"):
        assert command in result.stdout


def test_cli_version() -> None:
    """`runner version` prints the package version."""
    from runner import __version__

    result = _cli("version")
    assert result.stdout.strip() == __version__


def test_secret_variables_named_by_env_settings_are_not_config_keys() -> None:
    """A variable named by a `*_env` setting (e.g. the vault key) is a secret, not an override."""
    cfg = parse_config(
        {"pii": {"vault_key_env": "RUNNER_PII_VAULT_KEY"}},
        environ={"RUNNER_PII_VAULT_KEY": "00" * 32, "RUNNER_CONTROL_PLANE_TOKEN": "x"},
    )
    assert cfg.pii.vault_key_env == "RUNNER_PII_VAULT_KEY"
