"""JWT authentication of SDKs (PROTOCOL §1): RS256, ES256 or EdDSA from keys configured per project.

Each project that trusts JWTs names its public keys (PEM files and/or a local JWKS file), the
`aud` and `iss` values it accepts and the algorithms it allows. A token is checked against
the keys whose algorithm matches the token's `alg` and whose `kid` matches the token's (PEM
keys have no `kid` and are tried for any token of their algorithm); it belongs to the
project whose key verifies its signature and whose audience and issuer it carries.

What is refused, with a fixed reason and never the token's text:
- `alg` other than RS256/ES256/EdDSA, so `none` and HS256 are refused before any key is
  touched; and every key is used with the one algorithm its type implies, so an RSA public
  key can never serve as an HMAC secret (algorithm confusion);
- a missing or past `exp`, a future `nbf` or `iat` (beyond `leeway_s`), a missing or wrong
  `aud` or `iss`, a missing `sub`; a `tid` other than the project's tenant; a `crit` header;
- keys the token names that are not configured (a `jku`, `x5u` or `jwk` header is ignored:
  keys come from configuration only).

Key files are re-read when they change, so adding a key or revoking one (removing it from
the JWKS) needs no restart. A JWKS that holds private or symmetric key material is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt
import orjson
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from runner.errors import ProtocolError, StartupError
from runner.security.files import FileStamps, stamp
from runner.security.settings import JWT_ALGORITHMS, JwtSettings

log = structlog.get_logger(__name__)

EV_JWT_KEYS_LOADED = "jwt.keys_loaded"
EV_JWT_KEYS_RELOAD_FAILED = "jwt.keys_reload_failed"
EV_JWT_KEY_SKIPPED = "jwt.key_skipped"

CLOSE_UNAUTHORIZED = 4401  # runner.ingest.messages.CLOSE_UNAUTHORIZED
CLOSE_DISABLED = 4403  # runner.ingest.messages.CLOSE_DISABLED
MAX_TOKEN_CHARS = 8192
MAX_CANDIDATES = 8  # signature checks one token may cost at most
MIN_RSA_BITS = 2048
_PRIVATE_JWK_FIELDS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CLAIM_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.MissingRequiredClaimError, "missing required claim"),
    (jwt.InvalidIssuedAtError, "bad iat claim"),
)

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


class JwtRejected(ProtocolError):
    """A JWT that does not authenticate; close 4401 / HTTP 401. The reason is safe to log."""

    def __init__(self, reason: str, close_code: int = CLOSE_UNAUTHORIZED) -> None:
        super().__init__(close_code, reason)


class JwtProject(Protocol):
    """What the verifier needs of a project (`runner.config.ProjectConfig` fits)."""

    @property
    def id(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    @property
    def enabled(self) -> bool: ...

    @property
    def jwt(self) -> JwtSettings | None: ...


@dataclass(frozen=True, slots=True)
class JwtIdentity:
    """Who a valid token speaks for."""

    project: str
    tenant: str
    subject: str
    expires_at: int
    """The token's `exp` (Unix seconds); the session may outlive it (checked at hello only)."""


@dataclass(frozen=True, slots=True)
class _Key:
    project: str
    alg: str
    kid: str | None
    key: PublicKey
    source: str


@dataclass(frozen=True, slots=True)
class Keyring:
    """Every trusted key of every project, indexed for lookup by (alg, kid)."""

    keys: tuple[_Key, ...] = ()
    _by_kid: dict[tuple[str, str], tuple[_Key, ...]] = field(default_factory=dict)
    _unkeyed: dict[str, tuple[_Key, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, keys: Sequence[_Key]) -> Keyring:
        by_kid: dict[tuple[str, str], list[_Key]] = {}
        unkeyed: dict[str, list[_Key]] = {}
        for key in keys:
            if key.kid is None:
                unkeyed.setdefault(key.alg, []).append(key)
            else:
                by_kid.setdefault((key.alg, key.kid), []).append(key)
        return cls(
            tuple(keys),
            {k: tuple(v) for k, v in by_kid.items()},
            {k: tuple(v) for k, v in unkeyed.items()},
        )

    def candidates(self, alg: str, kid: str | None) -> list[_Key]:
        """Keys to try: those with the token's kid, plus keys without a kid (PEM files).

        A token without a kid is tried against every key of its algorithm.
        """
        if kid is None:
            keyed = [k for k in self.keys if k.alg == alg and k.kid is not None]
        else:
            keyed = list(self._by_kid.get((alg, kid), ()))
        return [*keyed, *self._unkeyed.get(alg, ())]


# -- loading keys (blocking) -------------------------------------------------------------------


def _alg_of(key: object, where: str) -> tuple[str, PublicKey]:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise StartupError(f"{where}: RSA key of {key.key_size} bits (at least {MIN_RSA_BITS})")
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise StartupError(f"{where}: EC key on {key.curve.name}; ES256 needs P-256")
        return "ES256", key
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "EdDSA", key
    raise StartupError(f"{where}: not an RSA, EC P-256 or Ed25519 public key")


def _pem_key(path: Path) -> tuple[str, PublicKey]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StartupError(f"JWT key file {path}: {e.strerror or e}") from e
    if b"PRIVATE KEY" in data:
        raise StartupError(f"JWT key file {path}: holds a private key; configure the public key")
    try:
        if b"BEGIN CERTIFICATE" in data:
            public: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            public = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise StartupError(f"JWT key file {path}: not a PEM public key or certificate") from e
    return _alg_of(public, f"JWT key file {path}")


def _jwks_keys(path: Path, project: str, allowed: tuple[str, ...]) -> list[_Key]:
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as e:
        raise StartupError(f"JWKS file {path}: {e.strerror or e}") from e
    except orjson.JSONDecodeError as e:
        raise StartupError(f"JWKS file {path}: not JSON") from e
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise StartupError(f'JWKS file {path}: expected {{"keys": [...]}}')
    keys = []
    for i, jwk in enumerate(entries):
        where = f"JWKS file {path} key {i}"
        if not isinstance(jwk, dict):
            raise StartupError(f"{where}: not an object")
        if _PRIVATE_JWK_FIELDS & jwk.keys() or jwk.get("kty") == "oct":
            raise StartupError(f"{where}: holds private or symmetric key material")
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", allowed[0]) not in allowed:
            log.info(EV_JWT_KEY_SKIPPED, project=project, index=i, alg=str(jwk.get("alg")))
            continue
        try:
            public = jwt.PyJWK(jwk).key
        except jwt.PyJWTError as e:
            raise StartupError(f"{where}: {e}") from e
        alg, key = _alg_of(public, where)
        if jwk.get("alg", alg) != alg:
            raise StartupError(f"{where}: alg {jwk['alg']} does not fit a {alg} key")
        if alg not in allowed:
            log.info(EV_JWT_KEY_SKIPPED, project=project, index=i, alg=alg)
            continue
        kid = jwk.get("kid")
        keys.append(_Key(project, alg, kid if isinstance(kid, str) else None, key, str(path)))
    return keys


def load_keyring(projects: Sequence[JwtProject]) -> Keyring:
    """Read every project's JWT keys; a StartupError names the file that is wrong (blocking)."""
    keys: list[_Key] = []
    for project in projects:
        settings = project.jwt
        if settings is None or not settings.enabled:
            continue
        for path in settings.public_key_files:
            alg, key = _pem_key(path)
            if alg not in settings.algorithms:
                raise StartupError(
                    f"JWT key file {path}: a {alg} key, but project {project.id} allows "
                    f"{', '.join(settings.algorithms)}"
                )
            keys.append(_Key(project.id, alg, None, key, str(path)))
        if settings.jwks_file is not None:
            keys.extend(_jwks_keys(settings.jwks_file, project.id, settings.algorithms))
    return Keyring.of(keys)


def _key_files(projects: Sequence[JwtProject]) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for project in projects:
        if project.jwt is not None and project.jwt.enabled:
            files.extend((project.id, p) for p in project.jwt.public_key_files)
            if project.jwt.jwks_file is not None:
                files.append((project.id, project.jwt.jwks_file))
    return files


# -- the verifier ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Trust:
    id: str
    tenant: str
    enabled: bool
    settings: JwtSettings


class JwtVerifier:
    """Verifies SDK JWTs against the projects' keys; `start()` loads them and watches the files."""

    def __init__(self, projects: Sequence[JwtProject]) -> None:
        self._projects = list(projects)
        self._trust = {
            p.id: _Trust(p.id, p.tenant, p.enabled, p.jwt)
            for p in projects
            if p.jwt is not None and p.jwt.enabled
        }
        self._files = _key_files(projects)
        self._keyring = Keyring()
        self._stamps: FileStamps = ()
        self._failed_stamps: FileStamps | None = None
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: str | None = None

    @property
    def enabled(self) -> bool:
        """Some project trusts JWTs."""
        return bool(self._trust)

    async def start(self) -> None:
        """Load every key; a StartupError names the file that is wrong."""
        if not self.enabled:
            return
        self._stamps, self._keyring = await asyncio.to_thread(self._load)
        log.info(EV_JWT_KEYS_LOADED, keys=len(self._keyring.keys), projects=len(self._trust))
        interval = min(t.settings.reload_interval_s for t in self._trust.values())
        self._task = asyncio.create_task(self._watch(interval), name="jwt-key-reload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _load(self) -> tuple[FileStamps, Keyring]:
        try:
            stamps = stamp(self._files)
        except OSError as e:
            raise StartupError(f"JWT key file {e.filename}: {e.strerror}") from e
        return stamps, load_keyring(self._projects)

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)  # the poll period, not a wait for some condition
            await self.check()

    async def check(self) -> bool:
        """Reload the keys when a key file changed; the current keys stay if the new ones fail."""
        try:
            stamps = await asyncio.to_thread(stamp, self._files)
        except OSError as e:
            return self._failed(None, f"JWT key file {e.filename}: {e.strerror}")
        if stamps in (self._stamps, self._failed_stamps):
            return False
        try:
            keyring = await asyncio.to_thread(load_keyring, self._projects)
        except StartupError as e:
            return self._failed(stamps, str(e))
        self._stamps, self._keyring = stamps, keyring
        self._failed_stamps = None
        self.last_error = None
        self.reloads += 1
        log.info(EV_JWT_KEYS_LOADED, keys=len(keyring.keys), projects=len(self._trust))
        return True

    def _failed(self, stamps: FileStamps | None, error: str) -> bool:
        self._failed_stamps = stamps
        self.reload_failures += 1
        self.last_error = error
        log.warning(EV_JWT_KEYS_RELOAD_FAILED, error=error)
        return False

    def status(self) -> dict[str, Any]:
        """For `runner status`: keys per project and how reloads went (no key material)."""
        per_project: dict[str, int] = dict.fromkeys(self._trust, 0)
        for key in self._keyring.keys:
            per_project[key.project] += 1
        return {
            "keys_by_project": per_project,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "last_error": self.last_error,
        }

    # -- verification ----------------------------------------------------------------------------

    def verify(self, token: str) -> JwtIdentity:
        """The identity a token proves; JwtRejected (4401, or 4403 for a disabled project)."""
        if len(token) > MAX_TOKEN_CHARS:
            raise JwtRejected("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise JwtRejected("not a JWT") from None
        alg = header.get("alg")
        if alg not in JWT_ALGORITHMS:
            raise JwtRejected("algorithm not allowed")
        if "crit" in header:
            raise JwtRejected("unsupported critical header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise JwtRejected("not a JWT")
        candidates = [
            k
            for k in self._keyring.candidates(alg, kid)
            if alg in self._trust[k.project].settings.algorithms
        ][:MAX_CANDIDATES]
        if not candidates:
            raise JwtRejected("no trusted key for this token")
        accepted: dict[str, dict[str, Any]] = {}
        claim_error: str | None = None
        for key in candidates:
            if key.project in accepted:
                continue
            try:
                accepted[key.project] = self._decode(token, key)
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as e:
                claim_error = claim_error or _claim_reason(e)
        if not accepted:
            raise JwtRejected(claim_error or "bad signature")
        if len(accepted) > 1:
            raise JwtRejected("token fits more than one project")
        ((project_id, claims),) = accepted.items()
        return self._identity(self._trust[project_id], claims)

    def _decode(self, token: str, key: _Key) -> dict[str, Any]:
        settings = self._trust[key.project].settings
        required = ["exp", "iss", "aud", "sub"]
        if settings.max_lifetime_s is not None:
            required.append("iat")
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[key.alg],
            audience=list(settings.audience),
            issuer=list(settings.issuer),
            leeway=settings.leeway_s,
            options={"require": required},
        )
        return claims

    @staticmethod
    def _identity(trust: _Trust, claims: dict[str, Any]) -> JwtIdentity:
        subject = claims["sub"]
        if not isinstance(subject, str) or not 1 <= len(subject) <= 256:
            raise JwtRejected("bad sub claim")
        tid = claims.get("tid")
        if tid is not None and tid != trust.tenant:
            raise JwtRejected("tid is not the project's tenant")
        exp = claims["exp"]
        lifetime = trust.settings.max_lifetime_s
        if lifetime is not None and exp - claims["iat"] > lifetime:
            raise JwtRejected("token lives longer than max_lifetime_s")
        if not trust.enabled:
            raise JwtRejected("project is disabled", CLOSE_DISABLED)
        return JwtIdentity(trust.id, trust.tenant, subject, int(exp))


def _claim_reason(error: jwt.PyJWTError) -> str:
    for kind, reason in _CLAIM_REASONS:
        if isinstance(error, kind):
            return reason
    return "invalid token"


def looks_like_jwt(token: str | None) -> bool:
    """Three dot-separated parts and no `tf_` prefix: a JWT, not an API key."""
    return token is not None and token.count(".") == 2 and not token.startswith("tf_")
