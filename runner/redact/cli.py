"""`runner detokenize TOKEN`: the only way from a token back to the original, inside the bank.

It needs the admin token (environment `RUNNER_ADMIN_TOKEN`, or typed at a hidden prompt),
which must match `[admin] token` in runner.toml itself; the environment overlay of the
configuration is not used for that one key, or setting the variable would prove nothing. It
reads the vault file under the data directory with the vault key, prints only the original,
and records the request through `audit` (a structlog event now; durable audit is a later
issue).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import structlog
import typer

from runner.errors import ConfigError, RunnerError
from runner.redact.keys import load_key
from runner.redact.tokens import TOKEN_RE
from runner.redact.vault import SqliteVault

log = structlog.get_logger(__name__)

EV_DETOKENIZE = "pii.detokenize"
ADMIN_TOKEN_ENV = "RUNNER_ADMIN_TOKEN"  # noqa: S105 - the name of a variable, not a secret

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_DENIED = 3


@dataclass(frozen=True, slots=True)
class DetokenizeAudit:
    """One detokenize request, as the audit trail records it (never the token or the original)."""

    actor: str
    host: str
    entity: str
    token_ref: str
    """SHA-256 prefix of the token: correlates requests without revealing the token."""
    tenant: str | None
    outcome: str


def log_audit(record: DetokenizeAudit) -> None:
    """The default audit sink: a structlog event."""
    log.warning(
        EV_DETOKENIZE,
        actor=record.actor,
        host=record.host,
        entity=record.entity,
        token_ref=record.token_ref,
        tenant=record.tenant or "",
        outcome=record.outcome,
    )


AuditSink = Callable[[DetokenizeAudit], None]
audit: AuditSink = log_audit
"""HOOK: the durable audit log (later issue) replaces this sink; every outcome goes through it."""


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def detokenize(
    token: Annotated[str, typer.Argument(help="A token such as <EMAIL_ADDRESS:3f9a1c2b7d4e5f60>.")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Path to runner.toml (default ./runner.toml, or $RUNNER_CONFIG).",
            show_default=False,
        ),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only this tenant's vault entries.")
    ] = None,
) -> None:
    """Print the original value behind a token (admin token required; every use is audited)."""
    from runner.config import load_config
    from runner.telemetry.audit import record_now

    match = TOKEN_RE.fullmatch(token.strip())
    if match is None or match.group(2) != ":":
        raise _fail("not a token: expected <ENTITY:16 hex digits>", EXIT_USAGE)
    token = match.group(0)
    env = {k: v for k, v in os.environ.items() if k != ADMIN_TOKEN_ENV}
    try:
        cfg = load_config(config, env)
    except ConfigError as e:
        raise _fail(f"configuration error: {e}", EXIT_USAGE) from None
    if not structlog.is_configured():  # stdout carries only the original; logs go to stderr
        from runner.telemetry.logging import configure

        configure(cfg.runner.log_format, cfg.runner.log_level)

    def record(outcome: str, owner: str | None = tenant) -> None:
        entry = DetokenizeAudit(
            actor=getpass.getuser(),
            host=socket.gethostname(),
            entity=match.group(1),
            token_ref=hashlib.sha256(token.encode()).hexdigest()[:12],
            tenant=owner,
            outcome=outcome,
        )
        audit(entry)
        record_now(
            cfg.telemetry.resolved_audit_path(cfg.runner.data_dir),
            "detokenize",
            actor=entry.actor,
            host=entry.host,
            entity=entry.entity,
            token_ref=entry.token_ref,
            tenant=entry.tenant,
            outcome=entry.outcome,
        )

    expected = cfg.admin.resolved_token()
    if not expected:
        record("refused:no_admin_token_configured")
        raise _fail("[admin] token is not set in runner.toml: detokenize is disabled", EXIT_DENIED)
    given = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not given and sys.stdin.isatty():
        given = typer.prompt("admin token", hide_input=True, default="", show_default=False)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        record("refused:bad_admin_token")
        raise _fail("admin credentials refused", EXIT_DENIED)

    pii = cfg.pii
    if not pii.vault_enabled:
        record("refused:vault_disabled")
        raise _fail("[pii] vault_enabled is false: tokens are not reversible", EXIT_NOT_FOUND)
    data_dir = cfg.runner.data_dir
    vault_path = pii.resolved_vault_path(data_dir)
    if not vault_path.exists():
        record("error:no_vault")
        raise _fail(f"no vault at {vault_path}", EXIT_NOT_FOUND)
    try:
        key = load_key(
            "vault key",
            pii.vault_key_env,
            pii.vault_key_file,
            data_dir / "pii" / "vault.key",
            generate=False,
            many=True,
        )
        vault = SqliteVault(vault_path, key.keys)
        vault.open()
        try:
            entries = vault.lookup(token, tenant)
        finally:
            vault.close()
    except RunnerError as e:
        record("error:vault")
        raise _fail(f"cannot read the vault: {e}", EXIT_NOT_FOUND) from None
    if not entries:
        record("not_found")
        raise _fail(
            "not found: unknown token, or expired with its tenant's retention", EXIT_NOT_FOUND
        )
    if len(entries) > 1:
        record("ambiguous")
        tenants = ", ".join(sorted(e.tenant for e in entries))
        raise _fail(f"the token exists for several tenants ({tenants}); use --tenant", EXIT_USAGE)
    record("revealed", entries[0].tenant)
    typer.echo(entries[0].original)
