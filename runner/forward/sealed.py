"""Sealed storage: payload objects are encrypted before they reach the folder or the S3 bucket.

`SealedStore` wraps the folder or S3 `ObjectStore` that `open_store` builds: `put` seals an
object's bytes with the at-rest `Sealer` (AES-256-GCM envelope, `runner/security/atrest.py`)
and `get` opens them, both in the store's executor. The object's key — for instance
`dlq/<tenant>/<chunk_id>.zst` or `chunks/<tenant>/<date>/<session>/<chunk_id>.ndjson.zst` — is
the authenticated context, so an object copied to another name or another tenant's folder does
not open, and neither does one with a flipped bit. The S3 server only ever sees sealed bytes
(SSE-S3 / SSE-C, when configured, add the server's own layer on top).

Only metadata stays clear — dead-letter metadata (`dlq/<tenant>/<id>.json`: ids, counts,
status codes, times) and drain spill manifests (`spills/<id>.json`: chunk ids and counts),
never payload — so letters can still be listed and purged after the key that sealed their
payload has been retired. Objects written before encryption at rest (no sealed header)
are refused as unreadable unless `[dlq.at_rest] read_unsealed` is on.

Keys: `[dlq.at_rest]` names the keyring (environment variable or key file, first key current).
With neither, the Runner creates a development keyring in `<data_dir>/at-rest.keys` once and
logs `at_rest.key_generated`; operator commands never create one.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import structlog

from runner.errors import RunnerError, StartupError
from runner.security.atrest import KeyringSource, Sealer, SealError, is_sealed, load_keyring
from runner.security.settings import AtRestSettings

if TYPE_CHECKING:  # storage.py builds SealedStore, so only the types are imported from it
    from runner.forward.storage import ObjectInfo, ObjectStore

log = structlog.get_logger(__name__)

T = TypeVar("T")

EV_KEY_LOADED = "at_rest.key_loaded"
EV_KEY_GENERATED = "at_rest.key_generated"
EV_KEY_LOOSE = "at_rest.key_file_readable_by_others"

DEV_KEYS_FILE = "at-rest.keys"
"""The development keyring's name under data_dir."""
SEALED_CONTENT_TYPE = "application/octet-stream"


class ObjectUnreadable(RunnerError):
    """An object exists but cannot be opened: its key was rotated out, another keyring, tampered
    with, moved to another name, or written unsealed. Retrying will not help."""


CLEAR_PREFIXES = ("dlq/", "spills/")
"""Where metadata lives: dead-letter metadata (deadletter.py), spill manifests (spill.py)."""


def is_metadata(key: str) -> bool:
    """Metadata objects (`dlq/<tenant>/<id>.json`, `spills/<id>.json`) hold no payload: clear.

    Everything else is sealed, so a new kind of object is encrypted unless it is added here.
    """
    return key.startswith(CLEAR_PREFIXES) and key.endswith(".json")


def open_sealer(
    settings: AtRestSettings,
    data_dir: Path,
    environ: Mapping[str, str],
    *,
    operator: bool = False,
) -> Sealer:
    """The Sealer over the configured keyring (blocking: reads, and may create, a key file).

    `operator` is for CLI commands: they never create a development key and log nothing (their
    stdout is the output). Raises `StartupError` naming what to configure.
    """
    dev_file = data_dir / DEV_KEYS_FILE
    rules = settings.model_copy(update={"generate_dev_key": False}) if operator else settings
    try:
        loaded = load_keyring(rules, environ, dev_file)
    except StartupError as e:
        first_run = operator and settings.generate_dev_key and not dev_file.exists()
        hint = " (or start the Runner once to create a development key)" if first_run else ""
        raise StartupError(f"[dlq.at_rest] {e}{hint}") from e
    if not operator:
        _announce(loaded)
    return Sealer(loaded.keyring)


def _announce(loaded: KeyringSource) -> None:
    """Say where the keys came from: the source, the path and the key ids, never a key."""
    if loaded.source == "generated":
        log.warning(
            EV_KEY_GENERATED,
            path=str(loaded.path),
            key_id=loaded.keyring.current_kid,
            note="development key next to the data it protects; "
            "set $TRACEFLOW_AT_REST_KEYS or [dlq.at_rest] keys_file",
        )
    else:
        log.info(
            EV_KEY_LOADED,
            source=loaded.source,
            current=loaded.keyring.current_kid,
            keys=len(loaded.keyring.kids),
        )
    if loaded.loose_permissions:
        log.warning(EV_KEY_LOOSE, path=str(loaded.path))


class SealedStore:
    """An `ObjectStore` that seals what it writes and opens what it reads (except metadata)."""

    def __init__(
        self,
        inner: ObjectStore,
        sealer: Sealer,
        executor: Executor,
        *,
        read_unsealed: bool = False,
    ) -> None:
        self._inner = inner
        self._sealer = sealer
        self._executor = executor
        self._read_unsealed = read_unsealed
        self.description = inner.description

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        if is_metadata(key):
            await self._inner.put(key, data, content_type)
            return
        context = key.encode()
        sealed = await self._run(lambda: self._sealer.seal(data, context))
        await self._inner.put(key, sealed, SEALED_CONTENT_TYPE)

    async def get(self, key: str) -> bytes:
        """The object's clear bytes; `ObjectUnreadable` when it does not open."""
        data = await self._inner.get(key)
        if is_metadata(key):
            return data
        if not is_sealed(data):
            if self._read_unsealed:
                return data
            raise ObjectUnreadable(
                f"{key} is not sealed (written before encryption at rest?); "
                "set [dlq.at_rest] read_unsealed = true to read it"
            )
        context = key.encode()
        try:
            return await self._run(lambda: self._sealer.open(data, context))
        except SealError as e:
            raise ObjectUnreadable(f"{key}: {e}") from e

    async def delete(self, keys: Sequence[str]) -> None:
        await self._inner.delete(keys)

    async def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        return await self._inner.list(prefix)

    async def check(self) -> None:
        await self._inner.check()

    async def expire(self, prefix: str, days: int) -> int:
        return await self._inner.expire(prefix, days)
