"""Object storage for dead letters and air-gapped chunks: a folder, or an S3 bucket via minio.

Both backends are blocking (fsync, urllib3), so every call runs in the
executor the caller hands in and the event loop only awaits it. Errors from
below are wrapped at this boundary: `StoreUnavailable` (retriable: the store
could not be reached or refused the write) and `ObjectNotFound`.

`open_store` wraps the backend in a `SealedStore` (sealed.py): payloads are
encrypted on the client before either backend sees them.

Keys are `/`-separated relative names like `dlq/acme/<id>.json`; a component
that is empty, `.` or `..` is refused so a tenant or session id can never
climb out of the store.
"""

from __future__ import annotations

import asyncio
import builtins
import io
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from minio.sse import Sse, SseCustomerKey, SseS3

from runner.errors import RunnerError
from runner.forward.sealed import SealedStore, open_sealer
from runner.forward.settings import DlqSettings

T = TypeVar("T")

LIFECYCLE_RULE_PREFIX = "traceflow-"


class StoreUnavailable(RunnerError):
    """The store could not be reached, or refused the operation; try again later."""

    retriable = True


class ObjectNotFound(RunnerError):
    """No object under that key."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: float
    """Seconds since the epoch."""


class ObjectStore(Protocol):
    """What dead letters and local chunks need of storage."""

    description: str

    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def delete(self, keys: Sequence[str]) -> None: ...

    async def list(self, prefix: str) -> list[ObjectInfo]: ...

    async def check(self) -> None:
        """Raise `StoreUnavailable` unless a write would be expected to succeed."""
        ...

    async def expire(self, prefix: str, days: int) -> int:
        """Apply retention under a prefix; returns objects removed now (0 for server-side rules)."""
        ...


def check_key(key: str) -> str:
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts) or "\\" in key or "\x00" in key:
        raise ValueError(f"unsafe object key {key!r}")
    return key


async def _run(executor: Executor, fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(executor, fn)


class FolderStore:
    """Objects as files under a root folder, written atomically and fsynced."""

    def __init__(self, root: Path, executor: Executor) -> None:
        self._root = root
        self._executor = executor
        self.description = f"folder {root}"

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*check_key(key).split("/"))

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        try:
            await _run(self._executor, lambda: _write_durably(path, data))
        except OSError as e:
            raise StoreUnavailable(f"cannot write {key} ({e.strerror or type(e).__name__})") from e

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await _run(self._executor, path.read_bytes)
        except FileNotFoundError as e:
            raise ObjectNotFound(key) from e
        except OSError as e:
            raise StoreUnavailable(f"cannot read {key} ({e.strerror or type(e).__name__})") from e

    async def delete(self, keys: Sequence[str]) -> None:
        paths = [self._path(k) for k in keys]

        def unlink_all() -> None:
            for path in paths:
                path.unlink(missing_ok=True)

        try:
            await _run(self._executor, unlink_all)
        except OSError as e:
            raise StoreUnavailable(f"cannot delete ({e.strerror or type(e).__name__})") from e

    async def list(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self._root
        try:
            return await _run(self._executor, lambda: self._walk(base))
        except OSError as e:
            raise StoreUnavailable(f"cannot list ({e.strerror or type(e).__name__})") from e

    def _walk(self, base: Path) -> builtins.list[ObjectInfo]:
        found: builtins.list[ObjectInfo] = []
        if not base.is_dir():
            return found
        for folder, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith("."):
                    continue  # temp files of writes in progress
                path = Path(folder, name)
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # removed while we walked
                key = path.relative_to(self._root).as_posix()
                found.append(ObjectInfo(key, st.st_size, st.st_mtime))
        found.sort(key=lambda o: o.key)
        return found

    async def check(self) -> None:
        def probe() -> None:
            self._root.mkdir(parents=True, exist_ok=True)
            if not os.access(self._root, os.W_OK):
                raise PermissionError(13, "not writable")
            st = os.statvfs(self._root)
            if st.f_bavail * st.f_frsize < 1024 * 1024:
                raise OSError(28, "no space left")

        try:
            await _run(self._executor, probe)
        except OSError as e:
            raise StoreUnavailable(f"{self.description}: {e.strerror or type(e).__name__}") from e

    async def expire(self, prefix: str, days: int) -> int:
        cutoff = time.time() - days * 86400
        objects = await self.list(prefix)
        old = [o.key for o in objects if o.modified < cutoff]
        if old:
            await self.delete(old)
            base = self._path(prefix.rstrip("/"))
            await _run(self._executor, lambda: _prune_empty(base))
        return len(old)


def _write_durably(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync it, rename over `path`, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _prune_empty(base: Path) -> None:
    if not base.is_dir():
        return
    for folder, dirs, files in os.walk(base, topdown=False):
        if not dirs and not files and Path(folder) != base:
            Path(folder).rmdir()


class S3Store:
    """Objects in one bucket under a prefix, through the blocking minio client in an executor."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        prefix: str,
        executor: Executor,
        sse: Sse | None = None,
        create_bucket: bool = True,
        manage_lifecycle: bool = True,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix
        self._executor = executor
        self._sse = sse
        self._ssec = sse if isinstance(sse, SseCustomerKey) else None
        self._create_bucket = create_bucket
        self._manage_lifecycle = manage_lifecycle
        self._bucket_ready = False
        self._rules: dict[str, int] = {}
        self.description = f"s3://{bucket}/{prefix}"

    def _name(self, key: str) -> str:
        return self._prefix + check_key(key)

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return await _run(self._executor, fn)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(what) from e
            raise StoreUnavailable(f"{self.description}: {what} refused ({e.code})") from e
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise StoreUnavailable(f"{self.description}: {what} failed ({type(e).__name__})") from e

    async def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return

        def ensure() -> None:
            if self._client.bucket_exists(self._bucket):
                return
            if not self._create_bucket:
                raise ValueError(f"bucket {self._bucket} does not exist")
            self._client.make_bucket(self._bucket)

        await self._call("bucket check", ensure)
        self._bucket_ready = True

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await self._ensure_bucket()
        name = self._name(key)
        await self._call(
            f"put {key}",
            lambda: self._client.put_object(
                self._bucket, name, io.BytesIO(data), len(data), content_type, sse=self._sse
            ),
        )

    async def get(self, key: str) -> bytes:
        name = self._name(key)

        def fetch() -> bytes:
            response = self._client.get_object(self._bucket, name, ssec=self._ssec)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await self._call(f"get {key}", fetch)

    async def delete(self, keys: Sequence[str]) -> None:
        names = [DeleteObject(self._name(k)) for k in keys]

        def remove() -> None:
            errors = list(self._client.remove_objects(self._bucket, names))
            if errors:
                raise ValueError(f"{len(errors)} object(s) not deleted ({errors[0].code})")

        await self._call("delete", remove)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        full = self._prefix + prefix

        def collect() -> list[ObjectInfo]:
            out = []
            for obj in self._client.list_objects(self._bucket, prefix=full, recursive=True):
                name = obj.object_name or ""
                if obj.is_dir or not name.startswith(self._prefix):
                    continue
                modified = obj.last_modified.timestamp() if obj.last_modified else 0.0
                out.append(ObjectInfo(name[len(self._prefix) :], obj.size or 0, modified))
            out.sort(key=lambda o: o.key)
            return out

        return await self._call("list", collect)

    async def check(self) -> None:
        self._bucket_ready = False
        await self._ensure_bucket()

    async def expire(self, prefix: str, days: int) -> int:
        """A lifecycle rule per prefix: the server deletes objects older than `days`."""
        if not self._manage_lifecycle or self._rules.get(prefix) == days:
            return 0
        await self._ensure_bucket()
        full = self._prefix + check_key(prefix.rstrip("/")) + "/"
        rule_id = LIFECYCLE_RULE_PREFIX + full.strip("/").replace("/", "-")[-200:]

        def apply() -> None:
            try:
                current = self._client.get_bucket_lifecycle(self._bucket)
            except S3Error as e:
                if e.code != "NoSuchLifecycleConfiguration":
                    raise
                current = None
            rules = [r for r in (current.rules if current else []) if r.rule_id != rule_id]
            rules.append(
                Rule(
                    ENABLED,
                    rule_filter=Filter(prefix=full),
                    rule_id=rule_id,
                    expiration=Expiration(days=days),
                )
            )
            self._client.set_bucket_lifecycle(self._bucket, LifecycleConfig(rules))

        await self._call("lifecycle", apply)
        self._rules[prefix] = days
        return 0


def open_store(
    settings: DlqSettings,
    data_dir: Path,
    executor: Executor,
    environ: Mapping[str, str],
    *,
    operator: bool = False,
) -> ObjectStore:
    """The folder under data_dir for `url = ""`, else the S3 bucket the URL names; sealed.

    Payload objects are sealed with the `[dlq.at_rest]` keyring (see sealed.py). `operator`:
    a CLI command, which never creates a development key and logs nothing. Raises ValueError
    for bad S3 settings and `StartupError` for a missing or unusable keyring. Blocking: may
    read (or create) a key file.
    """
    sealer = open_sealer(settings.at_rest, data_dir, environ, operator=operator)
    backend = _backend(settings, data_dir, executor, environ)
    return SealedStore(backend, sealer, executor, read_unsealed=settings.at_rest.read_unsealed)


def _backend(
    settings: DlqSettings, data_dir: Path, executor: Executor, environ: Mapping[str, str]
) -> ObjectStore:
    if not settings.url:
        return FolderStore(data_dir, executor)
    endpoint = settings.s3_endpoint or "https://s3.amazonaws.com"
    secure = endpoint.startswith("https://")
    host = endpoint.split("://", 1)[1]
    timeout = urllib3.Timeout(connect=settings.timeout_s, read=settings.timeout_s)
    http = urllib3.PoolManager(
        timeout=timeout,
        maxsize=settings.io_workers,
        cert_reqs="CERT_REQUIRED" if secure else "CERT_NONE",
        ca_certs=str(settings.ca_file) if settings.ca_file else None,
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(502, 503, 504)),
    )
    client = Minio(
        host,
        access_key=environ.get(settings.access_key_env) or None,
        secret_key=environ.get(settings.secret_key_env) or None,
        session_token=environ.get(settings.session_token_env) or None,
        secure=secure,
        region=settings.region or None,
        http_client=http,
    )
    sse: Sse | None = None
    if settings.sse == "s3":
        sse = SseS3()
    elif settings.sse == "c":
        sse = SseCustomerKey(settings.sse_c_key(environ))
    return S3Store(
        client,
        settings.bucket,
        settings.prefix,
        executor,
        sse=sse,
        create_bucket=settings.create_bucket,
        manage_lifecycle=settings.manage_lifecycle,
    )
