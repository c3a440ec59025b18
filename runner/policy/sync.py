"""`PolicyManager`: which policy is in force, and keeping it current.

Start-up (`start()`), before ingest opens, always ends with a policy in force:

1. with a control plane configured, the last good policy on disk, re-verified;
2. else the `policies/` folder;
3. else the strict built-in default.

Then one poll of the control plane (bounded by its request timeout), and two
background loops: the poll loop (interval ± jitter; exponential backoff with
jitter after a failure or a refusal) and the folder loop (polls the files'
mtimes, settles for one interval, reloads; also expires a policy past its
`expires_at`). `reload()` (SIGHUP) wakes both at once.

Rules for a policy from the control plane: it must verify (see `jws`), must not
have expired, and its version must not be lower than the last control-plane
policy accepted (rollback; across restarts, the last good file's version, even
once it has expired); the same version must carry the same rules. A
refusal keeps the policy in force, is logged (`EV_POLICY_REFUSED`, reason codes
from `errors`), counted in `refusals[reason]` and passed to the audit hook.
An accepted policy is written to disk, then swapped in whole.

A control-plane policy outranks the folder: while one is in force, edits to
the folder are not applied (they are the fallback if it expires). Versions are
compared within a source; a folder's version does not block the control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog

from runner.errors import StartupError
from runner.policy import errors as r
from runner.policy.client import ControlPlaneClient
from runner.policy.errors import PolicyKeyError, PolicyRefused, SyncFailed
from runner.policy.files import Fingerprint, FolderPolicy, fingerprint, load_folder
from runner.policy.jws import Verifier, check_expiry, verify_policy
from runner.policy.lastgood import LastGood
from runner.policy.model import (
    BUILTIN_POLICY,
    SOURCE_BUILTIN,
    SOURCE_CONTROL_PLANE,
    SOURCE_FILES,
    SOURCE_LAST_GOOD,
    Policy,
)
from runner.policy.report import policy_report
from runner.policy.settings import ControlPlaneSettings
from runner.policy.store import PolicyStore

log = structlog.get_logger(__name__)

EV_POLICY_APPLIED: Final = "policy.applied"
EV_POLICY_REFUSED: Final = "policy.refused"
EV_POLICY_EXPIRED: Final = "policy.expired"
EV_SYNC_FAILED: Final = "policy.sync_failed"
EV_LAST_GOOD_FAILED: Final = "policy.last_good_failed"
EV_FILES_PENDING: Final = "policy.files_not_applied"
EV_AUDIT_FAILED: Final = "policy.audit_failed"
EV_TASK_CRASHED: Final = "policy.task_crashed"
EV_LOOP_ERROR: Final = "policy.loop_error"

AUDIT_APPLIED: Final = "policy.applied"
AUDIT_REFUSED: Final = "policy.refused"
AUDIT_EXPIRED: Final = "policy.expired"

APPLIED: Final = "applied"
UNCHANGED: Final = "unchanged"
NOT_MODIFIED: Final = "not_modified"
REFUSED: Final = "refused"
FAILED: Final = "failed"
DISABLED: Final = "disabled"

AuditHook = Callable[[str, dict[str, Any]], None]
REMOTE_SOURCES: Final = frozenset({SOURCE_CONTROL_PLANE, SOURCE_LAST_GOOD})


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


@dataclass(slots=True)
class Startup:
    """The policy start-up puts in force, and what was refused on the way."""

    policy: Policy
    kid: str | None = None
    token: str | None = None
    origin: str = ""
    refusals: list[tuple[str, PolicyRefused]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    floor: Policy | None = None
    """The last good policy's verified version, even when expired: the rollback floor."""


def startup_policy(
    settings: ControlPlaneSettings,
    last_good: LastGood,
    verifier: Verifier,
    now: datetime | None = None,
) -> Startup:
    """Last good (with a control plane) → the folder → built-in; blocking file reads."""
    start = Startup(policy=BUILTIN_POLICY, origin="built-in strict default")
    if settings.sync_enabled:
        try:
            loaded = last_good.read_verified(verifier, settings.max_policy_bytes)
            if loaded is not None:
                start.floor = loaded[0]  # signed by a pinned key: an older one is a rollback
                check_expiry(loaded[0], now)
        except PolicyRefused as e:
            start.refusals.append((SOURCE_LAST_GOOD, e))
        except OSError as e:
            start.errors.append(f"{last_good.path}: unreadable ({e.strerror})")
        else:
            if loaded is not None:
                start.policy, start.kid, start.token = loaded
                start.origin = str(last_good.path)
                return start
    try:
        folder = load_folder(settings.policies_dir, verifier, settings.require_signed_files)
    except PolicyRefused as e:
        start.refusals.append((SOURCE_FILES, e))
    else:
        if folder is not None:
            start.policy = folder.policy
            start.origin = str(settings.policies_dir)
    return start


class PolicyManager:
    """Keeps `store.current` the newest acceptable policy; see the module docstring."""

    def __init__(
        self,
        settings: ControlPlaneSettings,
        data_dir: Path,
        store: PolicyStore,
        *,
        runner_id: str,
        audit: AuditHook | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._runner_id = runner_id
        self._audit_hook = audit
        self._environ = os.environ if environ is None else environ
        self._last_good = LastGood(data_dir)
        self._verifier = Verifier({}, settings.max_policy_bytes)
        self._client: ControlPlaneClient | None = None
        self._lock = asyncio.Lock()
        self._wake_poll = asyncio.Event()
        self._wake_files = asyncio.Event()
        self._force_files = False
        self._tasks: list[asyncio.Task[None]] = []
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        # state
        self._remote: Policy | None = None  # the last control-plane policy accepted
        self._remote_kid: str | None = None
        self._saved_token: str | None = None
        self._etag: str | None = None
        self._failures = 0
        self._files_fp: Fingerprint = ()
        self._files_error: str | None = None
        self.last_attempt: datetime | None = None
        self.last_success: datetime | None = None
        self.last_error: str | None = None
        self.last_good_error: str | None = None
        self.refusals: dict[str, int] = dict.fromkeys(r.REASONS, 0)
        """Refused policies by reason code: export as a labelled counter."""
        self.applied = 0
        """Policies put in force since start (any source)."""
        self.sync_failures = 0
        """Polls that could not reach the control plane or got an error status."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Put a policy in force (last good → folder → built-in), poll once, start the loops."""
        try:
            keys = await asyncio.to_thread(self._settings.pinned_keys)
        except PolicyKeyError as e:
            raise StartupError(f"control_plane keys: {e}") from e
        self._verifier = Verifier(keys, self._settings.max_policy_bytes)
        await self._initial()
        if self._settings.sync_enabled:
            self._client = ControlPlaneClient(self._settings, self._runner_id, self._environ)
            try:
                await self._client.start()
            except SyncFailed as e:
                raise StartupError(str(e)) from e
            await self.sync_once()
            self._spawn(self._poll_loop(), "policy-poll")
        self._spawn(self._files_loop(), "policy-files")

    async def stop(self) -> None:
        """Stop the loops and close the HTTP client; the policy in force stays in the store."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None

    def reload(self) -> None:
        """SIGHUP: re-read the folder and poll the control plane now (non-blocking)."""
        self._force_files = True
        self._wake_files.set()
        self._wake_poll.set()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.last_error = f"{task.get_name()} crashed: {type(error).__name__}: {error}"
            log.error(EV_TASK_CRASHED, task=task.get_name(), error=type(error).__name__)

    @property
    def healthy(self) -> bool:
        """Every background loop is still running."""
        return all(not t.done() for t in self._tasks)

    # -- start-up order ----------------------------------------------------------------------

    async def _initial(self) -> None:
        async with self._lock:
            self._files_fp = await asyncio.to_thread(fingerprint, self._settings.policies_dir)
            start = await asyncio.to_thread(
                startup_policy, self._settings, self._last_good, self._verifier
            )
            for source, refusal in start.refusals:
                if source == SOURCE_FILES:
                    self._files_error = refusal.message
                self._refused(refusal, source)
            for error in start.errors:
                self.last_good_error = error
                log.error(EV_LAST_GOOD_FAILED, op="read", error=error)
            # An expired last good is not put in force, but its version stays the floor.
            self._remote = start.floor
            if start.policy.source == SOURCE_LAST_GOOD:
                self._remote, self._remote_kid = start.policy, start.kid
                self._saved_token = start.token
            self._swap(start.policy, start.kid)

    # -- the control plane -------------------------------------------------------------------

    async def sync_once(self) -> str:
        """Poll the control plane once and apply what it sends; returns the outcome."""
        if self._client is None:
            return DISABLED
        self.last_attempt = _now()
        try:
            fetched = await self._client.fetch(self._etag)
            if fetched is None:
                outcome = NOT_MODIFIED
            else:
                outcome = await self._apply_remote(fetched.body, fetched.etag)
        except PolicyRefused as e:
            self._failures += 1
            self._refused(e, SOURCE_CONTROL_PLANE)
            return REFUSED
        except SyncFailed as e:
            self._failures += 1
            self.sync_failures += 1
            self.last_error = str(e)
            log.warning(EV_SYNC_FAILED, error=str(e), failures=self._failures)
            return FAILED
        self._failures = 0
        self.last_success = _now()
        self.last_error = None
        return outcome

    async def _apply_remote(self, body: bytes, etag: str | None) -> str:
        policy, kid = await asyncio.to_thread(
            verify_policy, body, self._verifier, SOURCE_CONTROL_PLANE
        )
        token = body.decode("ascii", "replace").strip()
        async with self._lock:
            floor = self._remote
            if floor is not None and policy.version < floor.version:
                raise PolicyRefused(
                    r.ROLLBACK,
                    f"version {policy.version} is lower than {floor.version}",
                    policy.version,
                )
            if floor is not None and policy.version == floor.version:
                if not policy.same_rules(floor):
                    raise PolicyRefused(
                        r.VERSION_REUSED,
                        f"version {policy.version} was already accepted with other rules",
                        policy.version,
                    )
                self._etag = etag
                if self._store.current.source == SOURCE_LAST_GOOD:
                    self._store.swap(policy)  # confirmed by the control plane: same rules
                return UNCHANGED
            await self._save(token)
            self._remote, self._remote_kid, self._etag = policy, kid, etag
            self._swap(policy, kid)
            return APPLIED

    async def _save(self, token: str) -> None:
        if token == self._saved_token:
            return
        try:
            await self._last_good.save(token)
        except OSError as e:
            # The policy is valid and goes in force; only the restart fallback is stale.
            self.last_good_error = f"cannot keep the last good policy: {e.strerror}"
            log.error(EV_LAST_GOOD_FAILED, op="write", error=e.strerror)
            return
        self._saved_token = token
        self.last_good_error = None

    async def _poll_loop(self) -> None:
        while True:
            await self._wait(self._wake_poll, self.next_poll_delay())
            try:
                await self.sync_once()
            except Exception as e:  # a bug must not end policy updates for good
                self._failures += 1
                self.last_error = f"poll: unexpected {type(e).__name__}"
                log.exception(EV_LOOP_ERROR, loop="poll")

    def next_poll_delay(self) -> float:
        """Seconds to wait before the next poll: interval ± jitter, or backoff after failures."""
        s = self._settings
        if self._failures == 0:
            return s.poll_interval_s * self._rng.uniform(1 - s.poll_jitter, 1 + s.poll_jitter)
        backoff = min(s.backoff_max_s, s.backoff_initial_s * 2 ** min(self._failures - 1, 30))
        return self._rng.uniform(backoff / 2, backoff)

    # -- the folder and expiry ---------------------------------------------------------------

    async def reload_files(self) -> str:
        """Re-read the `policies/` folder and apply it if no control-plane policy is in force."""
        async with self._lock:
            self._files_fp = await asyncio.to_thread(fingerprint, self._settings.policies_dir)
            current = self._store.current
            if current.source in REMOTE_SOURCES:
                log.info(EV_FILES_PENDING, in_force=current.source, version=current.version)
                return UNCHANGED
            ok, folder = await self._read_folder(current)
            if not ok:
                return REFUSED
            if folder is None:
                if current.source == SOURCE_BUILTIN:
                    return UNCHANGED
                self._swap(BUILTIN_POLICY, None)
                return APPLIED
            if current.source == SOURCE_FILES and folder.policy.same_rules(current):
                return UNCHANGED
            self._swap(folder.policy, None)
            return APPLIED

    async def _read_folder(self, current: Policy) -> tuple[bool, FolderPolicy | None]:
        """(False, None) when refused; else (True, the folder's policy or None if it has none)."""
        s = self._settings
        try:
            folder = await asyncio.to_thread(
                load_folder, s.policies_dir, self._verifier, s.require_signed_files
            )
            if (
                folder is not None
                and current.source == SOURCE_FILES
                and folder.policy.version < current.version
            ):
                raise PolicyRefused(
                    r.ROLLBACK,
                    f"the folder's version {folder.policy.version} is lower than {current.version}",
                    folder.policy.version,
                )
        except PolicyRefused as e:
            self._files_error = e.message
            self._refused(e, SOURCE_FILES)
            return False, None
        self._files_error = None
        return True, folder

    async def _files_loop(self) -> None:
        seen = self._files_fp
        while True:
            await self._wait(self._wake_files, self._settings.watch_interval_s)
            try:
                seen = await self._files_tick(seen)
            except Exception as e:  # a bug must not end folder reloads and expiry for good
                self.last_error = f"files: unexpected {type(e).__name__}"
                log.exception(EV_LOOP_ERROR, loop="files")

    async def _files_tick(self, seen: Fingerprint) -> Fingerprint:
        """Expire the policy in force if due; reload the folder once an edit has settled."""
        await self._expire()
        current = await asyncio.to_thread(fingerprint, self._settings.policies_dir)
        forced, self._force_files = self._force_files, False
        # Reload once the folder looks the same for two checks in a row (no half-written files).
        if forced or (current != self._files_fp and current == seen):
            await self.reload_files()
        return current

    async def _expire(self) -> None:
        """Retire a policy whose `expires_at` has passed: the folder, else the built-in."""
        async with self._lock:
            current = self._store.current
            if not current.expired(_now()):
                return
            log.warning(EV_POLICY_EXPIRED, version=current.version, source=current.source)
            self._audit(
                AUDIT_EXPIRED,
                {"version": current.version, "source": current.source, "at": current.expires_at},
            )
            ok, folder = await self._read_folder(BUILTIN_POLICY)
            self._swap(folder.policy if ok and folder is not None else BUILTIN_POLICY, None)
        self._wake_poll.set()

    # -- bookkeeping -------------------------------------------------------------------------

    @staticmethod
    async def _wait(event: asyncio.Event, delay_s: float) -> None:
        """Wait until `event` is set or `delay_s` passes, then clear it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await event.wait()
        event.clear()

    def _swap(self, policy: Policy, kid: str | None) -> None:
        previous = self._store.current
        self._store.swap(policy)
        self.applied += 1
        fields = {
            "version": policy.version,
            "source": policy.source,
            "kid": kid,
            "tenants": len(policy.tenants),
            "previous_version": previous.version,
            "previous_source": previous.source,
        }
        log.info(EV_POLICY_APPLIED, **fields)
        self._audit(AUDIT_APPLIED, fields)

    def _refused(self, error: PolicyRefused, source: str) -> None:
        self.refusals[error.reason] = self.refusals.get(error.reason, 0) + 1
        self.last_error = f"{source}: {error}"
        current = self._store.current
        fields = {
            "reason": error.reason,
            "detail": error.message,
            "source": source,
            "version": error.version,
            "in_force_version": current.version,
            "in_force_source": current.source,
        }
        log.warning(EV_POLICY_REFUSED, **fields)
        self._audit(AUDIT_REFUSED, fields)

    def _audit(self, event: str, fields: dict[str, Any]) -> None:
        if self._audit_hook is None:
            return
        try:
            self._audit_hook(event, dict(fields))
        except Exception as e:  # noqa: BLE001 - a failing audit sink must not stop policy sync
            log.error(EV_AUDIT_FAILED, audit_event=event, error=type(e).__name__)

    def report(self, tenant: str | None) -> dict[str, Any]:
        """The policy in force, whole or as `tenant` gets it (`GET /admin/policy`)."""
        current = self._store.current
        return policy_report(
            current,
            tenant,
            origin="in force in the running Runner",
            kid=self._remote_kid if current.source in REMOTE_SOURCES else None,
            note=f"asked the running Runner (runner id {self._runner_id})",
        )

    def status(self) -> dict[str, Any]:
        """What `runner status` and `/admin/status` show about policies."""
        current = self._store.current
        remote = current.source in REMOTE_SOURCES
        return {
            "version": current.version,
            "source": current.source,
            "kid": self._remote_kid if remote else None,
            "issued_at": current.issued_at,
            "expires_at": current.expires_at,
            "tenants": sorted(current.tenants),
            "endpoint": self._settings.endpoint or None,
            "last_attempt_at": _iso(self.last_attempt),
            "last_sync_at": _iso(self.last_success),
            "consecutive_failures": self._failures,
            "last_error": self.last_error or self.last_good_error,
            "last_good_error": self.last_good_error,
            "files_error": self._files_error,
            "policies_dir": str(self._settings.policies_dir),
            "refusals": {k: v for k, v in self.refusals.items() if v},
            "applied": self.applied,
            "sync_failures": self.sync_failures,
            "healthy": self.healthy,
        }
