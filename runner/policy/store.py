"""The policy in force: an immutable snapshot, swapped whole.

A batch reads `store.current` once and is judged by that one policy from start
to end, even if a new policy arrives while it is being handled.
"""

from __future__ import annotations

import hashlib

from runner.policy.model import BUILTIN_POLICY, Policy


class PolicyStore:
    """Holds the current `Policy`; `swap` replaces it atomically (one reference assignment)."""

    def __init__(self, initial: Policy = BUILTIN_POLICY) -> None:
        self._current = initial

    @property
    def current(self) -> Policy:
        return self._current

    def swap(self, policy: Policy) -> None:
        self._current = policy


def in_sample(tenant: str, session_id: str, rate: float) -> bool:
    """Deterministic sampling: the same session is in or out on every replica and reconnect."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.sha256(f"{tenant}\x00{session_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate
