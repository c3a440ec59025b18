"""`runner` — the command line of the TRACEFLOW Runner."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from runner import __version__
from runner.cliopts import ConfigOption
from runner.config import Config, load_config
from runner.errors import ConfigError, StartupError
from runner.forward.cli import chunks_app, dlq_app
from runner.policy.cli import policy_app
from runner.redact.cli import detokenize
from runner.security.cli import certs_app

app = typer.Typer(
    name="runner",
    help="TRACEFLOW Runner: ingest, PII tokenization and forwarding of session recordings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _load(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        typer.echo(f"configuration error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption = None,
    dev: Annotated[
        bool, typer.Option("--dev", help="Readable console logs instead of JSON.")
    ] = False,
) -> None:
    """Run the Runner: ingest, redact, buffer and forward until SIGTERM."""
    from runner.app import run
    from runner.telemetry.logging import configure

    cfg = _load(config)
    configure("console" if dev else cfg.runner.log_format, cfg.runner.log_level)
    try:
        run(cfg)
    except StartupError as e:
        typer.echo(f"cannot start: {e}", err=True)
        raise typer.Exit(1) from None


@app.command()
def version() -> None:
    """Print the Runner's version."""
    typer.echo(__version__)


class _Unreachable(Exception):
    """Nothing answers on the admin listener."""


def _admin_request(cfg: Config, method: str, path: str, quiet: bool = False) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    host, _, port = cfg.admin.listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):  # noqa: S104 - a wildcard bind is reached on loopback
        host = "127.0.0.1"
    token = os.environ.get("RUNNER_ADMIN_TOKEN") or cfg.admin.resolved_token()
    request = urllib.request.Request(
        f"http://{host}:{port}{path}",
        method=method,
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read() or b"{}")
    except OSError as e:
        if quiet:
            raise _Unreachable from e
        typer.echo(f"the Runner is not reachable on {host}:{port} ({e})", err=True)
        raise typer.Exit(3) from None


@app.command()
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show whether the Runner is healthy and keeping up; exit 1 when not ready."""
    cfg = _load(config)
    code, body = _admin_request(cfg, "GET", "/admin/status")
    if code == 401:
        typer.echo("the admin token was refused (set RUNNER_ADMIN_TOKEN)", err=True)
        raise typer.Exit(4)
    ready_code, ready = _admin_request(cfg, "GET", "/readyz")
    body["ready"] = ready_code == 200
    body["not_ready"] = ready.get("failed", {})
    if as_json:
        typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    else:
        from runner.admin.render import render_status

        render_status(body)
    if ready_code != 200:
        raise typer.Exit(1)


@app.command()
def drain(
    config: ConfigOption = None,
    deadline: Annotated[float, typer.Option(help="Seconds to finish in-flight work.")] = 60.0,
) -> None:
    """Ask the running Runner to drain: go unready, send goaway, finish in-flight batches."""
    import time

    cfg = _load(config)
    code, body = _admin_request(cfg, "POST", f"/admin/drain?deadline_s={deadline}")
    if code == 401:
        typer.echo("the admin token was refused (set RUNNER_ADMIN_TOKEN)", err=True)
        raise typer.Exit(4)
    if code >= 300:
        typer.echo(f"drain refused: {body}", err=True)
        raise typer.Exit(1)
    typer.echo(f"draining (deadline {deadline:.0f} s)")
    end = time.monotonic() + deadline + 30
    while time.monotonic() < end:
        try:
            _, state = _admin_request(cfg, "GET", "/admin/status", quiet=True)
        except _Unreachable:
            typer.echo("drained: the Runner has stopped")
            return
        sessions = sum(state.get("sessions", {}).values())
        buffered = state.get("buffer", {}).get("bytes_total", 0)
        typer.echo(f"  sessions open: {sessions}, buffered bytes: {buffered}")
        time.sleep(1.0)  # progress display interval of an interactive command
    typer.echo("the Runner is still running after the deadline", err=True)
    raise typer.Exit(1)


app.add_typer(policy_app, name="policy")
app.command("detokenize")(detokenize)
app.add_typer(certs_app, name="certs")
app.add_typer(dlq_app, name="dlq")
app.add_typer(chunks_app, name="chunks")

audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption = None,
    path: Annotated[
        Path | None, typer.Option("--path", help="Audit log file (default from config).")
    ] = None,
) -> None:
    """Check the audit log's hash chain; exit 1 at the first edited, removed or moved line."""
    from runner.telemetry.audit import verify

    cfg = _load(config)
    target = path or cfg.telemetry.resolved_audit_path(cfg.runner.data_dir)
    if not target.exists():
        typer.echo(f"no audit log at {target}", err=True)
        raise typer.Exit(2)
    ok, lines, reason = verify(target)
    if not ok:
        typer.echo(f"audit log TAMPERED: {reason}", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {lines} records, chain intact")


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate runner.toml and the environment without starting anything."""
    cfg = _load(config)
    typer.echo(f"ok: {len(cfg.projects)} project(s), redis {cfg.buffer.redis_url.split('@')[-1]}")


if __name__ == "__main__":  # pragma: no cover
    app()
