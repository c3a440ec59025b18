"""The local token vault: token → AES-256-GCM(original), kept for the tenant's retention.

A SQLite file under the data directory, in WAL mode so the worker processes can write while
`runner detokenize` reads. Envelope encryption: each tenant has a random 256-bit data key,
stored wrapped (AES-256-GCM, bound to the tenant) by a key-encryption key (KEK) from
`[pii] vault_key_env` or `vault_key_file`; every original is encrypted under its tenant's data
key with the tenant and token as associated data, so a row cannot be moved to another token
or tenant.

The KEKs are a keyring, current first: new data keys are wrapped under the current KEK, and a
data key wrapped under an older KEK still unwraps while that KEK stays in the keyring. Each
wrapped data key records which KEK wrapped it (the KEK's check value: an HMAC of a label, which
reveals nothing of the key), so a Runner started without a KEK the vault needs refuses to
start instead of writing rows no one can read. Rotating the KEK means re-wrapping the data
keys (`rewrap`, one row per tenant; `runner pii rotate-vault-key`), not re-encrypting the vault.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runner.redact.errors import KeyConfigError

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tenant_keys (tenant TEXT PRIMARY KEY, wrapped BLOB NOT NULL,"
    " created_at INTEGER NOT NULL, kek BLOB)",
    "CREATE TABLE IF NOT EXISTS tokens (tenant TEXT NOT NULL, token TEXT NOT NULL,"
    " nonce BLOB NOT NULL, ct BLOB NOT NULL, created_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL, PRIMARY KEY (tenant, token)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS tokens_by_token ON tokens (token)",
    "CREATE INDEX IF NOT EXISTS tokens_by_expiry ON tokens (expires_at)",
)
_KCV_LABEL = b"traceflow/vault/kek-check/v1"
_SEEN_MAX = 200_000
_REFRESH_S = 86_400
DAY_S = 86_400


class TokenSink(Protocol):
    """Where workers put reversible tokens (the vault, or nothing when it is disabled)."""

    def put_many(self, tenant: str, items: Sequence[tuple[str, str]], expires_at: int) -> int:
        """Store (token, original) pairs until `expires_at` (unix seconds); returns rows written."""
        ...


@dataclass(frozen=True, slots=True)
class VaultEntry:
    """One decrypted vault row."""

    tenant: str
    token: str
    original: str
    expires_at: int


def key_id(check_value: bytes) -> str:
    """How a KEK is named in messages and by `runner pii rotate-vault-key`."""
    return check_value[:8].hex()


class VaultKeyring:
    """The vault's KEKs, current first; each is known by its check value, never by the key."""

    def __init__(self, keks: Sequence[bytes]) -> None:
        if not keks:
            raise KeyConfigError("the vault needs a key-encryption key")
        self._aead: dict[bytes, AESGCM] = {}
        for kek in keks:
            if len(kek) != 32:
                raise KeyConfigError("the vault key-encryption key must be 32 bytes")
            kcv = hmac.new(kek, _KCV_LABEL, hashlib.sha256).digest()[:16]
            if kcv in self._aead:
                raise KeyConfigError("the vault keyring holds the same key twice")
            self._aead[kcv] = AESGCM(kek)
        self.ids: tuple[bytes, ...] = tuple(self._aead)
        self.current = self.ids[0]

    def wrap(self, tenant: str, dek: bytes) -> tuple[bytes, bytes]:
        """(check value of the current KEK, nonce + the data key wrapped under it)."""
        nonce = os.urandom(12)
        return self.current, nonce + self._aead[self.current].encrypt(nonce, dek, _dek_aad(tenant))

    def unwrap(self, kcv: bytes | None, tenant: str, blob: bytes) -> bytes:
        """The tenant's data key; KeyConfigError when its KEK is not here or it does not open.

        `kcv` None (a row from before rotation support, not yet migrated) tries every KEK.
        """
        if kcv is not None and kcv not in self._aead:
            raise KeyConfigError(
                f"the data key of {tenant!r} is wrapped under vault key {key_id(kcv)},"
                " which is not in the keyring"
            )
        for aead in self._aead.values() if kcv is None else (self._aead[kcv],):
            with contextlib.suppress(InvalidTag):
                return aead.decrypt(blob[:12], blob[12:], _dek_aad(tenant))
        raise KeyConfigError(f"the vault key cannot unwrap the data key of {tenant!r}")


def _dek_aad(tenant: str) -> bytes:
    return b"traceflow/vault/dek/" + tenant.encode()


@dataclass(frozen=True, slots=True)
class RewrapReport:
    """What `rewrap` did: tenant data keys per KEK id before it, and how many it re-wrapped."""

    before: dict[str, int]
    rewrapped: int
    current: str


class SqliteVault:
    """The vault file. Constructing only stores; `open()` connects and checks the keys.

    `kek` is one key-encryption key, or a keyring of them with the current one first.
    """

    def __init__(self, path: Path, kek: bytes | Sequence[bytes]) -> None:
        self._path = path
        self._ring = VaultKeyring([kek] if isinstance(kek, bytes) else kek)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._deks: dict[str, AESGCM] = {}
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()

    def open(self) -> None:
        """Create or open the file and check that the keyring holds every KEK the vault needs."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self._path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                missing = self._prepare(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        if missing:
            conn.close()
            raise KeyConfigError(
                f"the vault key does not open {self._path}: it was created with another key"
                f" (it needs vault key {', '.join(missing)}, which is not in the keyring; keep"
                " that key after the current one until `runner pii rotate-vault-key` has run)"
            )
        with contextlib.suppress(OSError):
            os.chmod(self._path, 0o600)
        self._conn = conn

    def _prepare(self, conn: sqlite3.Connection) -> list[str]:
        """Schema and migration; returns the ids of KEKs the vault needs but the keyring lacks."""
        for statement in _SCHEMA:
            conn.execute(statement)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tenant_keys)")}
        if "kek" not in columns:  # a vault from before KEK rotation: one KEK, named in meta
            conn.execute("ALTER TABLE tenant_keys ADD COLUMN kek BLOB")
        row = conn.execute("SELECT v FROM meta WHERE k = 'kek_check'").fetchone()
        recorded = None if row is None else bytes(row[0])
        if recorded is not None:
            conn.execute("UPDATE tenant_keys SET kek = ? WHERE kek IS NULL", (recorded,))
        needed = {
            bytes(r[0])
            for r in conn.execute("SELECT DISTINCT kek FROM tenant_keys WHERE kek IS NOT NULL")
        }
        if not needed and recorded is not None:
            needed = {recorded}  # no data key yet: the KEK it was last opened with
        missing = sorted(key_id(kcv) for kcv in needed if kcv not in self._ring.ids)
        if not missing and recorded != self._ring.current:
            conn.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('kek_check', ?)", (self._ring.current,)
            )
        return missing

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("vault is not open")
        return self._conn

    @property
    def current_key_id(self) -> str:
        """The id of the KEK that wraps new data keys."""
        return key_id(self._ring.current)

    def _dek(self, tenant: str, create: bool) -> AESGCM | None:
        found = self._deks.get(tenant)
        if found is not None:
            return found
        query = "SELECT wrapped, kek FROM tenant_keys WHERE tenant = ?"
        row = self._db.execute(query, (tenant,)).fetchone()
        if row is None:
            if not create:
                return None
            kcv, wrapped = self._ring.wrap(tenant, os.urandom(32))
            self._db.execute(
                "INSERT OR IGNORE INTO tenant_keys (tenant, wrapped, created_at, kek)"
                " VALUES (?, ?, ?, ?)",
                (tenant, wrapped, int(time.time()), kcv),
            )
            row = self._db.execute(query, (tenant,)).fetchone()
        kek = None if row[1] is None else bytes(row[1])
        dek = AESGCM(self._ring.unwrap(kek, tenant, bytes(row[0])))
        self._deks[tenant] = dek
        return dek

    def key_usage(self) -> dict[str, int]:
        """Tenant data keys per KEK id (an old KEK may go once it wraps none)."""
        with self._lock:
            rows = self._db.execute("SELECT kek, count(*) FROM tenant_keys GROUP BY kek")
            return {key_id(bytes(kek)) if kek else "unknown": int(n) for kek, n in rows}

    def rewrap(self) -> RewrapReport:
        """Wrap every tenant data key under the current KEK, in one transaction.

        The data keys themselves do not change, so no token row is touched and a running Runner
        (whose workers may hold them in memory) is unaffected. Afterwards older KEKs can go.
        """
        with self._lock:
            db = self._db
            before = self.key_usage()
            changed = 0
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute("SELECT tenant, wrapped, kek FROM tenant_keys").fetchall()
                for tenant, wrapped, kek in rows:
                    old = None if kek is None else bytes(kek)
                    if old == self._ring.current:
                        continue
                    dek = self._ring.unwrap(old, tenant, bytes(wrapped))
                    kcv, blob = self._ring.wrap(tenant, dek)
                    db.execute(
                        "UPDATE tenant_keys SET wrapped = ?, kek = ? WHERE tenant = ?",
                        (blob, kcv, tenant),
                    )
                    changed += 1
                db.execute(
                    "INSERT OR REPLACE INTO meta (k, v) VALUES ('kek_check', ?)",
                    (self._ring.current,),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return RewrapReport(before, changed, self.current_key_id)

    def put_many(self, tenant: str, items: Sequence[tuple[str, str]], expires_at: int) -> int:
        """Store new tokens and push out the expiry of known ones; one transaction."""
        with self._lock:
            fresh: list[tuple[str, str]] = []
            for token, original in items:
                seen = self._seen.get((tenant, token))
                if seen is None or expires_at > seen + _REFRESH_S:
                    fresh.append((token, original))
            if not fresh:
                return 0
            db = self._db
            now = int(time.time())
            db.execute("BEGIN IMMEDIATE")
            try:
                dek = self._dek(tenant, create=True)
                if dek is None:  # pragma: no cover - create=True always yields a key
                    raise RuntimeError("no data key")
                rows = []
                for token, original in dict(fresh).items():
                    nonce = os.urandom(12)
                    aad = f"{tenant}\x00{token}".encode()
                    ct = dek.encrypt(nonce, original.encode("utf-8", "surrogatepass"), aad)
                    rows.append((tenant, token, nonce, ct, now, expires_at))
                db.executemany(
                    "INSERT INTO tokens (tenant, token, nonce, ct, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, token) DO UPDATE SET"
                    " expires_at = max(expires_at, excluded.expires_at)",
                    rows,
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._deks.pop(tenant, None)
                raise
            for token, _ in fresh:
                self._seen[(tenant, token)] = expires_at
                self._seen.move_to_end((tenant, token))
            while len(self._seen) > _SEEN_MAX:
                self._seen.popitem(last=False)
            return len(rows)

    def lookup(
        self, token: str, tenant: str | None = None, now: int | None = None
    ) -> list[VaultEntry]:
        """The unexpired originals of a token (one per tenant that has it)."""
        with self._lock:
            when = int(time.time()) if now is None else now
            if tenant is None:
                rows = self._db.execute(
                    "SELECT tenant, token, nonce, ct, expires_at FROM tokens"
                    " WHERE token = ? AND expires_at >= ?",
                    (token, when),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT tenant, token, nonce, ct, expires_at FROM tokens"
                    " WHERE tenant = ? AND token = ? AND expires_at >= ?",
                    (tenant, token, when),
                ).fetchall()
            out = []
            for row_tenant, row_token, nonce, ct, expires in rows:
                dek = self._dek(row_tenant, create=False)
                if dek is None:
                    continue
                aad = f"{row_tenant}\x00{row_token}".encode()
                try:
                    plain = dek.decrypt(bytes(nonce), bytes(ct), aad)
                except InvalidTag as e:
                    raise KeyConfigError(
                        "a vault row does not decrypt: the vault is damaged"
                    ) from e
                out.append(
                    VaultEntry(
                        row_tenant, row_token, plain.decode("utf-8", "surrogatepass"), int(expires)
                    )
                )
            return out

    def purge_expired(self, now: int | None = None) -> int:
        """Delete rows past their expiry; returns how many."""
        with self._lock:
            when = int(time.time()) if now is None else now
            cur = self._db.execute("DELETE FROM tokens WHERE expires_at < ?", (when,))
            return cur.rowcount

    def count(self) -> int:
        """Rows held (expired or not)."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM tokens").fetchone()[0])
