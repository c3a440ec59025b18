"""`runner dlq …` and `runner chunks …`: the operator's view of dead letters and local chunks.

    runner dlq list [--tenant T] [--reason R] [--json]
    runner dlq show ID [--payload]          metadata; the (redacted) events only with --payload
    runner dlq replay ID… | --all | --manifest SPILL_ID  [--tenant T]
    runner dlq spills [SPILL_ID] [--json]   manifests written by `runner drain --spill`
    runner dlq purge ID… [--yes]
    runner chunks list [--tenant T] [--date YYYY-MM-DD] [--session S]
    runner chunks cat KEY                   the NDJSON of a local chunk

They read `[dlq]` (and `[buffer]` for replay) from the same runner.toml as
`runner serve`, and open sealed payloads with the same `[dlq.at_rest]` keyring
(they never create one). Replay needs the Runner's Redis; with the embedded one,
the Runner must be running. Exit codes: 2 bad configuration or no at-rest key,
3 storage or Redis unreachable, 4 no such dead letter / chunk, 5 refused (replay
while air-gapped), 6 a payload that does not open (its key was rotated out of
the keyring, another keyring, tampered with, or unsealed).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
import zstandard
from redis.asyncio import Redis
from redis.exceptions import RedisError

from runner.buffer.embedded import EmbeddedRedis
from runner.buffer.keys import Keys
from runner.cliopts import ConfigOption
from runner.config import Config, load_config
from runner.errors import ConfigError, StartupError
from runner.forward.chunker import decompress
from runner.forward.deadletter import DeadLetter, DeadLetters, replay
from runner.forward.forwarder import settings_for
from runner.forward.localsink import LocalSink
from runner.forward.sealed import ObjectUnreadable
from runner.forward.spill import list_manifests, load_manifest
from runner.forward.storage import ObjectNotFound, ObjectStore, StoreUnavailable, open_store
from runner.telemetry.audit import record_now

T = TypeVar("T")

dlq_app = typer.Typer(
    help="Inspect, replay and purge chunks in the dead-letter store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
chunks_app = typer.Typer(
    help="Read the chunks kept in local storage (air-gapped mode).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_UNREADABLE = 6
AUDIT_IDS_MAX = 100
"""Chunk ids named in one audit record at most (the record also has the count)."""

TenantOption = Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant.")]


def _load(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        typer.echo(f"configuration error: {e}", err=True)
        raise typer.Exit(2) from None


def _run(config: Config, work: Callable[[DeadLetters, LocalSink], Awaitable[T]]) -> T:
    """Open the configured store and run one coroutine against it, mapping failures to exits."""
    return _run_store(config, lambda _, letters, sink: work(letters, sink))


def _run_store(
    config: Config, work: Callable[[ObjectStore, DeadLetters, LocalSink], Awaitable[T]]
) -> T:
    """`_run` for commands that also read the store itself (spill manifests)."""
    _, dlq, forward = settings_for(config)

    async def main() -> T:
        with ThreadPoolExecutor(dlq.io_workers, thread_name_prefix="cli-store") as io:
            try:
                store = open_store(dlq, config.runner.data_dir, io, os.environ, operator=True)
            except ValueError as e:
                typer.echo(f"configuration error: [dlq] {e}", err=True)
                raise typer.Exit(2) from None
            except StartupError as e:
                typer.echo(f"configuration error: {e}", err=True)
                raise typer.Exit(2) from None
            sink = LocalSink(store, forward, config.runner.id)
            return await work(store, DeadLetters(store), sink)

    try:
        return asyncio.run(main())
    except StoreUnavailable as e:
        typer.echo(f"storage unreachable: {e}", err=True)
        raise typer.Exit(3) from None
    except ObjectNotFound as e:
        typer.echo(f"not found: {e}", err=True)
        raise typer.Exit(4) from None
    except ObjectUnreadable as e:
        typer.echo(f"cannot open: {e}", err=True)
        raise typer.Exit(EXIT_UNREADABLE) from None
    except RedisError as e:
        typer.echo(f"Redis unreachable ({type(e).__name__}); is the Runner running?", err=True)
        raise typer.Exit(3) from None
    except ValueError as e:  # an id or key that cannot name an object (e.g. "../x")
        typer.echo(f"invalid argument: {e}", err=True)
        raise typer.Exit(2) from None


def _audit(cfg: Config, action: str, ids: list[str], **fields: Any) -> None:
    """One hash-chained audit record of an operator's change to the store: who, from where,
    which letters (chunk ids: no payload), how it went."""
    record_now(
        cfg.telemetry.resolved_audit_path(cfg.runner.data_dir),
        action,
        actor=getpass.getuser(),
        host=socket.gethostname(),
        count=len(ids),
        ids=ids[:AUDIT_IDS_MAX],
        **fields,
    )


def _row(letter: DeadLetter) -> str:
    status = "-" if letter.last_status is None else str(letter.last_status)
    return (
        f"{letter.id}  {letter.tenant:<16} {letter.reason:<10} {status:>4} "
        f"{letter.attempts:>4}  {letter.events:>7}  {letter.last_failure_at}"
        + (f"  replayed x{letter.replays}" if letter.replays else "")
    )


@dlq_app.command("list")
def list_letters(
    config: ConfigOption = None,
    tenant: TenantOption = None,
    reason: Annotated[
        str | None,
        typer.Option(help="Only this reason: rejected, exhausted, malformed, drain_spill."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List dead-lettered chunks (metadata only)."""
    cfg = _load(config)

    async def work(letters: DeadLetters, _: LocalSink) -> list[DeadLetter]:
        return await letters.list(tenant, reason)

    found = _run(cfg, work)
    if as_json:
        for letter in found:
            typer.echo(orjson.dumps(_dict(letter)).decode())
        return
    typer.echo(
        f"{'ID':<32}  {'TENANT':<16} {'REASON':<10} {'LAST':>4} {'TRY':>4}  {'EVENTS':>7}  "
        "LAST FAILURE"
    )
    for letter in found:
        typer.echo(_row(letter))
    typer.echo(f"{len(found)} dead letter(s)")


def _dict(letter: DeadLetter) -> dict[str, object]:
    data: dict[str, object] = orjson.loads(letter.to_json())
    return data


@dlq_app.command()
def show(
    letter_id: Annotated[str, typer.Argument(metavar="ID", help="Dead letter id (or tenant/id).")],
    config: ConfigOption = None,
    payload: Annotated[
        bool, typer.Option("--payload", help="Also print the chunk's (redacted) NDJSON.")
    ] = False,
) -> None:
    """Show one dead letter's metadata; its events only with --payload."""
    cfg = _load(config)

    async def work(letters: DeadLetters, _: LocalSink) -> tuple[DeadLetter, bytes]:
        letter = await letters.get(letter_id)
        body = await letters.payload(letter) if payload else b""
        return letter, body

    letter, body = _run(cfg, work)
    typer.echo(letter.to_json().decode())
    if payload:
        typer.echo(_ndjson(body), nl=False)


def _redis_url(cfg: Config) -> str:
    if cfg.buffer.redis_url != "embedded":
        return cfg.buffer.redis_url
    embedded = EmbeddedRedis(cfg.runner.data_dir, cfg.buffer.redis_server)
    if not embedded.socket_path.exists():
        typer.echo("the embedded Redis is not running: start the Runner, then replay", err=True)
        raise typer.Exit(3)
    return embedded.url


@dlq_app.command("replay")
def replay_letters(
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    manifest: Annotated[
        str | None,
        typer.Option(
            "--manifest",
            help="Replay the chunks one `runner drain --spill` listed (its spill id, as "
            "`runner dlq spills` prints it).",
        ),
    ] = None,
    tenant: TenantOption = None,
    config: ConfigOption = None,
) -> None:
    """Re-queue dead letters into their tenant's stream; the cloud dedupes by Idempotency-Key."""
    cfg = _load(config)
    cloud, _, _ = settings_for(cfg)
    if cloud.air_gapped:
        typer.echo("no [cloud] endpoint is configured: there is nowhere to replay to", err=True)
        raise typer.Exit(5)
    if sum((bool(ids), all_, manifest is not None)) != 1:
        typer.echo("name dead letter ids, or pass --all, or --manifest SPILL_ID", err=True)
        raise typer.Exit(2)
    url = _redis_url(cfg)
    keys = Keys(cfg.buffer.stream_prefix)

    async def work(
        store: ObjectStore, letters: DeadLetters, _: LocalSink
    ) -> tuple[list[tuple[str, str]], int]:
        if manifest is not None:
            chosen = await _spilled_letters(store, letters, manifest, tenant)
        elif all_:
            chosen = await letters.list(tenant)
        else:
            chosen = [await letters.get(i, tenant) for i in ids or []]
        done: list[tuple[str, str]] = []
        unreadable = 0
        redis = Redis.from_url(url, socket_timeout=10)
        try:
            for letter in chosen:
                try:
                    done.append((letter.id, await replay(redis, keys, letters, letter)))
                except ObjectUnreadable as e:  # one letter whose key is gone: say so, go on
                    unreadable += 1
                    typer.echo(f"cannot open: {e}", err=True)
        finally:
            await redis.aclose()
        return done, unreadable

    done, unreadable = _run_store(cfg, work)
    _audit(
        cfg,
        "dlq.replay",
        [letter_id for letter_id, _ in done],
        tenant=tenant,
        manifest=manifest,
        all=all_,
        unreadable=unreadable,
    )
    for letter_id, entry_id in done:
        typer.echo(f"replayed {letter_id} as stream entry {entry_id}")
    typer.echo(f"{len(done)} dead letter(s) re-queued")
    if unreadable:
        typer.echo(f"{unreadable} dead letter(s) could not be opened", err=True)
        raise typer.Exit(EXIT_UNREADABLE)


async def _spilled_letters(
    store: ObjectStore, letters: DeadLetters, spill_id: str, tenant: str | None
) -> list[DeadLetter]:
    """The dead letters a spill manifest lists that are still in the store."""
    chosen = []
    gone = 0
    for chunk in (await load_manifest(store, spill_id)).get("chunks", []):
        if tenant and chunk["tenant"] != tenant:
            continue
        try:
            chosen.append(await letters.get(chunk["chunk_id"], chunk["tenant"]))
        except ObjectNotFound:
            gone += 1  # replayed and delivered since, or purged
    if gone:
        typer.echo(f"{gone} chunk(s) of {spill_id} are no longer in the store (replayed or purged)")
    return chosen


@dlq_app.command("spills")
def list_spills(
    spill_id: Annotated[
        str | None, typer.Argument(metavar="[SPILL_ID]", help="Print this manifest whole.")
    ] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List the manifests `runner drain --spill` wrote, or print one: what a drain spilled."""
    cfg = _load(config)

    async def work(store: ObjectStore, _: DeadLetters, __: LocalSink) -> list[dict[str, Any]]:
        if spill_id is not None:
            return [await load_manifest(store, spill_id)]
        return [await load_manifest(store, found) for found in await list_manifests(store)]

    found = _run_store(cfg, work)
    if spill_id is not None:
        typer.echo(orjson.dumps(found[0], option=orjson.OPT_INDENT_2).decode())
        return
    for m in found:
        row = {k: m.get(k) for k in ("spill_id", "runner_id", "finished_at", "complete")}
        row.update(m.get("totals", {}))
        if as_json:
            typer.echo(orjson.dumps(row).decode())
        else:
            typer.echo(
                f"{row['spill_id']}  {row['finished_at']}  {row.get('chunks', 0)} chunks  "
                f"{row.get('events', 0)} events" + ("" if row["complete"] else "  (incomplete)")
            )
    if not as_json:
        typer.echo(f"{len(found)} spill manifest(s)")


@dlq_app.command()
def purge(
    ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Dead letters to delete.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    config: ConfigOption = None,
) -> None:
    """Delete dead letters for good (asks first unless --yes)."""
    cfg = _load(config)
    if not yes and not typer.confirm(f"Delete {len(ids)} dead letter(s) permanently?"):
        typer.echo("nothing deleted")
        raise typer.Exit(1)

    deleted: list[str] = []

    async def work(letters: DeadLetters, _: LocalSink) -> int:
        for letter_id in ids:
            letter = await letters.get(letter_id)
            await letters.delete(letter.tenant, letter.id)
            deleted.append(letter.id)
        return len(deleted)

    try:
        count = _run(cfg, work)
    finally:  # a purge that stopped half-way is audited with what it did delete
        _audit(cfg, "dlq.purge", deleted, requested=len(ids))
    typer.echo(f"{count} dead letter(s) deleted")


@chunks_app.command("list")
def list_chunks(
    config: ConfigOption = None,
    tenant: TenantOption = None,
    date: Annotated[str | None, typer.Option(help="Only this UTC day, YYYY-MM-DD.")] = None,
    session: Annotated[str | None, typer.Option(help="Only this session id.")] = None,
) -> None:
    """List chunks kept in local storage, by tenant/date/session."""
    cfg = _load(config)

    async def work(_: DeadLetters, sink: LocalSink) -> list[tuple[str, int]]:
        return [(c.key, c.size) for c in await sink.list(tenant, date, session)]

    found = _run(cfg, work)
    for key, size in found:
        typer.echo(f"{key}  {size}")
    typer.echo(f"{len(found)} chunk(s)")


@chunks_app.command()
def cat(
    key: Annotated[str, typer.Argument(help="A key as printed by `runner chunks list`.")],
    config: ConfigOption = None,
) -> None:
    """Print a local chunk as NDJSON (header line, then one line per event)."""
    cfg = _load(config)

    async def work(_: DeadLetters, sink: LocalSink) -> bytes:
        return await sink.read(key)

    typer.echo(_ndjson(_run(cfg, work)), nl=False)


def _ndjson(body: bytes) -> str:
    try:
        return decompress(body).decode(errors="replace")
    except zstandard.ZstdError as e:
        typer.echo(f"not a zstd chunk ({e})", err=True)
        raise typer.Exit(4) from None
