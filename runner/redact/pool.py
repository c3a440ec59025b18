"""A bounded pool of worker processes with sticky dispatch, so both cores redact and the event
loop never blocks.

Each worker is a spawned process with a duplex pipe, which the parent drives from the event
loop without ever blocking (`channel`): requests are written when the pipe takes them, replies
are read when they arrive. A batch crosses the pipe as JSON bytes (`BatchWire`), so neither
side pickles nested events. A session always goes to the same worker (its DOM mirror lives
there). Each worker takes at most `max_pending_per_worker` batches; a batch that cannot get a
slot within `queue_timeout_s` fails with a retriable error (the SDK is told to retry later). A
batch running past `batch_timeout_s` gets its worker killed and restarted; a worker that dies
is restarted on next use. Either way the batch fails with a retriable error and its session's
mirror is gone (unknown nodes are then sensitive).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import multiprocessing
import signal
import traceback
import zlib
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from runner.redact.channel import Channel
from runner.redact.errors import RedactError, RedactStartupError
from runner.redact.messages import UnencodableBatch, WorkerConfig

log = structlog.get_logger(__name__)

EV_WORKER_READY = "pii.worker_ready"
EV_WORKER_DIED = "pii.worker_died"
EV_WORKER_KILLED = "pii.worker_killed"
EV_WORKER_CALLBACK_FAILED = "pii.worker_cast_failed"

OP_REDACT = "redact"
OP_END_SESSION = "end_session"
OP_STATS = "stats"
_OP_STOP = "stop"


def _where(e: BaseException) -> str:
    """An exception as type and innermost location only: messages may quote payload text."""
    frames = traceback.extract_tb(e.__traceback__)
    at = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}{at}"


def worker_main(conn: Connection, config: WorkerConfig) -> None:
    """The worker process: build the state, then answer requests until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from runner.redact.worker import WorkerState  # Presidio and spaCy: workers only

        state = WorkerState.build(config)
    except RedactStartupError as e:
        conn.send(("init_error", f"{type(e).__name__}: {e}"))
        return
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which refuses to start
        conn.send(("init_error", _where(e)))
        return
    gc.collect()
    gc.freeze()  # Presidio, spaCy and the recognizers live as long as the worker: never rescan
    conn.send(("ready", state.describe()))
    while True:
        try:
            op, req_id, payload = conn.recv()
        except (EOFError, OSError):
            return
        if op == _OP_STOP:
            return
        try:
            if op == OP_REDACT:
                result: Any = state.redact(payload)  # a BatchWire, or a BatchRequest
            elif op == OP_END_SESSION:
                result = state.end_session(*payload)
            elif op == OP_STATS:
                result = dict(state.engine.stats)
            else:
                raise ValueError("unknown operation")
            reply = (req_id, True, result)
        except UnencodableBatch as e:
            reply = (req_id, False, ("unencodable", str(e)))
        except Exception as e:  # noqa: BLE001 - reported to the caller as a failed batch
            reply = (req_id, False, ("error", _where(e)))
        conn.send(reply)


class WorkerGone(Exception):
    """The worker process exited or was killed while a request was pending."""


class _Generation:
    """One process of a worker slot, with its pipe and pending requests."""

    def __init__(self, proc: BaseProcess, ready: asyncio.Future[Any]) -> None:
        self.proc = proc
        self.ready = ready
        self.channel: Channel | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.gone = False

    def send(self, op: str, req_id: int, payload: Any) -> None:
        """Send one request; a payload that cannot be pickled fails its request only."""
        if self.channel is None or self.channel.closed:
            fut = self.pending.pop(req_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(WorkerGone())
            return
        try:
            self.channel.send((op, req_id, payload))
        except Exception:  # noqa: BLE001 - a payload pickle refuses fails its batch, not the pipe
            _resolve(self, req_id, False, ("unencodable", "payload cannot be sent"))

    def on_message(self, message: Any) -> None:
        """A message from the worker: first its start-up answer, then replies."""
        if not self.ready.done():
            _settle_ready(self.ready, message)
        elif isinstance(message, tuple) and len(message) == 3:
            _resolve(self, *message)

    def close(self) -> None:
        """Close the pipe."""
        if self.channel is not None:
            self.channel.close()

    @property
    def alive(self) -> bool:
        return not self.gone and self.proc.is_alive()


class _Worker:
    """One worker slot: its current process and the bound on batches sent to it."""

    def __init__(self, index: int, config: WorkerConfig, pending_limit: int) -> None:
        self.index = index
        self._config = config
        self._slots = asyncio.Semaphore(pending_limit)
        self._ids = itertools.count()
        self._gen: _Generation | None = None
        self.depth = 0
        """Batches queued or running in this worker (a gauge)."""
        self.restarts = 0

    def _spawn(self) -> _Generation:
        loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=worker_main,
            args=(child, self._config),
            name=f"pii-worker-{self.index}",
            daemon=True,
        )
        proc.start()
        child.close()
        gen = _Generation(proc, loop.create_future())
        gen.channel = Channel(parent, loop, gen.on_message, lambda: self._gone(gen))
        return gen

    def _gone(self, gen: _Generation) -> None:
        gen.gone = True
        _settle_ready(gen.ready, ("init_error", "the worker exited"))
        if gen.pending:
            log.warning(EV_WORKER_DIED, worker=self.index, pending=len(gen.pending))
        pending, gen.pending = gen.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(WorkerGone())

    async def ensure(self, limit_s: float) -> dict[str, Any]:
        """Wait until the worker is ready, starting or restarting its process first if needed."""
        gen = self._gen
        if gen is None or (gen.ready.done() and not gen.alive):
            if gen is not None:
                self.restarts += 1
                gen.close()
            gen = self._gen = self._spawn()
        result: dict[str, Any] = await asyncio.wait_for(asyncio.shield(gen.ready), limit_s)
        return result

    def _release(self, fut: asyncio.Future[Any]) -> None:
        self.depth -= 1
        self._slots.release()
        if not fut.cancelled():
            fut.exception()  # retrieved: a caller that timed out no longer awaits it

    async def call(self, op: str, payload: Any, queue_s: float, limit_s: float) -> Any:
        """Send one request and wait for its reply, within the pool's bounds.

        The common case (a free slot, a running worker) takes no timer tasks: only the reply
        wait has a deadline, a plain timer.
        """
        if self._slots.locked():
            try:
                await asyncio.wait_for(self._slots.acquire(), queue_s)
            except TimeoutError:
                raise RedactError("all PII workers are busy", retriable=True) from None
        else:
            await self._slots.acquire()  # free: returns at once
        self.depth += 1
        try:
            if not _usable(self._gen):
                await self.ensure(max(limit_s, self._config.settings.start_timeout_s))
        except (RedactStartupError, TimeoutError) as e:
            self.depth -= 1
            self._slots.release()
            raise RedactError("a PII worker could not be restarted", retriable=True) from e
        except BaseException:
            self.depth -= 1
            self._slots.release()
            raise
        gen = self._gen
        if gen is None:  # pragma: no cover - ensure() sets it
            raise RedactError("the PII worker is not running", retriable=True)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        fut.add_done_callback(self._release)
        req_id = next(self._ids)
        gen.pending[req_id] = fut
        gen.send(op, req_id, payload)
        # Wait on a separate future: a caller that is cancelled or times out leaves `fut`
        # pending, so the slot is only released when the worker is really done with it.
        waiter: asyncio.Future[Any] = loop.create_future()
        fut.add_done_callback(lambda done: _relay(done, waiter))
        timer = loop.call_later(limit_s, _expire, waiter)
        try:
            return await waiter
        except _Expired:
            self.kill(reason="batch_timeout")
            raise RedactError(
                "a PII worker took too long and was restarted", retriable=True
            ) from None
        except WorkerGone:
            raise RedactError("a PII worker exited and was restarted", retriable=True) from None
        finally:
            timer.cancel()

    def cast(self, op: str, payload: Any) -> None:
        """Send a request whose reply nobody waits for (a failure is logged)."""
        gen = self._gen
        if gen is None or not gen.alive:
            return
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(self._cast_done)
        req_id = next(self._ids)
        gen.pending[req_id] = fut
        gen.send(op, req_id, payload)

    def _cast_done(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and (error := fut.exception()) is not None:
            log.warning(EV_WORKER_CALLBACK_FAILED, worker=self.index, error=type(error).__name__)

    def kill(self, reason: str) -> None:
        """Kill the process now (it is restarted on next use)."""
        gen = self._gen
        log.warning(EV_WORKER_KILLED, worker=self.index, reason=reason)
        if gen is not None and gen.proc.is_alive():
            gen.proc.kill()

    @property
    def pid(self) -> int | None:
        """The current process id (tests kill it to prove restarts)."""
        return self._gen.proc.pid if self._gen is not None else None

    async def stop(self, grace_s: float) -> None:
        """Ask the worker to exit, kill it if it does not."""
        gen, self._gen = self._gen, None
        if gen is None:
            return
        gen.send(_OP_STOP, -1, None)
        await asyncio.to_thread(gen.proc.join, grace_s)
        if gen.proc.is_alive():
            gen.proc.kill()
            await asyncio.to_thread(gen.proc.join, grace_s)
        gen.close()


def _usable(gen: _Generation | None) -> bool:
    """A worker that started and is still running."""
    if gen is None or not gen.ready.done() or gen.ready.cancelled():
        return False
    return gen.ready.exception() is None and gen.alive


class _Expired(Exception):
    """A batch ran past `batch_timeout_s`."""


def _relay(done: asyncio.Future[Any], waiter: asyncio.Future[Any]) -> None:
    """Pass a request's outcome on to its caller's waiter (unless the caller gave up)."""
    if waiter.done():
        return
    if done.cancelled():
        waiter.cancel()
    elif (error := done.exception()) is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(done.result())


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(_Expired())


def _resolve(gen: _Generation, req_id: int, ok: bool, result: Any) -> None:
    fut = gen.pending.pop(req_id, None)
    if fut is None or fut.done():
        return
    if ok:
        fut.set_result(result)
    elif result[0] == "unencodable":
        fut.set_exception(RedactError("the batch cannot be encoded as JSON", retriable=False))
    else:
        fut.set_exception(RedactError(f"redaction failed: {result[1]}", retriable=False))


def _settle_ready(ready: asyncio.Future[dict[str, Any]], message: Any) -> None:
    if ready.done():
        return
    kind, info = message if isinstance(message, tuple) and len(message) == 2 else ("", None)
    if kind == "ready":
        ready.set_result(dict(info) if isinstance(info, dict) else {})
    else:
        ready.set_exception(RedactStartupError(f"PII worker failed to start: {info}"))


class WorkerPool:
    """N workers, sticky by session. Constructing only stores; `start()` spawns."""

    def __init__(self, config: WorkerConfig, size: int) -> None:
        self._config = config
        self._size = size
        self._workers: list[_Worker] = []
        self.describe: dict[str, Any] = {}

    @property
    def size(self) -> int:
        """Number of workers."""
        return self._size

    def depths(self) -> list[int]:
        """Batches queued or running, per worker (a gauge)."""
        return [w.depth for w in self._workers]

    def pids(self) -> list[int | None]:
        """Current worker process ids."""
        return [w.pid for w in self._workers]

    def restarts(self) -> int:
        """Worker restarts since start."""
        return sum(w.restarts for w in self._workers)

    async def start(self) -> None:
        """Spawn every worker and wait until all are ready; RedactStartupError if one is not."""
        s = self._config.settings
        self._workers = [
            _Worker(i, self._config, s.max_pending_per_worker) for i in range(self._size)
        ]
        try:
            described = await asyncio.gather(*(w.ensure(s.start_timeout_s) for w in self._workers))
        except (RedactStartupError, TimeoutError) as e:
            await self.stop()
            if isinstance(e, TimeoutError):
                raise RedactStartupError("PII workers did not start in time") from None
            raise
        self.describe = described[0]
        for w in self._workers:
            log.info(EV_WORKER_READY, worker=w.index)

    def pick(self, tenant: str, session_id: str) -> int:
        """The worker that owns a session (stable across calls and processes)."""
        return zlib.crc32(f"{tenant}\x00{session_id}".encode()) % self._size

    async def call(self, index: int, op: str, payload: Any) -> Any:
        """Run `op` on worker `index`."""
        if not self._workers:
            raise RedactError("the PII engine is not running", retriable=True)
        s = self._config.settings
        return await self._workers[index].call(op, payload, s.queue_timeout_s, s.batch_timeout_s)

    def cast(self, index: int, op: str, payload: Any) -> None:
        """Send `op` to worker `index` without waiting for its reply."""
        if self._workers:
            self._workers[index].cast(op, payload)

    async def stop(self) -> None:
        """Stop every worker."""
        workers, self._workers = self._workers, []
        await asyncio.gather(*(w.stop(5.0) for w in workers))
