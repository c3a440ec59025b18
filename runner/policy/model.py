"""The policy schema of PROTOCOL §3: what a tenant records, samples, keeps and redacts.

Every model is frozen: the policy in force is an immutable snapshot that is
swapped whole, so one batch is judged by one policy from start to end.
Unknown fields are ignored (PROTOCOL: "Unknown fields are ignored by every
receiver"), wrong types and bad values are refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
    actions: dict[str, Action] = Field(default_factory=lambda: {"default": _TOKEN})
    deny_keys: tuple[str, ...] = DEFAULT_DENY_KEYS
    block_selectors: tuple[str, ...] = ()
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


class Policy(_Frozen):
    version: int = Field(ge=0)
    issued_at: str | None = None
    expires_at: str | None = None
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)
    source: str = "builtin"

    def for_tenant(self, tenant: str) -> TenantPolicy:
        """The tenant's policy, or the policy's `default` entry, or the strict default."""
        return self.tenants.get(tenant) or self.tenants.get("default") or STRICT_DEFAULT


BUILTIN_POLICY = Policy(version=0, source="builtin")
