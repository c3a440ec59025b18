"""`runner pii rotate-vault-key`: re-wrap every tenant data key under the current vault KEK.

Rotating the vault's key-encryption key, step by step:

1. put the new KEK first in `$TRACEFLOW_PII_VAULT_KEY` (or `[pii] vault_key_file`), keeping the
   old one after it (`<new>,<old>` or one per line), and restart the Runner: new tenant data
   keys are wrapped under the new KEK, existing ones still unwrap under the old one;
2. run this command with the same keyring: it re-wraps the remaining data keys under the new
   KEK in one transaction (the data keys and the token rows do not change, so it is safe while
   the Runner runs);
3. remove the old KEK from the keyring (and restart). A vault that still needs a KEK that is
   not in the keyring refuses to open, naming the missing key's id.

`--dry-run` only reports how many tenant data keys each KEK wraps. Every run is recorded in
the audit log (actor, host, key ids, counts; never a key). Exit codes: 0 done, 1 no vault,
2 configuration or key error (for instance a KEK the vault needs is missing).
"""

from __future__ import annotations

import getpass
import socket
from typing import Annotated

import structlog
import typer

from runner.cliopts import ConfigOption
from runner.errors import ConfigError, RunnerError
from runner.redact.keys import load_key
from runner.redact.vault import SqliteVault

log = structlog.get_logger(__name__)

EV_VAULT_KEY_ROTATED = "pii.vault_key_rotated"
AUDIT_ACTION = "vault_key_rotated"

EXIT_NO_VAULT = 1
EXIT_CONFIG = 2

pii_app = typer.Typer(
    help="Operate the PII token vault.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _usage(before: dict[str, int]) -> str:
    return ", ".join(f"{kid}: {n}" for kid, n in sorted(before.items())) or "none"


@pii_app.command("rotate-vault-key")
def rotate_vault_key(
    config: ConfigOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report which key wraps how many data keys.")
    ] = False,
) -> None:
    """Re-wrap every tenant data key of the vault under the current key-encryption key."""
    from runner.config import load_config
    from runner.telemetry.audit import record_now

    try:
        cfg = load_config(config)
    except ConfigError as e:
        typer.echo(f"configuration error: {e}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    if not structlog.is_configured():  # stdout carries the report; logs go to stderr
        from runner.telemetry.logging import configure

        configure(cfg.runner.log_format, cfg.runner.log_level)
    pii = cfg.pii
    audit_path = cfg.telemetry.resolved_audit_path(cfg.runner.data_dir)

    def record(outcome: str, **fields: object) -> None:
        record_now(
            audit_path,
            AUDIT_ACTION,
            actor=getpass.getuser(),
            host=socket.gethostname(),
            dry_run=dry_run,
            outcome=outcome,
            **fields,
        )

    vault_path = pii.resolved_vault_path(cfg.runner.data_dir)
    if not pii.vault_enabled or not vault_path.exists():
        typer.echo(
            f"no vault at {vault_path} ([pii] vault_enabled = {pii.vault_enabled})", err=True
        )
        raise typer.Exit(EXIT_NO_VAULT)
    try:
        keys = load_key(
            "vault key",
            pii.vault_key_env,
            pii.vault_key_file,
            cfg.runner.data_dir / "pii" / "vault.key",
            generate=False,
            many=True,
        )
        vault = SqliteVault(vault_path, keys.keys)
        vault.open()
    except RunnerError as e:
        record("error:keys")
        typer.echo(f"cannot open the vault: {e}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    try:
        current = vault.current_key_id
        if dry_run:
            before = vault.key_usage()
            record("checked", current=current, usage=before)
            typer.echo(f"vault {vault_path}: current key {current}")
            typer.echo(f"tenant data keys per key: {_usage(before)}")
            return
        report = vault.rewrap()
    except RunnerError as e:
        record("error:rewrap")
        typer.echo(f"cannot re-wrap the vault: {e}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    finally:
        vault.close()
    record("rewrapped", current=report.current, rewrapped=report.rewrapped, usage=report.before)
    log.warning(
        EV_VAULT_KEY_ROTATED,
        current=report.current,
        rewrapped=report.rewrapped,
        tenants=sum(report.before.values()),
    )
    typer.echo(f"vault {vault_path}: current key {report.current}")
    typer.echo(f"tenant data keys per key before: {_usage(report.before)}")
    typer.echo(f"re-wrapped {report.rewrapped} tenant data key(s) under {report.current}")
    typer.echo("older keys are no longer needed by the vault and may be removed from the keyring")
