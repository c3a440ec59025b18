"""The local token vault: token → AES-256-GCM(original), kept for the tenant's retention.

A SQLite file under the data directory, in WAL mode so the worker processes can write while
`runner detokenize` reads. Envelope encryption: each tenant has a random 256-bit data key,
stored wrapped (AES-256-GCM) by the key-encryption key (KEK) from `[pii] vault_key_env` or
`vault_key_file`; every original is encrypted under its tenant's data key with the tenant
and token as associated data, so a row cannot be moved to another token or tenant. A check
value of the KEK is stored on first use: a Runner started with another KEK refuses to start
instead of writing rows no one can read. Rotating the KEK means re-wrapping the data keys
(a few rows), not re-encrypting the vault.
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
    " created_at INTEGER NOT NULL)",
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


class SqliteVault:
    """The vault file. Constructing only stores; `open()` connects and checks the key."""

    def __init__(self, path: Path, kek: bytes) -> None:
        if len(kek) != 32:
            raise KeyConfigError("the vault key-encryption key must be 32 bytes")
        self._path = path
        self._kek = AESGCM(kek)
        self._kcv = hmac.new(kek, _KCV_LABEL, hashlib.sha256).digest()[:16]
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._deks: dict[str, AESGCM] = {}
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()

    def open(self) -> None:
        """Create or open the file and verify that the key-encryption key is the vault's."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self._path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT v FROM meta WHERE k = 'kek_check'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta (k, v) VALUES ('kek_check', ?)", (self._kcv,))
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        if row is not None and not hmac.compare_digest(bytes(row[0]), self._kcv):
            conn.close()
            raise KeyConfigError(
                f"the vault key does not open {self._path}: it was created with another key"
            )
        with contextlib.suppress(OSError):
            os.chmod(self._path, 0o600)
        self._conn = conn

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

    def _dek(self, tenant: str, create: bool) -> AESGCM | None:
        found = self._deks.get(tenant)
        if found is not None:
            return found
        aad = b"traceflow/vault/dek/" + tenant.encode()
        row = self._db.execute(
            "SELECT wrapped FROM tenant_keys WHERE tenant = ?", (tenant,)
        ).fetchone()
        if row is None:
            if not create:
                return None
            nonce = os.urandom(12)
            wrapped = nonce + self._kek.encrypt(nonce, os.urandom(32), aad)
            self._db.execute(
                "INSERT OR IGNORE INTO tenant_keys (tenant, wrapped, created_at) VALUES (?, ?, ?)",
                (tenant, wrapped, int(time.time())),
            )
            row = self._db.execute(
                "SELECT wrapped FROM tenant_keys WHERE tenant = ?", (tenant,)
            ).fetchone()
        blob = bytes(row[0])
        try:
            dek = AESGCM(self._kek.decrypt(blob[:12], blob[12:], aad))
        except InvalidTag as e:
            raise KeyConfigError(f"the vault key cannot unwrap the data key of {tenant!r}") from e
        self._deks[tenant] = dek
        return dek

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
