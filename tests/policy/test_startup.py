"""Start-up order (last good → policies/ → built-in), the last good file, and expiry."""

from __future__ import annotations

import os
from pathlib import Path

from runner.policy import errors as r
from runner.policy.jws import Verifier, verify_policy
from runner.policy.lastgood import LastGood, atomic_write
from runner.policy.model import (
    SOURCE_BUILTIN,
    SOURCE_CONTROL_PLANE,
    SOURCE_FILES,
    SOURCE_LAST_GOOD,
    STRICT_DEFAULT,
)
from runner.policy.store import PolicyStore
from runner.policy.sync import APPLIED, AUDIT_EXPIRED, REFUSED
from tests.policy.conftest import MakeManager, settings
from tests.policy.support import Audit, ControlPlane, Signer, iso, tampered
from tests.support import free_port, until

TENANT_FILE = """
version = 3
forward = false
[sampling]
session_rate = 0.5
"""


def down_url() -> str:
    """A control plane that is down: nothing listens on this port."""
    return f"http://127.0.0.1:{free_port()}"


async def _accept(
    make_manager: MakeManager,
    cp: ControlPlane,
    signer: Signer,
    folder: Path,
    data_dir: Path,
    version: int,
) -> str:
    token = signer.token(version)
    cp.publish(token)
    manager = await make_manager(settings(cp.url, signer, folder), data_dir=data_dir)
    assert manager.status()["version"] == version
    await manager.stop()
    return token


async def test_accepted_policy_is_kept_on_disk_atomically(
    control_plane: ControlPlane,
    signer: Signer,
    policies_dir: Path,
    make_manager: MakeManager,
    tmp_path: Path,
) -> None:
    """The accepted JWS is stored as received, verifies on its own, and leaves no temp file."""
    data_dir = tmp_path / "data"
    token = await _accept(make_manager, control_plane, signer, policies_dir, data_dir, 4)
    stored = LastGood(data_dir).path
    assert stored.read_text() == token
    assert sorted(p.name for p in stored.parent.iterdir()) == ["last-good.jws"]
    policy, kid = verify_policy(
        stored.read_bytes(), Verifier({signer.kid: signer.key.public_key()}), SOURCE_LAST_GOOD
    )
    assert (policy.version, kid) == (4, signer.kid)


async def test_start_with_control_plane_down_uses_last_good(
    control_plane: ControlPlane,
    signer: Signer,
    policies_dir: Path,
    make_manager: MakeManager,
    tmp_path: Path,
) -> None:
    """With the control plane down, start-up puts the verified last good policy in force."""
    data_dir = tmp_path / "data"
    await _accept(make_manager, control_plane, signer, policies_dir, data_dir, 4)
    (policies_dir / "acme-bank.toml").write_text(TENANT_FILE)
    store = PolicyStore()
    manager = await make_manager(
        settings(down_url(), signer, policies_dir), store=store, data_dir=data_dir
    )
    assert (store.current.version, store.current.source) == (4, SOURCE_LAST_GOOD)
    status = manager.status()
    assert status["kid"] == signer.kid
    assert status["consecutive_failures"] == 1


async def test_last_good_is_verified_with_todays_pins(
    control_plane: ControlPlane,
    signer: Signer,
    policies_dir: Path,
    make_manager: MakeManager,
    tmp_path: Path,
) -> None:
    """A last good policy signed by a key that is no longer pinned is refused at start-up."""
    data_dir = tmp_path / "data"
    await _accept(make_manager, control_plane, signer, policies_dir, data_dir, 4)
    rotated = Signer(kid="cp-test-2")
    audit = Audit()
    store = PolicyStore()
    manager = await make_manager(
        settings(down_url(), rotated, policies_dir), store=store, data_dir=data_dir, audit=audit
    )
    assert store.current.source == SOURCE_BUILTIN
    assert manager.refusals[r.UNKNOWN_KID] == 1
    assert audit.records[0][1]["source"] == SOURCE_LAST_GOOD


async def test_tampered_last_good_is_refused_and_the_folder_used(
    control_plane: ControlPlane,
    signer: Signer,
    policies_dir: Path,
    make_manager: MakeManager,
    tmp_path: Path,
) -> None:
    """An edited last good file is refused at start-up; the policies/ folder applies instead."""
    data_dir = tmp_path / "data"
    token = await _accept(make_manager, control_plane, signer, policies_dir, data_dir, 4)
    LastGood(data_dir).path.write_text(tampered(token, version=40))
    (policies_dir / "acme-bank.toml").write_text(TENANT_FILE)
    store = PolicyStore()
    manager = await make_manager(
        settings(down_url(), signer, policies_dir), store=store, data_dir=data_dir
    )
    assert (store.current.version, store.current.source) == (3, SOURCE_FILES)
    assert store.current.for_tenant("acme-bank").forward is False
    assert manager.refusals[r.BAD_SIGNATURE] == 1


async def test_tampered_last_good_without_folder_falls_back_to_strict_default(
    control_plane: ControlPlane,
    signer: Signer,
    policies_dir: Path,
    make_manager: MakeManager,
    tmp_path: Path,
) -> None:
    """With no usable last good and no policy files, the strict built-in default is in force."""
    data_dir = tmp_path / "data"
    await _accept(make_manager, control_plane, signer, policies_dir, data_dir, 4)
    LastGood(data_dir).path.write_bytes(b"eyJhbGciOiJFZERTQSJ9.garbage")
    store = PolicyStore()
    manager = await make_manager(
        settings(down_url(), signer, policies_dir), store=store, data_dir=data_dir
    )
    assert store.current.source == SOURCE_BUILTIN
    assert store.current.for_tenant("acme-bank") == STRICT_DEFAULT
    assert manager.refusals[r.MALFORMED] == 1


async def test_rollback_is_refused_across_restarts(
    control_plane: ControlPlane,
    signer: Signer,
    policies_dir: Path,
    make_manager: MakeManager,
    tmp_path: Path,
) -> None:
    """After a restart, the last good version is the floor: an older one is refused."""
    data_dir = tmp_path / "data"
    await _accept(make_manager, control_plane, signer, policies_dir, data_dir, 6)
    control_plane.publish(signer.token(5))
    store = PolicyStore()
    manager = await make_manager(
        settings(control_plane.url, signer, policies_dir), store=store, data_dir=data_dir
    )
    assert store.current.version == 6
    assert manager.refusals[r.ROLLBACK] == 1


async def test_start_fetches_before_returning(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """start() polls once, so a reachable control plane's policy is in force before ingest opens."""
    control_plane.publish(signer.token(2))
    store = PolicyStore()
    await make_manager(settings(control_plane.url, signer, policies_dir), store=store)
    assert (store.current.version, store.current.source) == (2, SOURCE_CONTROL_PLANE)


async def test_without_control_plane_last_good_is_ignored(
    signer: Signer, policies_dir: Path, make_manager: MakeManager, tmp_path: Path
) -> None:
    """With no endpoint configured, the folder decides, even if an old last good file exists."""
    data_dir = tmp_path / "data"
    atomic_write(LastGood(data_dir).path, signer.token(9).encode())
    (policies_dir / "acme-bank.toml").write_text(TENANT_FILE)
    store = PolicyStore()
    await make_manager(settings("", signer, policies_dir), store=store, data_dir=data_dir)
    assert (store.current.version, store.current.source) == (3, SOURCE_FILES)


async def test_nothing_anywhere_means_strict_default(
    policies_dir: Path, make_manager: MakeManager
) -> None:
    """No control plane, no files: every tenant gets the strict built-in default."""
    store = PolicyStore()
    manager = await make_manager(settings("", None, policies_dir), store=store)
    assert store.current.source == SOURCE_BUILTIN
    assert store.current.for_tenant("anyone") == STRICT_DEFAULT
    assert STRICT_DEFAULT.pii.text == "mask_all"
    assert STRICT_DEFAULT.pii.mask_all_inputs
    assert not STRICT_DEFAULT.features.network_bodies
    assert STRICT_DEFAULT.forward
    assert manager.status()["healthy"]


async def test_expired_policy_in_force_falls_back_to_the_folder(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """When the policy in force passes expires_at, the folder's policy replaces it (audited)."""
    (policies_dir / "acme-bank.toml").write_text(TENANT_FILE)
    control_plane.publish(signer.token(8, expires_at=iso(0.5)))
    store = PolicyStore()
    audit = Audit()
    await make_manager(settings(control_plane.url, signer, policies_dir), store=store, audit=audit)
    assert store.current.version == 8
    await until(lambda: store.current.source == SOURCE_FILES, what="expiry to the folder")
    assert audit.events(AUDIT_EXPIRED)[0]["version"] == 8


async def test_failed_last_good_write_still_applies_the_policy(
    control_plane: ControlPlane,
    signer: Signer,
    policies_dir: Path,
    make_manager: MakeManager,
    tmp_path: Path,
) -> None:
    """If the disk refuses the last good file, the valid policy is applied and the error shown."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "policy").write_text("a file where the folder should be")
    control_plane.publish(signer.token(1))
    store = PolicyStore()
    manager = await make_manager(
        settings(control_plane.url, signer, policies_dir), store=store, data_dir=data_dir
    )
    assert store.current.version == 1
    assert "cannot keep the last good policy" in (manager.status()["last_error"] or "")


def test_atomic_write_replaces_whole(tmp_path: Path) -> None:
    """atomic_write leaves the new content, the requested mode and no temp file."""
    target = tmp_path / "sub" / "file.jws"
    atomic_write(target, b"old")
    atomic_write(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["file.jws"]


async def test_outcomes_are_applied_then_refused_for_same_control_plane(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """A version jump is applied; going back to the older one after it is refused."""
    control_plane.publish(signer.token(1))
    manager = await make_manager(settings(control_plane.url, signer, policies_dir))
    control_plane.publish(signer.token(10))
    assert await manager.sync_once() == APPLIED
    control_plane.publish(signer.token(9))
    assert await manager.sync_once() == REFUSED


async def test_expired_last_good_still_bounds_the_version(
    control_plane: ControlPlane,
    signer: Signer,
    policies_dir: Path,
    make_manager: MakeManager,
    tmp_path: Path,
) -> None:
    """An expired last good is not used at start, but its version still bounds what comes
    next: an older (replayed) policy is a rollback, a newer one is applied."""
    data_dir = tmp_path / "data"
    atomic_write(LastGood(data_dir).path, signer.token(9, expires_at=iso(-5)).encode())
    control_plane.publish(signer.token(5))
    store = PolicyStore()
    manager = await make_manager(
        settings(control_plane.url, signer, policies_dir), store=store, data_dir=data_dir
    )
    assert store.current.source == SOURCE_BUILTIN
    assert (manager.refusals[r.EXPIRED], manager.refusals[r.ROLLBACK]) == (1, 1)
    control_plane.publish(signer.token(10))
    assert await manager.sync_once() == APPLIED
    assert (store.current.version, store.current.source) == (10, SOURCE_CONTROL_PLANE)
