"""Policy sync against a real control plane: hot apply, 304s, refusals, failures, audit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from runner.policy import errors as r
from runner.policy.lastgood import LastGood
from runner.policy.model import SOURCE_CONTROL_PLANE, Policy
from runner.policy.store import PolicyStore
from runner.policy.sync import (
    APPLIED,
    AUDIT_APPLIED,
    AUDIT_REFUSED,
    EV_POLICY_REFUSED,
    FAILED,
    NOT_MODIFIED,
    REFUSED,
    UNCHANGED,
)
from tests.policy.conftest import MakeManager, settings
from tests.policy.support import (
    CP_TOKEN,
    SECRET_VALUE,
    Audit,
    ControlPlane,
    Signer,
    alg_none,
    hs256_with_public_key,
    iso,
    payload,
    tampered,
)
from tests.support import until


async def test_new_version_is_applied_hot(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """A new version replaces the snapshot whole; a holder of the old snapshot keeps the old one."""
    control_plane.publish(signer.token(1))
    store = PolicyStore()
    manager = await make_manager(settings(control_plane.url, signer, policies_dir), store=store)
    before = store.current
    assert (before.version, before.source) == (1, SOURCE_CONTROL_PLANE)

    control_plane.publish(signer.token(2))
    assert await manager.sync_once() == APPLIED
    assert store.current.version == 2
    assert store.current.for_tenant("acme-bank").rate_limit.burst == 102
    assert before.version == 1
    assert before.for_tenant("acme-bank").rate_limit.burst == 101
    assert manager.status()["kid"] == signer.kid


async def test_unchanged_policy_costs_a_304(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """The next poll sends If-None-Match and the bearer token; a 304 keeps the policy."""
    control_plane.publish(signer.token(1))
    manager = await make_manager(settings(control_plane.url, signer, policies_dir))
    assert await manager.sync_once() == NOT_MODIFIED
    last = control_plane.requests[-1]
    assert last["If-None-Match"] == control_plane.etag
    assert last["Authorization"] == f"Bearer {CP_TOKEN}"
    assert last["path"] == "/v1/runners/runner-test/policy"
    assert manager.status()["last_sync_at"] is not None


async def test_same_version_resent_is_unchanged(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """The same signed policy under a new ETag is accepted as unchanged, not refused."""
    token = signer.token(4)
    control_plane.publish(token)
    store = PolicyStore()
    manager = await make_manager(settings(control_plane.url, signer, policies_dir), store=store)
    first = store.current
    control_plane.publish(token, etag='"another-etag"')
    assert await manager.sync_once() == UNCHANGED
    assert store.current is first
    assert not manager.status()["refusals"]


def _attack(name: str, signer: Signer) -> tuple[bytes, str]:
    """(body the control plane serves, refusal reason) for each kind of bad policy."""
    good = signer.token(6)
    attacks: dict[str, Callable[[], tuple[str | bytes, str]]] = {
        "tampered": lambda: (tampered(good, version=7), r.BAD_SIGNATURE),
        "unknown_key": lambda: (Signer(kid="rogue").token(7), r.UNKNOWN_KID),
        "pinned_kid_other_key": lambda: (Signer(kid=signer.kid).token(7), r.BAD_SIGNATURE),
        "older_version": lambda: (signer.token(4), r.ROLLBACK),
        "same_version_new_rules": lambda: (
            signer.token(5, tenants={"acme-bank": {"forward": False}}),
            r.VERSION_REUSED,
        ),
        "expired": lambda: (signer.token(7, expires_at=iso(-60)), r.EXPIRED),
        "garbage": lambda: (b"<html><body>502 Bad Gateway</body></html>", r.MALFORMED),
        "alg_none": lambda: (alg_none(7, signer.kid), r.WRONG_ALG),
        "hs256_public_key": lambda: (
            hs256_with_public_key(7, signer.kid, signer.public.encode()),
            r.WRONG_ALG,
        ),
        "schema": lambda: (
            signer.sign(orjson.dumps(payload(7, tenants={"acme-bank": {"retention_days": 0}}))),
            r.SCHEMA,
        ),
        "too_large": lambda: (signer.sign(b" " * (2 * 1024 * 1024)), r.TOO_LARGE),
    }
    body, reason = attacks[name]()
    return (body.encode() if isinstance(body, str) else body), reason


ATTACKS = [
    "tampered",
    "unknown_key",
    "pinned_kid_other_key",
    "older_version",
    "same_version_new_rules",
    "expired",
    "garbage",
    "alg_none",
    "hs256_public_key",
    "schema",
    "too_large",
]


@pytest.mark.parametrize("attack", ATTACKS)
async def test_bad_policy_is_refused_and_the_one_in_force_stays(
    attack: str,
    control_plane: ControlPlane,
    signer: Signer,
    policies_dir: Path,
    make_manager: MakeManager,
    tmp_path: Path,
) -> None:
    """Each kind of bad policy is refused, counted, logged and audited; nothing changes."""
    control_plane.publish(signer.token(5))
    store = PolicyStore()
    audit = Audit()
    data_dir = tmp_path / "data"
    manager = await make_manager(
        settings(control_plane.url, signer, policies_dir, max_policy_bytes=1024 * 1024),
        store=store,
        audit=audit,
        data_dir=data_dir,
    )
    in_force = store.current
    kept_on_disk = LastGood(data_dir).path.read_bytes()
    body, reason = _attack(attack, signer)
    control_plane.publish(body)

    with capture_logs() as logs:
        assert await manager.sync_once() == REFUSED

    assert store.current is in_force
    assert manager.refusals[reason] == 1
    assert sum(manager.refusals.values()) == 1
    assert LastGood(data_dir).path.read_bytes() == kept_on_disk
    [record] = audit.events(AUDIT_REFUSED)
    assert record["reason"] == reason
    assert record["in_force_version"] == 5
    [line] = [e for e in logs if e["event"] == EV_POLICY_REFUSED]
    assert line["reason"] == reason
    assert line["log_level"] == "warning"
    status = manager.status()
    assert status["version"] == 5
    assert status["refusals"] == {reason: 1}
    assert reason in status["last_error"]


async def test_a_refusal_backs_off_and_is_asked_again(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """After a refusal the Runner backs off (no ETag kept) and takes a fixed policy later."""
    control_plane.publish(signer.token(1))
    manager = await make_manager(settings(control_plane.url, signer, policies_dir))
    control_plane.publish(tampered(signer.token(2), version=3))
    assert await manager.sync_once() == REFUSED
    delay = manager.next_poll_delay()
    assert 0.025 <= delay <= 0.05
    control_plane.publish(signer.token(2))
    assert await manager.sync_once() == APPLIED
    assert manager.status()["consecutive_failures"] == 0


async def test_logs_and_audit_never_hold_policy_content_or_token(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """Log lines and audit records carry versions and reasons, never policy values or the token."""
    audit = Audit()
    control_plane.publish(signer.token(1))
    with capture_logs() as logs:
        manager = await make_manager(settings(control_plane.url, signer, policies_dir), audit=audit)
        bad = payload(2)
        bad["tenants"]["acme-bank"]["pii"]["min_score"] = SECRET_VALUE
        control_plane.publish(signer.sign(orjson.dumps(bad)))
        assert await manager.sync_once() == REFUSED
    text = repr(logs) + repr(audit.records) + repr(manager.status())
    assert SECRET_VALUE not in text
    assert CP_TOKEN not in text
    assert [e["version"] for e in audit.events(AUDIT_APPLIED)] == [0, 1]  # built-in, then v1


async def test_control_plane_down_keeps_the_policy_and_backs_off(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """Connection refused is a failure, not a refusal: policy kept, backoff grows, then resets."""
    control_plane.publish(signer.token(3))
    store = PolicyStore()
    manager = await make_manager(settings(control_plane.url, signer, policies_dir), store=store)
    port = control_plane.port
    await control_plane.stop()
    for _ in range(3):
        assert await manager.sync_once() == FAILED
    assert store.current.version == 3
    status = manager.status()
    assert status["consecutive_failures"] == 3
    assert manager.sync_failures == 3
    assert not status["refusals"]
    assert 0.1 <= manager.next_poll_delay() <= 0.2  # 0.05 * 2**2, jittered down to half
    await control_plane.start(port)
    assert await manager.sync_once() == NOT_MODIFIED
    assert 3600 * 0.9 <= manager.next_poll_delay() <= 3600 * 1.1


async def test_poll_intervals_are_jittered(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """Waits between polls vary within interval ± jitter, so Runners do not poll in lockstep."""
    control_plane.publish(signer.token(1))
    manager = await make_manager(settings(control_plane.url, signer, policies_dir, poll_jitter=0.2))
    delays = [manager.next_poll_delay() for _ in range(50)]
    assert all(3600 * 0.8 <= d <= 3600 * 1.2 for d in delays)
    assert len(set(delays)) > 40


@pytest.mark.parametrize("status", [401, 403, 404, 500, 503])
async def test_error_status_is_a_failure(
    status: int,
    control_plane: ControlPlane,
    signer: Signer,
    policies_dir: Path,
    make_manager: MakeManager,
) -> None:
    """An HTTP error status counts as a failed sync and keeps the policy in force."""
    control_plane.publish(signer.token(2))
    manager = await make_manager(settings(control_plane.url, signer, policies_dir))
    control_plane.fail_with(status)
    assert await manager.sync_once() == FAILED
    assert str(status) in manager.status()["last_error"]
    assert manager.status()["version"] == 2


async def test_poll_loop_applies_new_versions_by_itself(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """With a short interval the background loop picks up a new version without being asked."""
    control_plane.publish(signer.token(1))
    store = PolicyStore()
    await make_manager(
        settings(control_plane.url, signer, policies_dir, poll_interval_s=0.05), store=store
    )
    control_plane.publish(signer.token(2))
    await until(lambda: store.current.version == 2, what="the poll loop to apply version 2")


async def test_reload_polls_at_once(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """reload() (SIGHUP) polls now instead of at the next interval."""
    control_plane.publish(signer.token(1))
    store = PolicyStore()
    manager = await make_manager(settings(control_plane.url, signer, policies_dir), store=store)
    control_plane.publish(signer.token(2))
    manager.reload()
    await until(lambda: store.current.version == 2, what="reload to apply version 2")


async def test_failing_audit_hook_does_not_stop_sync(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """An audit hook that raises is logged; the policy is still applied."""

    def broken(event: str, fields: dict[str, object]) -> None:
        raise RuntimeError("audit disk full")

    control_plane.publish(signer.token(1))
    store = PolicyStore()
    with capture_logs() as logs:
        await make_manager(
            settings(control_plane.url, signer, policies_dir), store=store, audit=broken
        )
    assert store.current.version == 1
    assert any(e["event"] == "policy.audit_failed" for e in logs)


async def test_policy_from_the_wire_drives_tenant_lookup(
    control_plane: ControlPlane, signer: Signer, policies_dir: Path, make_manager: MakeManager
) -> None:
    """Tenants without an entry get the policy's `default`, else the strict built-in."""
    tenants = {"acme-bank": {"forward": False}, "default": {"retention_days": 7}}
    control_plane.publish(signer.token(1, tenants=tenants))
    store = PolicyStore()
    await make_manager(settings(control_plane.url, signer, policies_dir), store=store)
    policy: Policy = store.current
    assert policy.for_tenant("acme-bank").forward is False
    assert policy.for_tenant("other-bank").retention_days == 7


def test_a_policy_cannot_be_edited_in_place() -> None:
    """The snapshot in force is read-only down to its maps: tenants and actions refuse edits."""
    policy = Policy.model_validate(
        {"version": 2, "tenants": {"acme": {"pii": {"actions": {"EMAIL_ADDRESS": "mask"}}}}}
    )
    actions = policy.tenants["acme"].pii.actions
    for edit in (
        lambda: policy.tenants.__setitem__("other", policy.tenants["acme"]),
        lambda: policy.tenants.pop("acme"),
        lambda: actions.update({"EMAIL_ADDRESS": "token"}),
        lambda: actions.clear(),
    ):
        with pytest.raises(TypeError, match="read-only"):
            edit()
    assert policy.model_dump(mode="json")["tenants"]["acme"]["pii"]["actions"] == {
        "EMAIL_ADDRESS": "mask"
    }
