"""The policy schema of PROTOCOL §3: what a tenant records, samples, keeps and redacts.

Every model is frozen: the policy in force is an immutable snapshot that is
swapped whole, so one batch is judged by one policy from start to end.
Unknown fields are ignored (PROTOCOL: "Unknown fields are ignored by every
receiver"), wrong types and bad values are refused.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, NoReturn

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

Action = Literal["token", "mask", "redact", "hash", "drop_event"]
TextMode = Literal["mask_all", "detect"]

DEFAULT_DENY_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "pwd",
    "otp",
    "pin",
    "cvv",
    "cvc",
    "card",
    "cardnumber",
    "card_number",
    "pan",
    "aadhaar",
    "ssn",
    "authorization",
    "cookie",
    "set-cookie",
    "token",
    "secret",
    "api_key",
    "apikey",
)

DEFAULT_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "US_SSN",
    "IN_PAN",
    "IN_AADHAAR",
    "IN_VEHICLE_REGISTRATION",
    "IN_VOTER",
    "IN_PASSPORT",
    "IN_IFSC",
    "IN_UPI_ID",
    "IN_MOBILE",
    "IN_GSTIN",
    "BANK_ACCOUNT",
    "DATE_OF_BIRTH",
)


_TOKEN: Action = "token"  # noqa: S105 - the action name, not a secret


class FrozenDict(dict[Any, Any]):
    """A dict that refuses changes: a policy in force is swapped whole, never edited."""

    def _refuse(self, *_: object, **__: object) -> NoReturn:
        raise TypeError("a policy is read-only")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[type[FrozenDict], tuple[dict[Any, Any]]]:
        return FrozenDict, (dict(self),)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Sampling(_Frozen):
    session_rate: float = Field(default=1.0, ge=0.0, le=1.0)


class Features(_Frozen):
    recording: bool = True
    console: bool = True
    network: bool = True
    network_bodies: bool = False
    audio: bool = False


class PiiPolicy(_Frozen):
    text: TextMode = "mask_all"
    mask_all_inputs: bool = True
    entities: tuple[str, ...] = DEFAULT_ENTITIES
    actions: Annotated[dict[str, Action], AfterValidator(FrozenDict)] = Field(
        default_factory=lambda: FrozenDict({"default": _TOKEN})
    )
    deny_keys: tuple[str, ...] = DEFAULT_DENY_KEYS
    block_selectors: tuple[str, ...] = ()
    mask_selectors: tuple[str, ...] = ()
    """Elements whose text (their subtree's, now and after mutations) and text attributes are
    always masked, whatever the mode: for what detection cannot see, e.g. names without NER."""
    allow_values: tuple[str, ...] = ()
    min_score: float = Field(default=0.5, ge=0.0, le=1.0)
    phone_regions: tuple[str, ...] = ("IN",)

    def action_for(self, entity: str) -> Action:
        """The action for one entity type, falling back to the policy's default."""
        return self.actions.get(entity, self.actions.get("default", "token"))


class RateLimit(_Frozen):
    events_per_second: float = Field(default=5000.0, gt=0)
    burst: int = Field(default=20000, gt=0)


class TenantPolicy(_Frozen):
    sampling: Sampling = Sampling()
    features: Features = Features()
    pii: PiiPolicy = PiiPolicy()
    retention_days: int = Field(default=30, ge=1, le=3650)
    rate_limit: RateLimit = RateLimit()
    forward: bool = True


STRICT_DEFAULT = TenantPolicy()
"""The strictest built-in default: mask_all, inputs masked, no network bodies, forward on."""


SOURCE_CONTROL_PLANE = "control_plane"
"""Received from the control plane and verified in this process."""
SOURCE_LAST_GOOD = "last_good"
"""The last control-plane policy kept on disk, re-verified at start-up."""
SOURCE_FILES = "files"
"""The local `policies/` folder."""
SOURCE_BUILTIN = "builtin"
"""The strict built-in default: no other source had a usable policy."""


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 time with an offset (`Z` or `+hh:mm`); raises ValueError otherwise."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("an RFC 3339 time needs an offset (Z or +hh:mm)")
    return parsed


class Policy(_Frozen):
    version: int = Field(ge=0)
    issued_at: str | None = None
    expires_at: str | None = None
    tenants: Annotated[dict[str, TenantPolicy], AfterValidator(FrozenDict)] = Field(
        default_factory=FrozenDict
    )
    source: str = SOURCE_BUILTIN
    """Where this snapshot came from (`SOURCE_*`); set by the Runner, never by the payload."""

    @field_validator("issued_at", "expires_at")
    @classmethod
    def _rfc3339(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rfc3339(value)
        return value

    def for_tenant(self, tenant: str) -> TenantPolicy:
        """The tenant's policy, or the policy's `default` entry, or the strict default."""
        return self.tenants.get(tenant) or self.tenants.get("default") or STRICT_DEFAULT

    @property
    def expires(self) -> datetime | None:
        return parse_rfc3339(self.expires_at) if self.expires_at is not None else None

    def expired(self, now: datetime) -> bool:
        """True when `expires_at` is set and not after `now` (an aware datetime)."""
        expires = self.expires
        return expires is not None and expires <= now

    def same_rules(self, other: Policy) -> bool:
        """The same version, tenants and expiry: re-sending it changes nothing."""
        return (
            self.version == other.version
            and self.tenants == other.tenants
            and self.expires_at == other.expires_at
        )


BUILTIN_POLICY = Policy(version=0, source=SOURCE_BUILTIN)
