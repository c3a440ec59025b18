"""`runner` — the command line of the TRACEFLOW Runner."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from runner import __version__
from runner.admin.client import AdminClient, AdminSetupError, AdminUnreachable
from runner.cliopts import ConfigOption
from runner.config import Config, load_config
from runner.errors import ConfigError, StartupError
from runner.forward.cli import chunks_app, dlq_app
from runner.policy.cli import policy_app
from runner.redact.cli import detokenize
from runner.redact.rotate import pii_app
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
    from runner.process import run
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


def _client(cfg: Config) -> AdminClient:
    try:
        return AdminClient.from_config(cfg)
    except AdminSetupError as e:
        typer.echo(f"configuration error: {e}", err=True)
        raise typer.Exit(2) from None


def _admin_request(client: AdminClient, method: str, path: str) -> tuple[int, Any]:
    try:
        code, body = client.request(method, path)
    except AdminUnreachable as e:
        typer.echo(f"the Runner is not reachable at {client.base}: {e}", err=True)
        raise typer.Exit(3) from None
    if code == 401:
        typer.echo("the admin token was refused (set RUNNER_ADMIN_TOKEN)", err=True)
        raise typer.Exit(4)
    return code, body


@app.command()
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show whether the Runner is healthy and keeping up; exit 1 when not ready."""
    cfg = _load(config)
    client = _client(cfg)
    _, body = _admin_request(client, "GET", "/admin/status")
    ready_code, ready = _admin_request(client, "GET", "/readyz")
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
    deadline: Annotated[
        float | None,
        typer.Option(
            help="Seconds to forward the buffer and finish in-flight work. "
            "Default: [forward] drain_deadline_s (60)."
        ),
    ] = None,
    spill: Annotated[
        bool | None,
        typer.Option(
            "--spill/--no-spill",
            help="After the deadline, move what the cloud has not taken to the dead-letter "
            "store (with a manifest) instead of leaving it in Redis. Default: [forward] "
            "drain_spill.",
            show_default=False,
        ),
    ] = None,
    spill_deadline: Annotated[
        float | None,
        typer.Option(help="Seconds the spill may take. Default: [forward] spill_deadline_s."),
    ] = None,
    wait_stop: Annotated[
        bool,
        typer.Option(
            "--wait-stop/--no-wait-stop",
            help="After the drain's result, wait until the Runner has stopped. A Kubernetes "
            "preStop hook uses --no-wait-stop: the container ends as the Runner exits.",
        ),
    ] = True,
) -> None:
    """Drain the running Runner: go unready, send goaway, forward (or spill) the buffer, stop."""
    from runner.admin.render import render_drain_progress, render_drain_result

    cfg = _load(config)
    client = _client(cfg)
    if deadline is None:
        deadline = cfg.forward.drain_deadline_s
    query = f"deadline_s={deadline}&wait=true"
    if spill is not None:
        query += f"&spill={str(spill).lower()}"
    if spill_deadline is not None:
        query += f"&spill_deadline_s={spill_deadline}"
    try:
        code, kind, lines = client.lines("POST", f"/admin/drain?{query}")
        if code == 401:
            typer.echo("the admin token was refused (set RUNNER_ADMIN_TOKEN)", err=True)
            raise typer.Exit(4)
        if code >= 300:
            answer: dict[str, Any] = next(lines, {})
            typer.echo(f"drain refused: {answer.get('error', code)}", err=True)
            raise typer.Exit(1)
        typer.echo(f"draining (deadline {deadline:g} s)")
        result: dict[str, Any] | None = None
        if kind == "application/x-ndjson":
            for line in lines:
                if "progress" in line:
                    typer.echo(render_drain_progress(line["progress"]))
                elif "result" in line:
                    result = line["result"]
    except AdminUnreachable as e:
        typer.echo(f"the Runner is not reachable at {client.base}: {e}", err=True)
        raise typer.Exit(3) from None
    if result is not None:
        typer.echo(render_drain_result(result))
    if not wait_stop:
        if result is None or result.get("state") == "failed":
            raise typer.Exit(1)
        typer.echo("drained: the Runner is stopping")
        return
    if not _stopped(client, deadline + 60):
        typer.echo("the Runner is still running after the deadline", err=True)
        raise typer.Exit(1)
    typer.echo("drained: the Runner has stopped")
    if result is not None and result.get("state") == "failed":
        raise typer.Exit(1)


def _stopped(client: AdminClient, within_s: float) -> bool:
    """Poll until the admin listener stops answering (the Runner exits after a drain)."""
    import time

    end = time.monotonic() + within_s
    while time.monotonic() < end:
        try:
            client.request("GET", "/healthz")
        except AdminUnreachable:
            return True
        time.sleep(0.5)  # poll interval of an interactive command, inside a deadline
    return False


app.add_typer(policy_app, name="policy")
app.command("detokenize")(detokenize)
app.add_typer(certs_app, name="certs")
app.add_typer(dlq_app, name="dlq")
app.add_typer(chunks_app, name="chunks")
app.add_typer(pii_app, name="pii")

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
