"""`runner policy …`: see, check, and issue policies.

    runner policy show [--tenant T] [--json]    the policy in force (offline: start-up's), and why
    runner policy verify FILE                   a policy file (.toml, its .jws) or a compact JWS
    runner policy keygen [--out KEYFILE]        a new Ed25519 signing key; prints the key to pin
    runner policy sign FILE --key KEYFILE       sign a .toml (detached FILE.jws) or a .json payload

`show` asks the running Runner for the policy in force (`GET /admin/policy`);
when none answers, or with `--offline`, it reads the disk the way start-up does
(last good → `policies/` → built-in). `verify` and `show` trust only the keys
pinned in runner.toml. Exit codes: 0 ok, 1 refused, 2 bad configuration or arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runner.cliopts import ConfigOption
from runner.config import Config, load_config
from runner.errors import ConfigError
from runner.policy.errors import MALFORMED, PolicyKeyError, PolicyRefused
from runner.policy.files import SIGNATURE_SUFFIX, SUFFIX, parse_file, read_file
from runner.policy.jws import (
    Verifier,
    check_expiry,
    decode_policy,
    sign,
    sign_detached,
    verify_policy,
)
from runner.policy.keys import (
    public_text,
    read_private_key,
    thumbprint_kid,
    write_private_key,
)
from runner.policy.lastgood import LastGood, atomic_write
from runner.policy.model import SOURCE_LAST_GOOD
from runner.policy.report import policy_report
from runner.policy.settings import ControlPlaneSettings
from runner.policy.sync import startup_policy

policy_app = typer.Typer(
    help="Show, verify, and sign tenant policies (PROTOCOL §3).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

OFFLINE_NOTE = (
    "computed from disk as start-up would; a running Runner may hold a newer policy"
    " from the control plane (see `runner status`)"
)


def _config(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        typer.echo(f"configuration error: {e}", err=True)
        raise typer.Exit(2) from None


def _load(path: Path | None) -> tuple[ControlPlaneSettings, Path]:
    cfg = _config(path)
    return cfg.control_plane, cfg.runner.data_dir


def _verifier(settings: ControlPlaneSettings) -> Verifier:
    try:
        return Verifier(settings.pinned_keys(), settings.max_policy_bytes)
    except PolicyKeyError as e:
        typer.echo(f"configuration error: control_plane keys: {e}", err=True)
        raise typer.Exit(2) from None


def _dump(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _refused(e: PolicyRefused) -> typer.Exit:
    typer.echo(f"REFUSED ({e.reason}): {e.message}", err=True)
    return typer.Exit(1)


# -- show ----------------------------------------------------------------------------------


def describe_startup(
    settings: ControlPlaneSettings, data_dir: Path, tenant: str | None = None
) -> dict[str, Any]:
    """What start-up would put in force from this disk, for `show` (blocking)."""
    start = startup_policy(settings, LastGood(data_dir), _verifier(settings))
    refused = [
        {"source": source, "reason": e.reason, "detail": e.message} for source, e in start.refusals
    ] + [{"source": SOURCE_LAST_GOOD, "reason": "unreadable", "detail": d} for d in start.errors]
    return policy_report(
        start.policy, tenant, origin=start.origin, kid=start.kid, note=OFFLINE_NOTE, refused=refused
    )


def ask_runner(cfg: Config, tenant: str | None) -> dict[str, Any] | None:
    """The policy in force in the running Runner (`GET /admin/policy`); None when no Runner
    answers, or it refuses (said on stderr)."""
    from runner.admin.client import AdminClient, AdminSetupError, AdminUnreachable

    path = "/admin/policy" + (f"?{urlencode({'tenant': tenant})}" if tenant is not None else "")
    try:
        client = AdminClient.from_config(cfg)
        code, body = client.request("GET", path)
    except (AdminSetupError, AdminUnreachable):
        return None
    if code != 200 or not isinstance(body, dict) or "version" not in body:
        error = body.get("error", code) if isinstance(body, dict) else code
        typer.echo(f"the running Runner did not answer ({error}); reading the disk", err=True)
        return None
    return body


@policy_app.command()
def show(
    config: ConfigOption = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Only this tenant's policy.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline", help="Do not ask the running Runner: what start-up would use from disk."
        ),
    ] = False,
) -> None:
    """Print the policy in force in the running Runner (else what start-up would put in force
    from disk), and where it comes from."""
    cfg = _config(config)
    report = None if offline else ask_runner(cfg, tenant)
    if report is None:
        report = describe_startup(cfg.control_plane, cfg.runner.data_dir, tenant)
    if as_json:
        typer.echo(_dump(report))
        return
    signed = f", signed by kid {report['kid']!r}" if report["kid"] else ""
    typer.echo(f"policy version {report['version']} from {report['source']}{signed}")
    typer.echo(f"  origin: {report['origin']}")
    if report["expires_at"]:
        typer.echo(f"  expires: {report['expires_at']}")
    for item in report["refused"]:
        typer.echo(f"  refused {item['source']}: {item['reason']}: {item['detail']}")
    typer.echo(f"  note: {report['note']}")
    if tenant is not None:
        typer.echo(f"tenant {tenant!r} gets {report['entry']}:")
        typer.echo(_dump(report["policy"]))
    else:
        typer.echo(f"tenants: {', '.join(report['tenants']) or '(none: the built-in default)'}")
        typer.echo(_dump(report["tenants"]))


# -- verify ----------------------------------------------------------------------------------


def verify_path(path: Path, settings: ControlPlaneSettings) -> dict[str, Any]:
    """Check one file; raises PolicyRefused. A .toml (and its .jws), or a compact JWS."""
    verifier = _verifier(settings)
    name = path.name
    if name.endswith(SUFFIX + SIGNATURE_SUFFIX):
        path = path.with_name(name[: -len(SIGNATURE_SUFFIX)])
    if path.name.endswith(SUFFIX):
        checked = read_file(path, verifier, settings.require_signed_files)
        return {
            "kind": "policy file",
            "tenant": checked.tenant,
            "version": checked.version,
            "signed_by": checked.signed_by,
        }
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PolicyRefused(MALFORMED, f"{path}: cannot read ({e.strerror})") from e
    policy, kid = verify_policy(raw, verifier, "file")
    return {
        "kind": "signed policy (compact JWS)",
        "version": policy.version,
        "signed_by": kid,
        "issued_at": policy.issued_at,
        "expires_at": policy.expires_at,
        "tenants": sorted(policy.tenants),
    }


@policy_app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="A policy .toml, its .jws, or a compact JWS.")],
    config: ConfigOption = None,
) -> None:
    """Check a policy file's signature (pinned keys only), schema and expiry."""
    settings, _ = _load(config)
    try:
        result = verify_path(file, settings)
    except PolicyRefused as e:
        raise _refused(e) from None
    signed = f"signed by kid {result['signed_by']!r}" if result["signed_by"] else "unsigned"
    typer.echo(f"OK: {result['kind']}, version {result['version']}, {signed}")
    if "tenant" in result:
        typer.echo(f"  tenant: {result['tenant']}")
    else:
        typer.echo(f"  tenants: {', '.join(result['tenants']) or '(none)'}")
        if result["expires_at"]:
            typer.echo(f"  expires: {result['expires_at']}")


# -- keygen and sign ---------------------------------------------------------------------------


@policy_app.command()
def keygen(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the private key (0600).")
    ] = Path("policy-signing.key"),
    kid: Annotated[
        str | None, typer.Option(help="Key id to pin (default: the RFC 7638 thumbprint).")
    ] = None,
) -> None:
    """Make an Ed25519 signing key; print the public key and kid to pin in runner.toml."""
    key = Ed25519PrivateKey.generate()
    name = kid or thumbprint_kid(key.public_key())
    try:
        write_private_key(out, key)
    except PolicyKeyError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    public = public_text(key.public_key())
    typer.echo(f"private key: {out} (keep it secret; it never goes on a Runner)")
    typer.echo(f"kid: {name}")
    typer.echo(f"public key: {public}")
    typer.echo("pin it in runner.toml:")
    typer.echo("  [control_plane.keys]")
    typer.echo(f'  "{name}" = "{public}"')


@policy_app.command("sign")
def sign_file(
    file: Annotated[Path, typer.Argument(help="A policy .toml, or a JSON policy payload.")],
    key: Annotated[Path, typer.Option("--key", "-k", help="The Ed25519 private key (PEM).")],
    kid: Annotated[
        str | None, typer.Option(help="Key id in the header (default: the key's thumbprint).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write (default FILE.jws).")
    ] = None,
) -> None:
    """Sign a .toml (detached signature, FILE.jws) or a JSON payload (compact JWS)."""
    try:
        private = read_private_key(key)
        content = file.read_bytes()
    except PolicyKeyError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    except OSError as e:
        typer.echo(f"{file}: cannot read ({e.strerror})", err=True)
        raise typer.Exit(2) from None
    target = out or file.with_name(file.name + SIGNATURE_SUFFIX)
    try:
        if file.name.endswith(SUFFIX):
            parse_file(file, content, None, None, require_signed=False)
            token = sign_detached(content, private, file.name, kid)
        else:
            check_expiry(decode_policy(content, "file"))
            token = sign(content, private, kid)
    except PolicyRefused as e:
        typer.echo("not signed: the Runner would refuse this policy", err=True)
        raise _refused(e) from None
    atomic_write(target, token.encode("ascii") + b"\n", mode=0o644)
    used = kid or thumbprint_kid(private.public_key())
    typer.echo(f"signed {file} with kid {used!r} → {target}")


__all__ = ["describe_startup", "policy_app", "verify_path"]
