"""What a site ingress (an ingress on an edge or regional cluster) asks the home ingress besides
ledger commands: who an API key belongs to (the key itself never travels: its SHA-256 does, as
the shared table indexes it, functions/apikeys.py), and to record the latency-SLA observation of
a request it served, where the monthly evaluation reads them (functions/sla.py), and to take its
rate-limit shares from the home table's counters (functions/rateshares.py), so a key's limit
holds across the home and every site instead of once per site."""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import BaseModel, Field, model_validator

from events import types
from events.fields import AccountId, EventData, Name
from events.ratelimits import MAX_PER_MINUTE, RateLimits
from events.sla import Period

KeyDigest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class CallerLookup(EventData):
    key_sha256: KeyDigest


class CallerFound(EventData):
    """The key's account and id, the plan its profile names (None: no plan), the countries its
    roaming devices are in (None: none roams) and the key's own rate limits (None: the plan's)."""

    account_id: AccountId
    key_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    plan: Annotated[str, Field(max_length=256)] | None = None
    roaming_countries: tuple[Country, ...] | None = None
    rate_limits: RateLimits | None = None


class SlaObserved(EventData):
    """One budgeted request's time to first token as its client saw it at the site."""

    account_id: AccountId
    period: Period
    request_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    budget_ms: Annotated[int, Field(strict=True, ge=0)]
    ttft_ms: Annotated[int, Field(strict=True, ge=0)]
    cluster: Name
    model: Name
    at: Annotated[int, Field(strict=True, ge=0)]


class SlaRecorded(EventData):
    recorded: bool  # False: recorded already (a retry)


RateKind = Annotated[str, Field(pattern=r"^(requests|tokens|running)$")]
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_PER_MINUTE)]


class RatesHold(EventData):
    """Hold ``targets`` of ``limits`` (per kind) in the counter ``sk`` of the key ``subject``
    (its key id) until ``until``, as this site's replica ``replica`` (the home prefixes it with
    the site's verified identity: one site never writes another's or the home's entries)."""

    replica: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    subject: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    sk: Annotated[str, Field(pattern=r"^(W#[1-9][0-9]{0,5}#[0-9]{1,12}|RUNNING)$")]
    targets: dict[RateKind, Count]
    limits: dict[RateKind, Annotated[int, Field(strict=True, ge=1, le=MAX_PER_MINUTE)]]
    until: Annotated[float, Field(ge=0)]

    @model_validator(mode="after")
    def _same_kinds(self) -> RatesHold:
        if not self.targets or set(self.targets) != set(self.limits):
            raise ValueError("targets and limits must name the same kinds, at least one")
        return self


class RatesHeld(EventData):
    """What the site's replica holds after the write, and what all live holders hold."""

    mine: dict[RateKind, Count]
    total: dict[RateKind, Count]


MODELS: Final[dict[str, type[BaseModel]]] = {
    types.CALLER_LOOKUP: CallerLookup,
    types.CALLER_FOUND: CallerFound,
    types.SLA_OBSERVED: SlaObserved,
    types.SLA_RECORDED: SlaRecorded,
    types.RATES_HOLD: RatesHold,
    types.RATES_HELD: RatesHeld,
}
