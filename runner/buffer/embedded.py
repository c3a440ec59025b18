"""The embedded Redis: a `redis-server` child on a unix socket under data_dir, AOF on.

It runs with `appendfsync always`, so every reply Redis sends follows an fsync
of the writes it acknowledges. The Runner supervises the child: if it dies,
it is restarted (the AOF brings back every acknowledged batch) and the buffer
reports unavailable meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import psutil
import structlog

from runner.errors import StartupError

log = structlog.get_logger(__name__)

EV_STARTED = "embedded_redis.started"
EV_EXITED = "embedded_redis.exited"
EV_RESTARTING = "embedded_redis.restarting"
EV_STOPPED = "embedded_redis.stopped"
EV_ORPHAN = "embedded_redis.orphan_stopped"

READY_LINE = b"ready to accept connections"  # "Ready to…" on TCP, "…now ready to…" on unix
MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin
START_TIMEOUT_S = 30.0


class EmbeddedRedis:
    """Starts, supervises and stops a private redis-server."""

    def __init__(self, data_dir: Path, binary: str = "redis-server") -> None:
        self._dir = data_dir / "redis"
        self._binary = binary
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0
        self.up = asyncio.Event()

    @property
    def socket_path(self) -> Path:
        return self._dir / "redis.sock"

    @property
    def _pidfile(self) -> Path:
        return self._dir / "redis.pid"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def _command(self) -> list[str]:
        exe = shutil.which(self._binary)
        if exe is None:
            raise StartupError(
                f"{self._binary!r} not found: install redis-server (apt-get install redis-server) "
                "or set [buffer] redis_url to an external Redis"
            )
        return [
            exe,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self._dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--appenddirname", "aof",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",
            "--protected-mode", "yes",
            "--pidfile", str(self._pidfile),
        ]  # fmt: skip

    async def start(self) -> None:
        """Start redis-server and return once it accepts connections."""
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if len(str(self.socket_path)) > MAX_UNIX_PATH:
            raise StartupError(
                f"data_dir is too deep for a unix socket ({self.socket_path}); use a shorter path"
            )
        await self._reap_orphan()
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="embedded-redis")

    async def _reap_orphan(self) -> None:
        """Stop a redis-server left by a killed Runner, so two never share one AOF."""
        try:
            pid = int(self._pidfile.read_text().strip())
            proc = psutil.Process(pid)
            if "redis" not in proc.name():
                return
        except (FileNotFoundError, ValueError, psutil.Error):
            return
        log.warning(EV_ORPHAN, pid=pid)
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 30)
        except psutil.TimeoutExpired:
            proc.kill()

    async def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._proc = await asyncio.create_subprocess_exec(
            *self._command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await asyncio.wait_for(self._until_ready(self._proc), START_TIMEOUT_S)
        except (TimeoutError, StartupError):
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
            raise
        log.info(EV_STARTED, pid=self._proc.pid, socket=str(self.socket_path))
        self.up.set()

    async def _until_ready(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        tail: list[bytes] = []
        while True:
            line = await proc.stdout.readline()
            if not line:
                detail = b" | ".join(tail[-5:]).decode(errors="replace")
                raise StartupError(f"redis-server exited during start-up: {detail}")
            tail.append(line.strip())
            if READY_LINE in line.lower():
                return

    async def _drain_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    async def _supervise(self) -> None:
        backoff = 0.2
        while True:
            proc = self._proc
            assert proc is not None
            await self._drain_output(proc)
            code = await proc.wait()
            self.up.clear()
            if self._stopping:
                return
            log.error(EV_EXITED, code=code)
            while not self._stopping:
                log.warning(EV_RESTARTING, backoff_s=backoff)
                await asyncio.sleep(backoff)  # restart backoff for a crashed child
                try:
                    await self._spawn()
                except StartupError:
                    backoff = min(backoff * 2, 5.0)
                    continue
                self.restarts += 1
                backoff = 0.2
                break

    async def stop(self) -> None:
        """Stop redis-server cleanly (it flushes its AOF) and wait for it."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self.up.clear()
        log.info(EV_STOPPED)
