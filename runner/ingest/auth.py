"""Project authentication by API key (PROTOCOL §1), and per-project connection caps."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from runner.config import ProjectConfig
from runner.errors import ProtocolError
from runner.ingest.messages import CLOSE_DISABLED, CLOSE_TOO_MANY, CLOSE_UNAUTHORIZED


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    tenant: str
    enabled: bool


def bearer(header: str | None) -> str | None:
    """The credential of an `Authorization: Bearer …` header, if any."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


class ProjectDirectory:
    """Finds the project an API key belongs to; keys are held only as SHA-256 digests."""

    def __init__(self, projects: tuple[ProjectConfig, ...], max_connections: int) -> None:
        self._by_hash: dict[bytes, Project] = {}
        self._by_id: dict[str, Project] = {}
        for cfg in projects:
            project = Project(cfg.id, cfg.tenant, cfg.enabled)
            self._by_id[cfg.id] = project
            for digest in cfg.key_hashes():
                self._by_hash[bytes.fromhex(digest)] = project
        self._max_connections = max_connections
        self._connections: Counter[str] = Counter()

    def authenticate(self, token: str | None) -> Project:
        """The project for a key; 4401 for a missing or unknown key, 4403 for a disabled project."""
        if not token:
            raise ProtocolError(CLOSE_UNAUTHORIZED, "missing credentials")
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        # Looked up by digest, never by the key itself: a timing difference can tell at most
        # something about a SHA-256 digest, which does not help to find a key.
        project = self._by_hash.get(digest)
        if project is None:
            raise ProtocolError(CLOSE_UNAUTHORIZED, "unknown or revoked API key")
        if not project.enabled:
            raise ProtocolError(CLOSE_DISABLED, "project is disabled")
        return project

    def project(self, project_id: str) -> Project:
        """A project by id (a verified JWT names its project)."""
        return self._by_id[project_id]

    def connect(self, project: Project) -> None:
        """Count a connection for the project; 4429 above the cap."""
        if self._connections[project.id] >= self._max_connections:
            raise ProtocolError(CLOSE_TOO_MANY, "too many connections for the project")
        self._connections[project.id] += 1

    def disconnect(self, project: Project) -> None:
        self._connections[project.id] -= 1
        if self._connections[project.id] <= 0:
            del self._connections[project.id]

    def connections(self) -> dict[str, int]:
        return dict(self._connections)
