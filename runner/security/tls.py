"""TLS contexts for the listeners and the outbound clients, reloaded from disk without a restart.

Server contexts speak TLS 1.3 only unless 1.2 is chosen explicitly, and then only ECDHE key
exchange with AEAD ciphers. With a client CA set, a client certificate is required
(`CERT_REQUIRED`): a client without one, or with one from another CA, fails the handshake.
Client contexts always verify the peer's chain and host name.

`ReloadingTls` owns one context and polls its files. A renewed certificate, key, CA bundle or
CRL is copied into a private in-memory snapshot, checked by loading it into a scratch context
(a half-written file or a key that does not match its certificate is refused and the current
one stays), then loaded into the *same* live `SSLContext` on the event loop thread. OpenSSL
copies a context's certificate into each connection when the connection is created, so open
sessions keep the certificate they were set up with and only new handshakes see the new one;
nothing is dropped.

One limit of reloading into a live context: OpenSSL can add CAs to its trust store but not
take them out. A CA *added* to `client_ca_file` is trusted at once; a CA *removed* from it
stays trusted until the next restart, and status says so (`ca_removed_pending_restart`). To
shut out a client certificate now, revoke it in `client_crl_file`: a newer CRL wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from runner.security.files import FileStamps, stamp
from runner.security.settings import OutboundTlsSettings, TlsSettings, TlsVersion

log = structlog.get_logger(__name__)

EV_TLS_LOADED = "tls.loaded"
EV_TLS_RELOADED = "tls.reloaded"
EV_TLS_RELOAD_FAILED = "tls.reload_failed"
EV_TLS_EXPIRING = "tls.expiring"
EV_TLS_CA_REMOVED = "tls.ca_removed"
EV_TLS_WATCH_CRASHED = "tls.watch_crashed"

# TLS 1.2 only (1.3 suites are all AEAD and OpenSSL's defaults are kept): ECDHE for forward
# secrecy, AES-GCM or ChaCha20-Poly1305 (Mozilla's "intermediate" list).
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_SECONDS_PER_DAY = 86_400


class TlsConfigError(Exception):
    """A certificate, key, CA bundle or CRL cannot be read or does not fit together."""


# -- contexts ----------------------------------------------------------------------------------


def _base(purpose: int, min_version: TlsVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = _VERSIONS[min_version]
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def _new_server_context(settings: TlsSettings) -> ssl.SSLContext:
    context = _base(ssl.PROTOCOL_TLS_SERVER, settings.min_version)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    if settings.mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        if settings.client_crl_file is not None:
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def _new_client_context(settings: OutboundTlsSettings) -> ssl.SSLContext:
    context = _base(ssl.PROTOCOL_TLS_CLIENT, settings.min_version)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """A server context from the files as they are now (blocking: reads PEM files)."""
    if not settings.enabled:
        raise TlsConfigError("TLS is not configured (no cert_file)")
    context = _new_server_context(settings)
    _load_into(context, _Files.of(settings))
    return context


def client_context(settings: OutboundTlsSettings) -> ssl.SSLContext:
    """A client context that verifies chain and host name (blocking: reads PEM files)."""
    context = _new_client_context(settings)
    _load_into(context, _Files.of(settings))
    return context


def _load_into(context: ssl.SSLContext, files: _Files) -> None:
    loaded = _read(files)
    try:
        _apply(context, loaded)
    finally:
        loaded.snapshot.close()


# -- files and snapshots -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Files:
    cert: Path | None
    key: Path | None
    ca: Path | None
    crl: Path | None

    @classmethod
    def of(cls, settings: TlsSettings | OutboundTlsSettings) -> _Files:
        if isinstance(settings, TlsSettings):
            return cls(
                settings.cert_file,
                settings.key_file,
                settings.client_ca_file,
                settings.client_crl_file,
            )
        return cls(settings.client_cert, settings.client_key, settings.ca_file, None)

    def items(self) -> Iterator[tuple[str, Path]]:
        for role in ("cert", "key", "ca", "crl"):
            path: Path | None = getattr(self, role)
            if path is not None:
                yield role, path


class _Snapshot:
    """Private copies of the files for one load, which nobody else can change midway.

    In memory (`memfd`) where the platform has it, else in a 0700 temporary folder.
    """

    def __init__(self) -> None:
        self._fds: list[int] = []
        self._dir: str | None = None
        self.paths: dict[str, str] = {}

    def add(self, role: str, data: bytes) -> None:
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            fd = os.memfd_create(f"traceflow-tls-{role}", os.MFD_CLOEXEC)
            self._fds.append(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self.paths[role] = f"/proc/self/fd/{fd}"
            return
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="traceflow-tls-")  # mode 0700
        path = os.path.join(self._dir, role)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self.paths[role] = path

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What status and metrics show of a certificate."""

    subject: str
    not_after: datetime

    def days_left(self, now: datetime | None = None) -> float:
        remaining = self.not_after - (now or datetime.now(UTC))
        return remaining.total_seconds() / _SECONDS_PER_DAY


@dataclass(slots=True)
class _Loaded:
    snapshot: _Snapshot
    leaf: CertInfo | None
    ca_earliest: CertInfo | None
    ca_ders: frozenset[bytes]


def _certs(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TlsConfigError(f"{what}: no PEM certificate in it") from e
    return certs


def _info(cert: x509.Certificate) -> CertInfo:
    return CertInfo(cert.subject.rfc4514_string(), cert.not_valid_after_utc)


def _read(files: _Files) -> _Loaded:
    """Copy the files into a snapshot and parse what status needs (blocking)."""
    snapshot = _Snapshot()
    try:
        leaf: CertInfo | None = None
        ca_earliest: CertInfo | None = None
        ca_ders: frozenset[bytes] = frozenset()
        for role, path in files.items():
            try:
                data = path.read_bytes()
            except OSError as e:
                raise TlsConfigError(f"{role} file {path}: {e.strerror or e}") from e
            snapshot.add(role, data)
            if role == "cert":
                leaf = _info(_certs(data, f"cert file {path}")[0])
            elif role == "ca":
                cas = _certs(data, f"CA file {path}")
                ca_earliest = _info(min(cas, key=lambda c: c.not_valid_after_utc))
                ca_ders = frozenset(c.public_bytes(Encoding.DER) for c in cas)
        return _Loaded(snapshot, leaf, ca_earliest, ca_ders)
    except BaseException:
        snapshot.close()
        raise


def _apply(context: ssl.SSLContext, loaded: _Loaded, roles: frozenset[str] | None = None) -> None:
    """Load a snapshot into a context: certificate and key, CAs, CRLs (`roles` None = all)."""
    paths = loaded.snapshot.paths

    def wanted(*names: str) -> bool:
        return roles is None or bool(roles.intersection(names))

    try:
        if "cert" in paths and wanted("cert", "key"):
            context.load_cert_chain(paths["cert"], paths.get("key"))
        if "ca" in paths and wanted("ca"):
            context.load_verify_locations(cafile=paths["ca"])
        if "crl" in paths and wanted("crl"):
            context.load_verify_locations(cafile=paths["crl"])
    except ssl.SSLError as e:
        raise TlsConfigError(f"TLS files do not load: {e.reason or e}") from e
    except OSError as e:
        raise TlsConfigError(f"TLS files do not load: {e.strerror or e}") from e


# -- the reloading component -------------------------------------------------------------------


@dataclass(slots=True)
class _Counters:
    reloads: int = 0
    failures: int = 0
    last_error: str | None = None
    ca_removed: bool = False


class ReloadingTls:
    """One TLS context (a listener's, or an outbound client's) kept in step with its files.

    `await start()` loads the files and starts polling them every `reload_interval_s`;
    `context` is then the object to hand to `TCPSite(ssl_context=...)` or an aiohttp
    connector, and it stays the same object across reloads. `stop()` ends the polling.
    """

    def __init__(
        self,
        name: str,
        settings: TlsSettings | OutboundTlsSettings,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.name = name
        self._settings = settings
        self._files = _Files.of(settings)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._context: ssl.SSLContext | None = None
        self._stamps: FileStamps = ()
        self._failed_stamps: FileStamps | None = None
        self._leaf: CertInfo | None = None
        self._ca: CertInfo | None = None
        self._ca_ders: frozenset[bytes] = frozenset()
        self._counters = _Counters()
        self._task: asyncio.Task[None] | None = None

    @property
    def context(self) -> ssl.SSLContext:
        if self._context is None:
            raise RuntimeError(f"TLS for {self.name} is not started")
        return self._context

    @property
    def server(self) -> bool:
        return isinstance(self._settings, TlsSettings)

    def _new_context(self) -> ssl.SSLContext:
        s = self._settings
        return _new_server_context(s) if isinstance(s, TlsSettings) else _new_client_context(s)

    async def start(self) -> None:
        """Load the files (a TlsConfigError names what is wrong) and start watching them."""
        if isinstance(self._settings, TlsSettings) and not self._settings.enabled:
            raise TlsConfigError(f"{self.name}: TLS is not configured (no cert_file)")
        self._context, stamps, loaded = await asyncio.to_thread(self._initial)
        try:
            self._took(stamps, loaded)
        finally:
            loaded.snapshot.close()
        log.info(EV_TLS_LOADED, **self._log_fields())
        self._warn_if_expiring()
        if self._stamps:
            self._task = asyncio.create_task(self._watch(), name=f"tls-reload-{self.name}")
            self._task.add_done_callback(self._watch_done)

    def _initial(self) -> tuple[ssl.SSLContext, FileStamps, _Loaded]:
        try:
            stamps = stamp(self._files.items())
        except OSError as e:
            raise TlsConfigError(f"{self.name}: {e.filename}: {e.strerror}") from e
        loaded = _read(self._files)
        try:
            context = self._new_context()
            _apply(context, loaded)
        except BaseException:
            loaded.snapshot.close()
            raise
        return context, stamps, loaded

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        interval = self._settings.reload_interval_s
        while True:
            await asyncio.sleep(interval)  # the poll period, not a wait for some condition
            await self.check()

    def _watch_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(EV_TLS_WATCH_CRASHED, listener=self.name, error=repr(task.exception()))

    async def check(self) -> bool:
        """Reload when a file changed; True when the live context now holds the new files.

        A failed reload keeps the current certificate and is retried when the files change
        again (for instance once the key that belongs to a new certificate is written).
        """
        try:
            stamps = await asyncio.to_thread(stamp, self._files.items())
        except OSError as e:
            return self._failed(None, f"{e.filename}: {e.strerror}")
        if stamps in (self._stamps, self._failed_stamps):
            return False
        try:
            loaded = await asyncio.to_thread(self._validated)
        except TlsConfigError as e:
            return self._failed(stamps, str(e))
        try:
            changed = frozenset(
                old[0] for old, new in zip(self._stamps, stamps, strict=True) if old != new
            )
            # On the loop thread: no handshake can start between loading the certificate and
            # its key, so no connection ever sees one without the other.
            _apply(self.context, loaded, changed)
            self._took(stamps, loaded)
        except TlsConfigError as e:
            return self._failed(stamps, str(e))
        finally:
            await asyncio.to_thread(loaded.snapshot.close)
        self._counters.reloads += 1
        log.info(EV_TLS_RELOADED, changed=sorted(changed), **self._log_fields())
        self._warn_if_expiring()
        return True

    def _validated(self) -> _Loaded:
        loaded = _read(self._files)
        try:
            _apply(self._new_context(), loaded)  # a scratch context: the live one is untouched
        except BaseException:
            loaded.snapshot.close()
            raise
        return loaded

    def _took(self, stamps: FileStamps, loaded: _Loaded) -> None:
        removed = self._ca_ders - loaded.ca_ders if self._ca_ders else frozenset()
        if removed:
            self._counters.ca_removed = True
            log.warning(EV_TLS_CA_REMOVED, listener=self.name, removed=len(removed))
        self._stamps = stamps
        self._failed_stamps = None
        self._leaf = loaded.leaf
        self._ca = loaded.ca_earliest
        self._ca_ders = self._ca_ders | loaded.ca_ders  # what the live store trusts
        self._counters.last_error = None

    def _failed(self, stamps: FileStamps | None, error: str) -> bool:
        self._failed_stamps = stamps
        self._counters.failures += 1
        self._counters.last_error = error
        log.warning(EV_TLS_RELOAD_FAILED, listener=self.name, error=error)
        return False

    # -- status and metrics ---------------------------------------------------------------------

    def _log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"listener": self.name}
        if self._leaf is not None:
            fields["subject"] = self._leaf.subject
            fields["days_left"] = round(self._leaf.days_left(self._clock()), 1)
        return fields

    def _expiring(self) -> bool:
        limit = self._settings.expiry_warning_days
        now = self._clock()
        return any(c is not None and c.days_left(now) < limit for c in (self._leaf, self._ca))

    def _warn_if_expiring(self) -> None:
        if self._expiring():
            log.warning(EV_TLS_EXPIRING, **self._log_fields())

    def status(self) -> dict[str, Any]:
        """For `runner status`: what is served, how long it lasts, how reloads went."""
        now = self._clock()

        def cert(info: CertInfo | None) -> dict[str, Any] | None:
            if info is None:
                return None
            return {
                "subject": info.subject,
                "not_after": info.not_after.isoformat(),
                "days_left": round(info.days_left(now), 1),
            }

        s = self._settings
        return {
            "min_version": s.min_version,
            "mutual": s.mutual if isinstance(s, TlsSettings) else s.client_cert is not None,
            "certificate": cert(self._leaf),
            "ca": cert(self._ca),
            "expiring": self._expiring(),
            "expiry_warning_days": s.expiry_warning_days,
            "reloads": self._counters.reloads,
            "reload_failures": self._counters.failures,
            "last_error": self._counters.last_error,
            "ca_removed_pending_restart": self._counters.ca_removed,
        }

    @property
    def reloads(self) -> int:
        return self._counters.reloads

    @property
    def reload_failures(self) -> int:
        return self._counters.failures

    def collect(self) -> Iterator[Metric]:
        """Metric families read at scrape time (`Metrics.add_collector(tls.collect)`)."""
        expiry = GaugeMetricFamily(
            "traceflow_tls_certificate_expiry_timestamp_seconds",
            "When a certificate in use expires (Unix time).",
            labels=["listener", "certificate"],
        )
        for which, info in (("leaf", self._leaf), ("ca", self._ca)):
            if info is not None:
                expiry.add_metric([self.name, which], info.not_after.timestamp())
        yield expiry
        expiring = GaugeMetricFamily(
            "traceflow_tls_certificate_expiring",
            "1 when a certificate in use expires within expiry_warning_days.",
            labels=["listener"],
        )
        expiring.add_metric([self.name], float(self._expiring()))
        yield expiring
        reloads = CounterMetricFamily(
            "traceflow_tls_reloads",
            "Reloads of TLS files, by result.",
            labels=["listener", "result"],
        )
        reloads.add_metric([self.name, "ok"], self._counters.reloads)
        reloads.add_metric([self.name, "failed"], self._counters.failures)
        yield reloads
