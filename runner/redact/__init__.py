"""The PII engine: rrweb-aware, Presidio-based, local; no raw PII leaves, replays stay intact.

`Redactor` is what ingest calls, once per batch, before anything is written to the buffer.
The work happens in a pool of worker processes (see `pool`): the walker (`rrweb`,
`payloads`) finds every text slot, the policy (`rules`) and the detection engine (`engine`,
`recognizers`) decide each one, the actions (`tokens`) replace what must go, reversible
tokens go to the local vault (`vault`), and the egress check (`egress`) looks at the final
bytes once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from runner.policy.model import PiiPolicy, TenantPolicy
from runner.redact.errors import KeyConfigError, RedactError, RedactStartupError
from runner.redact.keys import LoadedKey, load_key
from runner.redact.messages import BatchOutcome, BatchRequest, BatchWire, WorkerConfig
from runner.redact.pool import OP_END_SESSION, OP_REDACT, OP_STATS, WorkerPool
from runner.redact.rules import canonical, compile_policy, fingerprint
from runner.redact.settings import RedactSettings
from runner.redact.vault import SqliteVault

log = structlog.get_logger(__name__)

EV_STARTED = "pii.started"
EV_STOPPED = "pii.stopped"
EV_KEY = "pii.key_loaded"
EV_KEY_GENERATED = "pii.key_generated"
EV_KEY_LOOSE = "pii.key_file_readable_by_others"
EV_POLICY_WARNING = "pii.policy_warning"
EV_EGRESS_HIT = "pii.egress_hit"
EV_BATCH = "pii.batch_redacted"
EV_BATCH_FAILED = "pii.batch_failed"
EV_VAULT_PURGED = "pii.vault_purged"
EV_VAULT_PURGE_FAILED = "pii.vault_purge_failed"

_FP_CACHE = 256


@dataclass(frozen=True, slots=True)
class RedactRequest:
    """One batch of one session, as ingest hands it over.

    `frame_json` is optional: the JSON text `events` were parsed from, an object whose
    `events` member is exactly `events` (nothing dropped or changed since). With it the
    events are not serialised again on the event loop: the worker parses the frame itself
    (and refuses it if its event count differs).
    """

    tenant: str
    project: str
    session_id: str
    policy: TenantPolicy
    events: list[Any]
    frame_json: bytes | None = None


@dataclass(frozen=True, slots=True)
class RedactResult:
    """The redacted batch, ready for the buffer."""

    events_json: bytes
    kept: int
    dropped: int
    entities: dict[str, int]
    egress_hits: int


@dataclass(slots=True)
class RedactStats:
    """Counters since start (for /metrics and /admin/status)."""

    batches: int = 0
    events_in: int = 0
    events_kept: int = 0
    failures: int = 0
    egress_hits: int = 0
    unanalyzed: int = 0
    vault_purged: int = 0


class Redactor:
    """The facade ingest calls. Constructing only stores; `start()` spawns the workers."""

    def __init__(self, settings: RedactSettings, data_dir: Path) -> None:
        self._settings = settings
        self._data_dir = data_dir
        self._pool: WorkerPool | None = None
        self._vault: SqliteVault | None = None
        self._purge_task: asyncio.Task[None] | None = None
        self._fingerprints: dict[int, tuple[PiiPolicy, str, bytes]] = {}
        self._warned: set[str] = set()
        self.stats = RedactStats()
        self.entities: Counter[str] = Counter()

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load keys, open the vault, start the worker pool; RedactStartupError if any fails."""
        s = self._settings
        pii_dir = self._data_dir / "pii"
        token_key = await asyncio.to_thread(
            load_key,
            "token key",
            s.token_key_env,
            s.token_key_file,
            pii_dir / "token.key",
            s.generate_dev_keys,
        )
        self._log_key("token", token_key)
        vault_key: LoadedKey | None = None
        vault_path: Path | None = None
        if s.vault_enabled:
            vault_key = await asyncio.to_thread(
                load_key,
                "vault key",
                s.vault_key_env,
                s.vault_key_file,
                pii_dir / "vault.key",
                s.generate_dev_keys,
                many=True,
            )
            self._log_key("vault", vault_key)
            vault_path = s.resolved_vault_path(self._data_dir)
            vault = SqliteVault(vault_path, vault_key.keys)
            await asyncio.to_thread(vault.open)
            self._vault = vault
        size = s.worker_count(os.cpu_count())
        config = WorkerConfig(s, token_key.key, vault_key.keys if vault_key else (), vault_path)
        pool = WorkerPool(config, size)
        try:
            await pool.start()
        except BaseException:
            await self._close_vault()
            raise
        self._pool = pool
        if self._vault is not None:
            self._purge_task = asyncio.create_task(self._purge_loop(), name="pii-vault-purge")
        log.info(
            EV_STARTED,
            workers=size,
            ner_model=s.ner_model or "",
            vault=s.vault_enabled,
            entities=len(pool.describe.get("entities", ())),
        )

    async def stop(self) -> None:
        """Stop the purge task and the workers, close the vault."""
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
            self._purge_task = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.stop()
        await self._close_vault()
        log.info(EV_STOPPED, batches=self.stats.batches)

    async def __aenter__(self) -> Redactor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _close_vault(self) -> None:
        if self._vault is not None:
            vault, self._vault = self._vault, None
            await asyncio.to_thread(vault.close)

    def _log_key(self, which: str, key: LoadedKey) -> None:
        if key.source == "generated":
            log.warning(
                EV_KEY_GENERATED,
                key=which,
                path=str(key.path),
                note="development key; configure a key file or environment variable",
            )
        else:
            log.info(EV_KEY, key=which, source=key.source, keys=len(key.keys))
        if key.loose_permissions:
            log.warning(EV_KEY_LOOSE, key=which, path=str(key.path))

    async def _purge_loop(self) -> None:
        while True:
            vault = self._vault
            if vault is not None:
                try:
                    purged = await asyncio.to_thread(vault.purge_expired)
                except (OSError, KeyConfigError, RuntimeError) as e:
                    log.warning(EV_VAULT_PURGE_FAILED, error=type(e).__name__)
                else:
                    self.stats.vault_purged += purged
                    if purged:
                        log.info(EV_VAULT_PURGED, rows=purged)
            await asyncio.sleep(self._settings.vault_purge_interval_s)

    # ---- batches ------------------------------------------------------------------------

    def _fingerprint(self, pii: PiiPolicy) -> tuple[str, bytes]:
        """(fingerprint, canonical JSON) of a policy, cached by identity (one object per
        policy version), so a batch pays for neither."""
        cached = self._fingerprints.get(id(pii))
        if cached is not None and cached[0] is pii:
            return cached[1], cached[2]
        raw = canonical(pii)
        fp = fingerprint(pii, raw)
        if len(self._fingerprints) >= _FP_CACHE:
            self._fingerprints.clear()
        self._fingerprints[id(pii)] = (pii, fp, raw)
        if fp not in self._warned and self._pool is not None:
            self._warned.add(fp)
            supported = frozenset(self._pool.describe.get("entities", ()))
            compiled = compile_policy(pii, supported, fp)
            if compiled.unknown_entities or compiled.bad_selectors:
                log.warning(
                    EV_POLICY_WARNING,
                    policy=fp,
                    unknown_entities=compiled.unknown_entities,
                    unparsed_selectors=compiled.bad_selectors,
                )
        return fp, raw

    async def redact(self, req: RedactRequest) -> RedactResult:
        """Redact one batch. Raises RedactError (with `retriable`); never returns raw data."""
        pool = self._pool
        if pool is None:
            raise RedactError("the PII engine is not running", retriable=True)
        fp, policy_json = self._fingerprint(req.policy.pii)
        batch: BatchWire | BatchRequest
        retention = req.policy.retention_days
        if req.frame_json is not None:
            batch = BatchWire(
                req.tenant,
                req.session_id,
                fp,
                policy_json,
                retention,
                req.frame_json,
                "events",
                len(req.events),
            )
        else:
            try:
                events_json = orjson.dumps(req.events)
            except (orjson.JSONEncodeError, TypeError):  # lone surrogates, deep nesting
                batch = BatchRequest(
                    req.tenant, req.session_id, req.policy.pii, fp, retention, req.events
                )
            else:
                batch = BatchWire(
                    req.tenant, req.session_id, fp, policy_json, retention, events_json
                )
        index = pool.pick(req.tenant, req.session_id)
        try:
            outcome: BatchOutcome = await pool.call(index, OP_REDACT, batch)
        except RedactError as e:
            self.stats.failures += 1
            log.warning(EV_BATCH_FAILED, worker=index, retriable=e.retriable, reason=e.reason)
            raise
        self._count(req, outcome)
        return RedactResult(
            events_json=outcome.events_json,
            kept=outcome.kept,
            dropped=outcome.dropped,
            entities=outcome.entities,
            egress_hits=outcome.egress_hits,
        )

    def _count(self, req: RedactRequest, outcome: BatchOutcome) -> None:
        st = self.stats
        st.batches += 1
        st.events_in += len(req.events)
        st.events_kept += outcome.kept
        st.egress_hits += outcome.egress_hits
        st.unanalyzed += outcome.stats.get("unanalyzed", 0)
        self.entities.update(outcome.entities)
        if outcome.egress_hits:
            log.warning(
                EV_EGRESS_HIT,
                tenant=req.tenant,
                project=req.project,
                hits=outcome.egress_hits,
                kinds=outcome.egress_kinds,
            )
        log.debug(
            EV_BATCH,
            tenant=req.tenant,
            events=len(req.events),
            kept=outcome.kept,
            dropped=outcome.dropped,
            entities=sum(outcome.entities.values()),
            bytes=len(outcome.events_json),
        )

    def end_session(self, tenant: str, session_id: str) -> None:
        """Free the session's DOM mirror in its worker (fire and forget)."""
        if self._pool is not None:
            self._pool.cast(
                self._pool.pick(tenant, session_id), OP_END_SESSION, (tenant, session_id)
            )

    def queue_depths(self) -> list[int]:
        """Batches queued or running per worker (a gauge)."""
        return self._pool.depths() if self._pool is not None else []

    async def engine_stats(self) -> list[dict[str, int]]:
        """Detection-engine counters of every worker (calls, cache hits, pre-filtered …)."""
        pool = self._pool
        if pool is None:
            return []
        return list(await asyncio.gather(*(pool.call(i, OP_STATS, None) for i in range(pool.size))))


__all__ = [
    "RedactError",
    "RedactRequest",
    "RedactResult",
    "RedactSettings",
    "RedactStartupError",
    "RedactStats",
    "Redactor",
]
