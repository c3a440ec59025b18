"""`retention_days` of a tenant's policy sets how long its tokens' originals stay in the vault.

Dead letters and air-gapped chunks are expired by the same field (tests/forward:
test_airgapped, test_deadletter); this checks the third place, the vault.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from runner.policy.model import PiiPolicy, TenantPolicy
from runner.redact import Redactor, RedactRequest, RedactSettings

DAY_S = 86_400


def custom(email: str) -> dict[str, object]:
    return {"type": 5, "timestamp": 1, "data": {"tag": "checkout", "payload": {"note": email}}}


async def test_vault_expiry_follows_each_tenants_retention_days(tmp_path: Path) -> None:
    """Tokens of a 3-day tenant expire in 3 days, those of a 45-day tenant in 45."""
    redactor = Redactor(RedactSettings(workers=1), tmp_path)
    await redactor.start()
    try:
        started = int(time.time())
        for tenant, days in (("short-bank", 3), ("long-bank", 45)):
            policy = TenantPolicy(retention_days=days, pii=PiiPolicy(text="detect"))
            result = await redactor.redact(
                RedactRequest(tenant, "web", "s1", policy, [custom(f"priya.{tenant}@gmail.com")])
            )
            assert b"@" not in result.events_json
        ended = int(time.time())
    finally:
        await redactor.stop()
    path = RedactSettings().resolved_vault_path(tmp_path)
    with sqlite3.connect(path) as db:
        rows = dict(db.execute("SELECT tenant, expires_at FROM tokens").fetchall())
    assert set(rows) == {"short-bank", "long-bank"}
    for tenant, days in (("short-bank", 3), ("long-bank", 45)):
        assert started + days * DAY_S <= rows[tenant] <= ended + days * DAY_S
