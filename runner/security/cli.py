"""`runner certs init` and `runner certs show` (registered by runner/cli.py as `certs`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from runner.security.certs import DEFAULT_SANS, CertsError, FileReport, init, inspect

certs_app = typer.Typer(
    name="certs",
    help="Development certificates for TLS and mutual TLS, and what a certificate holds.",
    no_args_is_help=True,
    add_completion=False,
)

DirOption = Annotated[
    Path, typer.Option("--dir", "-d", help="Folder of the certificates.", show_default=True)
]


@certs_app.command("init")
def init_command(
    folder: DirOption = Path("certs"),
    san: Annotated[
        list[str] | None,
        typer.Option(
            "--san",
            help="A DNS name or IP address of the server certificate (repeat it); "
            f"default {', '.join(DEFAULT_SANS)}.",
            show_default=False,
        ),
    ] = None,
    client_name: Annotated[
        str, typer.Option("--client-name", help="Common name of the client certificate.")
    ] = "traceflow-sdk",
    days: Annotated[
        int, typer.Option("--days", help="Validity of the server and client certificates.")
    ] = 90,
    ca_days: Annotated[int, typer.Option("--ca-days", help="Validity of the CA.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace files that exist.")] = False,
) -> None:
    """Create a development CA, a server certificate and a client certificate (keys 0600).

    For local use and tests only: in production the bank's PKI issues the certificates.
    """
    try:
        issued = init(
            folder,
            san or DEFAULT_SANS,
            client_name=client_name,
            days=days,
            ca_days=ca_days,
            force=force,
        )
    except CertsError as e:
        typer.echo(f"certs init: {e}", err=True)
        raise typer.Exit(2) from None
    for path in issued.all():
        typer.echo(f"wrote {path}")
    typer.echo(
        "\nServe with [ingest.tls] cert_file/key_file = server.pem/server.key; "
        "require client certificates with client_ca_file = ca.pem."
    )


def _print(report: FileReport, now: datetime) -> bool:
    """Print one file; False when it is unreadable, expired or a key open to others."""
    typer.echo(str(report.path))
    if report.error is not None:
        typer.echo(f"  error:    {report.error}")
        return False
    if report.private_key_mode is not None:
        mode = f"{report.private_key_mode:04o}"
        if report.key_too_open:
            typer.echo(f"  private key (not shown), mode {mode}: readable by others, chmod 600")
            return False
        typer.echo(f"  private key (not shown), mode {mode}")
        return True
    ok = True
    for i, cert in enumerate(report.certificates):
        if len(report.certificates) > 1:
            typer.echo(f"  [{i}]")
        left = cert.days_left(now)
        state = f"{left:.0f} days left" if left > 0 else "EXPIRED"
        ok = ok and left > 0
        typer.echo(f"  subject:  {cert.subject}")
        typer.echo(f"  issuer:   {cert.issuer}")
        if cert.is_ca:
            typer.echo("  CA:       yes")
        typer.echo(f"  SANs:     {', '.join(cert.sans) or '-'}")
        typer.echo(
            f"  valid:    {cert.not_before:%Y-%m-%d %H:%M} UTC to "
            f"{cert.not_after:%Y-%m-%d %H:%M} UTC ({state})"
        )
        typer.echo(f"  sha256:   {cert.sha256}")
    return ok


@certs_app.command("show")
def show_command(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="PEM files; default every *.pem and *.key in --dir.", show_default=False
        ),
    ] = None,
    folder: DirOption = Path("certs"),
) -> None:
    """Print subjects, SANs and expiry of certificates; exit 1 if one is expired or unreadable."""
    paths = files or sorted([*folder.glob("*.pem"), *folder.glob("*.key")])
    if not paths:
        typer.echo(f"certs show: no *.pem or *.key files in {folder}", err=True)
        raise typer.Exit(2)
    now = datetime.now(UTC)
    results = [_print(inspect(path), now) for path in paths]
    if not all(results):
        raise typer.Exit(1)
