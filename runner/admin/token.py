"""The admin token when none is configured: a local one, so `runner status` works out of the box.

With neither `[admin] token` (`RUNNER_ADMIN_TOKEN`) nor `token_file`, a Runner whose admin
listener is on loopback creates `<data_dir>/admin.token` (32 random bytes, URL-safe base64,
mode 0600) on first start, keeps it across restarts, and logs `admin.token_generated` with its
path — never the token. `runner status` and `runner drain` on the same host read it from
there; anyone else needs the file. An admin listener off loopback still needs a configured
token (and TLS): exposure stays a deliberate choice.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import structlog

from runner.config import Config
from runner.errors import StartupError
from runner.security.hardening import is_loopback

log = structlog.get_logger(__name__)

EV_TOKEN_GENERATED = "admin.token_generated"  # noqa: S105 - a log event name
LOCAL_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name, not a secret


def local_token_path(cfg: Config) -> Path:
    return cfg.runner.data_dir / LOCAL_TOKEN_FILE


def serving_token(cfg: Config) -> str:
    """The token the admin listener checks: the configured one, else the local one (created
    on first start when the listener is on loopback). Blocking: call it during start-up."""
    configured = cfg.admin.resolved_token()
    if configured or not is_loopback(cfg.admin.listen.rpartition(":")[0]):
        return configured
    path = local_token_path(cfg)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    except OSError as e:
        raise StartupError(f"cannot create the local admin token {path} ({e})") from e
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    log.warning(
        EV_TOKEN_GENERATED,
        path=str(path),
        note="no [admin] token configured: runner status/drain on this host read this file",
    )
    return token


def cli_token(cfg: Config) -> str:
    """The token `runner status` / `runner drain` send: the configured one, else the local one
    if this user can read it, else "" (the Runner then answers 401 and the CLI says so)."""
    configured = cfg.admin.resolved_token()
    if configured:
        return configured
    try:
        return _read(local_token_path(cfg))
    except StartupError:
        return ""


def _read(path: Path) -> str:
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise StartupError(f"cannot read the local admin token {path} ({e})") from e
    if not token:
        raise StartupError(f"the local admin token {path} is empty: delete it to make a new one")
    return token
