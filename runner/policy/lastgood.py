"""The last good policy from the control plane, kept on local disk for start-ups without it.

The file holds the compact JWS exactly as received (`<data_dir>/policy/last-good.jws`),
not a parsed copy: at start-up it goes through the same verification as a
fresh one (pinned key, EdDSA, schema, expiry), so a file edited on disk, or
signed by a key that has since been unpinned, is refused like any other.

Writes are atomic: a temporary file in the same folder is written and
fsynced, renamed over the old one, and the folder is fsynced, so a crash
leaves the old policy or the new one, never half of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from runner.policy.errors import PolicyRefused
from runner.policy.jws import Verifier, decode_policy
from runner.policy.model import SOURCE_LAST_GOOD, Policy

FOLDER = "policy"
FILE_NAME = "last-good.jws"


def atomic_write(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Write `data` to `path` so that a crash leaves the old or the new content (blocking)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class LastGood:
    """Reads and writes `<data_dir>/policy/last-good.jws`."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FOLDER / FILE_NAME

    async def save(self, token: str) -> None:
        """Keep an accepted policy's JWS; raises OSError when the disk refuses."""
        await asyncio.to_thread(atomic_write, self.path, token.encode("ascii"))

    def read(self, limit: int) -> bytes | None:
        """The stored JWS, or None when there is none (blocking)."""
        try:
            with self.path.open("rb") as f:
                return f.read(limit + 1)
        except FileNotFoundError:
            return None

    def read_verified(self, verifier: Verifier, limit: int) -> tuple[Policy, str, str] | None:
        """(policy, kid, token) whose signature and schema check out, expired or not.

        None when absent; raises `PolicyRefused`. OSError (unreadable file) propagates
        for the caller to report. Start-up checks the expiry itself: an expired policy is
        not put in force, but its verified version still bounds what the control plane
        may send next (`sync.startup_policy`).
        """
        raw = self.read(limit)
        if raw is None:
            return None
        verified = verifier.verify(raw)
        policy = decode_policy(verified.payload, SOURCE_LAST_GOOD)
        return policy, verified.kid, raw.decode("ascii", "replace").strip()


__all__ = ["LastGood", "PolicyRefused", "atomic_write"]
