"""Plans: the credits an account's plan grants each month, and per network-slice booking.

A plan grant is a lot like any other (origin ``plan``/``subscription``, restricted to the plan's
tiers and models, expiring at the end of its period unless the plan rolls over). Each grant runs
under an idempotency record that outlives the ledger's own dedupe window, so a schedule that fires
twice, or a booking announced twice (AVAILABLE, then OPERATING), grants once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from events.sla import period_end, period_of
from functions.accounts import read_profile
from functions.idempotency import Idempotency
from ledger_fn.ledger import Ledger

# Long enough that a period or booking is never granted twice (a year and a bit).
GRANT_RECORD_S = 400 * 24 * 3600


@dataclass(frozen=True)
class PlanGrant:
    """What a plan grants per period, as the ledger needs it (infra fills it from template.yaml)."""

    name: str
    kind: str  # monthlyBundle | subscription | payPerInference | perSecond
    credits: int  # per period (and per slice booking); 0: top-ups only
    tiers: tuple[str, ...] = ()  # empty: any tier
    models: tuple[str, ...] = ()  # empty: any model
    rollover: bool = False
    top_ups: tuple[int, ...] = ()  # credits of the top-ups the plan sells


class Plans:
    def __init__(
        self,
        ledger: Ledger,
        plans: Mapping[str, PlanGrant],
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.ledger = ledger
        self.plans = plans
        self.clock = clock or ledger.clock
        self.records = Idempotency(ledger.store, expires_s=GRANT_RECORD_S, clock=self.clock)

    def plan_of(self, account_id: str) -> PlanGrant | None:
        name = (read_profile(self.ledger.store, account_id) or {}).get("plan")
        return self.plans.get(name) if isinstance(name, str) else None

    def grant_period(self, account_id: str, period: str) -> dict[str, Any] | None:
        """Grant the account's plan credits for ``period`` once; None if its plan grants none."""
        plan = self.plan_of(account_id)
        if plan is None or plan.credits == 0:
            return None
        expires = None if plan.rollover else period_end(period)
        if expires is not None and expires <= self.clock():
            return None  # the period is over: a late schedule must not grant dead credits
        return self._grant(account_id, plan, f"plan:{plan.name}:{period}", expires)

    def grant_slice(
        self, account_id: str, slice_id: str, ends_at: int | None = None
    ) -> dict[str, Any] | None:
        """Grant the plan's bundle for a booked slice, once per slice. A slice with an end
        (CAMARA serviceTime.endDate) bounds the bundle: it expires then, and a slice already
        over grants nothing. Without one the plan's own expiry applies."""
        plan = self.plan_of(account_id)
        if plan is None or plan.credits == 0:
            return None
        if ends_at is not None:
            if ends_at <= self.clock():
                return None
            expires: int | None = ends_at
        else:
            expires = None if plan.rollover else period_end(period_of(int(self.clock())))
        return self._grant(account_id, plan, f"slice:{slice_id}", expires)

    def renew_all(self) -> dict[str, int]:
        """The monthly schedule: every account with a granting plan gets this period's credits."""
        period = period_of(int(self.clock()))
        granted = 0
        accounts = 0
        for account_id in self.ledger.accounts():
            accounts += 1
            if self.grant_period(account_id, period) is not None:
                granted += 1
        return {"accounts": accounts, "granted": granted}

    def next_grant(self, account_id: str) -> dict[str, Any]:
        plan = self.plan_of(account_id)
        if plan is None or plan.credits == 0:
            return {"plan": plan.name if plan else None, "next_grant": None}
        return {
            "plan": plan.name,
            "next_grant": {"at": period_end(period_of(int(self.clock()))), "credits": plan.credits},
        }

    def _grant(
        self, account_id: str, plan: PlanGrant, reference: str, expires: int | None
    ) -> dict[str, Any] | None:
        args: dict[str, Any] = {
            "amount": plan.credits,
            "origin": "subscription" if plan.kind == "subscription" else "plan",
            "reference": reference,
            "expires_at": expires,
        }
        if plan.tiers:
            args["tiers"] = list(plan.tiers)
        if plan.models:
            args["models"] = list(plan.models)
        key = f"{account_id}#{reference}"
        return self.records.run(
            key,
            {"account_id": account_id, "reference": reference},
            lambda: self.ledger.execute(account_id, "grant", args, key=key),
        )
