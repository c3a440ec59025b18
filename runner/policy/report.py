"""What `runner policy show` prints and `GET /admin/policy` answers: a policy and where it is from.

One shape for both: `version`, `source`, `origin`, `kid`, `expires_at`, `note`,
`refused` (what was turned down on the way), then either `tenants` (every
entry) or, for one tenant, `tenant`, `entry` (which entry it gets) and `policy`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from runner.policy.model import Policy


def policy_report(
    policy: Policy,
    tenant: str | None,
    *,
    origin: str,
    kid: str | None,
    note: str,
    refused: Iterable[dict[str, str]] = (),
) -> dict[str, Any]:
    """The report of `policy`, whole or as `tenant` gets it."""
    report: dict[str, Any] = {
        "version": policy.version,
        "source": policy.source,
        "origin": origin,
        "kid": kid,
        "expires_at": policy.expires_at,
        "note": note,
        "refused": list(refused),
    }
    if tenant is None:
        report["tenants"] = {
            name: tp.model_dump(mode="json") for name, tp in sorted(policy.tenants.items())
        }
    else:
        report["tenant"] = tenant
        report["entry"] = entry(policy, tenant)
        report["policy"] = policy.for_tenant(tenant).model_dump(mode="json")
    return report


def entry(policy: Policy, tenant: str) -> str:
    """Which entry of the policy a tenant gets."""
    if tenant in policy.tenants:
        return f"the tenant's own entry ({tenant!r})"
    if "default" in policy.tenants:
        return "the policy's 'default' entry"
    return "the built-in strict default"
