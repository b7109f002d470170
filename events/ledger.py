"""Data of the ledger's commands and facts (types in events/types.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from events.fields import AccountId, Amount, Count, EventData, HoldId, Name, Timestamp
from events.quote import Quote, Usage

Origin = Literal["plan", "top-up", "subscription", "refund", "promotion", "adjustment"]
MAX_TTL_SECONDS = 24 * 3600


class CreditsGrant(EventData):
    account_id: AccountId
    amount: Amount
    expires_at: Timestamp | None = None
    tiers: list[Name] | None = Field(default=None, min_length=1, max_length=16)
    models: list[Name] | None = Field(default=None, min_length=1, max_length=64)
    origin: Origin = "top-up"
    reference: Name | None = None  # e.g. the plan period or slice booking this grant is for


class HoldAuthorize(EventData):
    account_id: AccountId
    amount: Amount
    ttl_seconds: int = Field(default=300, strict=True, ge=1, le=MAX_TTL_SECONDS)
    tier: Name | None = None
    model: Name | None = None
    quote: Quote | None = None


class HoldSettle(EventData):
    """Capture ``amount`` of a hold (at most the hold), as an operator's own flow decides it;
    metered inference settles by ``inference.completed`` and the hold's quote instead."""

    hold_id: HoldId
    amount: Amount


class HoldRefund(EventData):
    hold_id: HoldId
    amount: Amount | None = None  # for a settled hold: how much to return (default: all of it)


class HoldsSweep(EventData):
    pass


class PlansRenew(EventData):
    """The monthly schedule: grant every account its plan's credits for the current period."""


class PlansRenewed(EventData):
    accounts: Count
    granted: Count


class Timings(EventData):
    ttft_ms: Count | None = None
    total_ms: Count = 0
    engine_ms: Count = 0


class InferenceOutcome(EventData):
    """What infer reports of every held request, however it ended. ``capability`` is the
    ingress's signed capability for the attempt (events/capability.py): settle and refund move
    credits only for the hold and account it names, so whoever merely knows a hold id cannot
    settle or refund it. A durable outbox keeps it with the event."""

    hold_id: HoldId
    account_id: AccountId
    model: Name
    tier: Name | None = None
    cluster: Name | None = None
    usage: Usage
    timings: Timings = Timings()
    capability: str = Field(min_length=16, max_length=8192)


class InferenceCompleted(InferenceOutcome):
    pass


class InferenceError(EventData):
    type: str = Field(max_length=128)
    message: str = Field(max_length=4096)


class InferenceFailed(InferenceOutcome):
    # An attempt that failed before any output (the ingress's own report) used nothing.
    usage: Usage = Usage(prompt_tokens=0, completion_tokens=0)
    error: InferenceError


class CreditsGranted(EventData):
    account_id: AccountId
    lot_id: str
    amount: Amount
    origin: Origin
    expires_at: Timestamp | None = None
    available: Count


class HoldAuthorized(EventData):
    hold_id: HoldId
    account_id: AccountId
    amount: Amount
    expires_at: Timestamp
    available: Count | None = None  # what the account has left to spend after this hold


class HoldDeclined(EventData):
    account_id: AccountId
    amount: Amount
    reason: str
    available: Count


class HoldSettled(EventData):
    hold_id: HoldId
    account_id: AccountId
    captured: Count
    released: Count


class HoldRefunded(EventData):
    hold_id: HoldId
    account_id: AccountId
    refunded: Count


class HoldExpired(EventData):
    hold_id: HoldId
    account_id: AccountId
    released: Count


class HoldsSwept(EventData):
    accounts: Count
    holds_expired: Count
    lots_expired: Count
