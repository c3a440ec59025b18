"""The local policies/ folder: readable TOML, optional signatures, live reloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.policy import errors as r
from runner.policy.errors import PolicyRefused
from runner.policy.files import load_folder
from runner.policy.jws import Verifier, sign_detached
from runner.policy.model import SOURCE_BUILTIN, SOURCE_CONTROL_PLANE, SOURCE_FILES, STRICT_DEFAULT
from runner.policy.store import PolicyStore
from runner.policy.sync import UNCHANGED
from tests.conftest import REPO
from tests.policy.conftest import MakeManager, settings
from tests.policy.support import Audit, ControlPlane, Signer
from tests.support import until

ACME = """
version = 2
retention_days = 90
[sampling]
session_rate = 0.25
[pii]
text = "detect"
"""


def verifier(signer: Signer) -> Verifier:
    return Verifier({signer.kid: signer.key.public_key()})


def refused(folder: Path, signer: Signer | None = None, require_signed: bool = False) -> str:
    with pytest.raises(PolicyRefused) as caught:
        load_folder(folder, verifier(signer) if signer else None, require_signed)
    return caught.value.reason


def sign_file(path: Path, signer: Signer, name: str | None = None) -> None:
    sig = sign_detached(path.read_bytes(), signer.key, name or path.name, signer.kid)
    path.with_name(path.name + ".jws").write_text(sig + "\n")


def test_shipped_default_is_the_strict_builtin() -> None:
    """The repo's policies/default.toml is exactly the strict built-in default; examples parse."""
    folder = load_folder(REPO / "policies", None)
    assert folder is not None
    assert folder.policy.tenants["default"] == STRICT_DEFAULT
    acme = folder.policy.for_tenant("acme-bank")
    assert acme.pii.text == "detect"
    assert acme.pii.action_for("CREDIT_CARD") == "redact"
    assert folder.policy.for_tenant("unknown-bank") == STRICT_DEFAULT


def test_folder_version_is_the_highest_file_version(policies_dir: Path) -> None:
    """The folder's version is the highest `version` among its files."""
    (policies_dir / "default.toml").write_text("version = 5\n")
    (policies_dir / "acme-bank.toml").write_text(ACME)
    folder = load_folder(policies_dir, None)
    assert folder is not None
    assert folder.policy.version == 5
    assert folder.policy.source == SOURCE_FILES


def test_tenant_file_is_complete_on_its_own(policies_dir: Path) -> None:
    """A key missing from a tenant file takes the strict built-in value, not default.toml's."""
    (policies_dir / "default.toml").write_text("[features]\nnetwork_bodies = true\n")
    (policies_dir / "acme-bank.toml").write_text(ACME)
    folder = load_folder(policies_dir, None)
    assert folder is not None
    acme = folder.policy.for_tenant("acme-bank")
    assert acme.features == STRICT_DEFAULT.features
    assert (acme.retention_days, acme.sampling.session_rate) == (90, 0.25)
    assert folder.policy.for_tenant("other").features.network_bodies is True


@pytest.mark.parametrize(
    "text",
    [
        "[features]\nconsle = false\n",  # misspelt key
        "retention = 30\n",  # unknown top-level key
        "version = -1\n",
        'version = "2"\n',
        "[pii]\ntext = 'everything'\n",
        "[sampling]\nsession_rate = 1.5\n",
        "this is not toml\n",
    ],
)
def test_a_bad_file_refuses_the_whole_folder(policies_dir: Path, text: str) -> None:
    """Typos, unknown keys and bad values are errors; one bad file refuses the folder."""
    (policies_dir / "default.toml").write_text("version = 1\n")
    (policies_dir / "acme-bank.toml").write_text(text)
    assert refused(policies_dir) == r.SCHEMA


def test_file_name_must_be_a_tenant_id(policies_dir: Path) -> None:
    """A policy file whose name is not a valid tenant id is refused."""
    (policies_dir / "acme bank.toml").write_text("version = 1\n")
    assert refused(policies_dir) == r.SCHEMA


def test_empty_or_missing_folder_has_no_policy(tmp_path: Path) -> None:
    """No folder, or no .toml in it, means no policy from files (not an error)."""
    assert load_folder(tmp_path / "nope", None) is None
    (tmp_path / "README.md").write_text("notes")
    assert load_folder(tmp_path, None) is None


def test_signed_file_verifies(policies_dir: Path, signer: Signer) -> None:
    """A file with a valid detached signature loads and records the signing kid."""
    path = policies_dir / "acme-bank.toml"
    path.write_text(ACME)
    sign_file(path, signer)
    folder = load_folder(policies_dir, verifier(signer), require_signed=True)
    assert folder is not None
    assert folder.signed
    assert folder.files[0].signed_by == signer.kid


def test_signed_file_edited_after_signing_is_refused(policies_dir: Path, signer: Signer) -> None:
    """Editing a signed file without re-signing it refuses the folder (bad signature)."""
    path = policies_dir / "acme-bank.toml"
    path.write_text(ACME)
    sign_file(path, signer)
    path.write_text(ACME.replace("0.25", "1.0"))
    assert refused(policies_dir, signer) == r.BAD_SIGNATURE


def test_signed_file_renamed_to_another_tenant_is_refused(
    policies_dir: Path, signer: Signer
) -> None:
    """A signature made for one tenant's file does not cover the same bytes under another name."""
    path = policies_dir / "other-bank.toml"
    path.write_text(ACME)
    sign_file(path, signer, name="acme-bank.toml")
    assert refused(policies_dir, signer) == r.WRONG_FILE


def test_unsigned_file_is_refused_when_signatures_are_required(
    policies_dir: Path, signer: Signer
) -> None:
    """With require_signed_files, a file without a signature refuses the folder."""
    (policies_dir / "acme-bank.toml").write_text(ACME)
    assert refused(policies_dir, signer, require_signed=True) == r.UNSIGNED


def test_file_signed_by_unpinned_key_is_refused(policies_dir: Path, signer: Signer) -> None:
    """A signature by a key that is not pinned refuses the folder."""
    path = policies_dir / "acme-bank.toml"
    path.write_text(ACME)
    sign_file(path, Signer(kid="site-rogue"))
    assert refused(policies_dir, signer) == r.UNKNOWN_KID


async def test_folder_edit_is_applied_live(policies_dir: Path, make_manager: MakeManager) -> None:
    """An edit to the folder is picked up by the watcher and swapped in whole."""
    (policies_dir / "acme-bank.toml").write_text(ACME)
    store = PolicyStore()
    await make_manager(settings("", None, policies_dir), store=store)
    assert store.current.version == 2
    (policies_dir / "acme-bank.toml").write_text(ACME.replace("version = 2", "version = 3"))
    await until(lambda: store.current.version == 3, what="the folder edit to apply")
    assert store.current.for_tenant("acme-bank").retention_days == 90


async def test_broken_edit_keeps_the_policy_in_force(
    policies_dir: Path, make_manager: MakeManager
) -> None:
    """A half-typed file is refused (counted, audited) and the policy in force stays."""
    (policies_dir / "acme-bank.toml").write_text(ACME)
    store = PolicyStore()
    audit = Audit()
    manager = await make_manager(settings("", None, policies_dir), store=store, audit=audit)
    in_force = store.current
    (policies_dir / "acme-bank.toml").write_text("version = 3\n[pii\n")
    await until(lambda: manager.refusals[r.SCHEMA] >= 1, what="the broken edit to be refused")
    assert store.current is in_force
    assert manager.status()["files_error"] is not None
    assert audit.events("policy.refused")[0]["source"] == SOURCE_FILES


async def test_lower_folder_version_is_refused(
    policies_dir: Path, make_manager: MakeManager
) -> None:
    """Lowering the folder's version is refused as a rollback."""
    (policies_dir / "acme-bank.toml").write_text(ACME)
    store = PolicyStore()
    manager = await make_manager(
        settings("", None, policies_dir, watch_interval_s=3600), store=store
    )
    (policies_dir / "acme-bank.toml").write_text(ACME.replace("version = 2", "version = 1"))
    manager.reload()
    await until(lambda: manager.refusals[r.ROLLBACK] == 1, what="the rollback refusal")
    assert store.current.version == 2


async def test_sighup_reload_applies_at_once(policies_dir: Path, make_manager: MakeManager) -> None:
    """reload() re-reads the folder at once, without waiting for the watch interval."""
    store = PolicyStore()
    manager = await make_manager(
        settings("", None, policies_dir, watch_interval_s=3600), store=store
    )
    assert store.current.source == SOURCE_BUILTIN
    (policies_dir / "acme-bank.toml").write_text(ACME)
    manager.reload()
    await until(lambda: store.current.source == SOURCE_FILES, what="reload to apply the folder")


async def test_emptied_folder_falls_back_to_strict_default(
    policies_dir: Path, make_manager: MakeManager
) -> None:
    """Removing every policy file puts the strict built-in default in force."""
    (policies_dir / "acme-bank.toml").write_text(ACME)
    store = PolicyStore()
    await make_manager(settings("", None, policies_dir), store=store)
    (policies_dir / "acme-bank.toml").unlink()
    await until(lambda: store.current.source == SOURCE_BUILTIN, what="fallback to built-in")


async def test_folder_does_not_override_the_control_plane(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """While a control-plane policy is in force, folder edits are not applied."""
    control_plane.publish(signer.token(1))
    store = PolicyStore()
    manager = await make_manager(settings(control_plane.url, signer, policies_dir), store=store)
    (policies_dir / "acme-bank.toml").write_text(ACME)
    assert await manager.reload_files() == UNCHANGED
    assert store.current.source == SOURCE_CONTROL_PLANE
