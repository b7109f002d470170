"""Plans: the credits an account's plan grants each month, and per network-slice booking.

A plan grant is a lot like any other (origin ``plan``/``subscription``, restricted to the plan's
tiers and models, expiring at the end of its period unless the plan rolls over). Its reference
(``plan:<plan>:<period>``, ``slice:<id>``) is a business reference the ledger dedupes on for
longer than a year (ledger_fn/claims.py), so a schedule that fires twice, a renewal re-run after a
crash, or a booking announced twice (AVAILABLE, then OPERATING), grants once.

The monthly renewal fans out: the schedule's command walks the account registry a page at a time
and sends one renewal event per account (ledger_fn/handlers.py), each applied on its own, so one
account that cannot be renewed fails (and is dead-lettered) alone."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from events.sla import period_end, period_of
from functions.accounts import read_profile
from ledger_fn.ledger import Ledger
from ledger_fn.registry import Registered

RENEWALS_PER_PAGE = 200  # renewal events one invocation sends at most


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
        renewals_per_page: int = RENEWALS_PER_PAGE,
    ) -> None:
        assert renewals_per_page >= 1
        self.ledger = ledger
        self.plans = plans
        self.clock = clock or ledger.clock
        self.renewals_per_page = renewals_per_page

    def plan_of(self, account_id: str) -> PlanGrant | None:
        name = (read_profile(self.ledger.store, account_id) or {}).get("plan")
        return self.plans.get(name) if isinstance(name, str) else None

    def grant_period(
        self, account_id: str, period: str, key: str | None = None
    ) -> dict[str, Any] | None:
        """Grant the account's plan credits for ``period`` once; None if its plan grants none.
        ``key``: the command's own idempotency key (the renewal event's)."""
        plan = self.plan_of(account_id)
        if plan is None or plan.credits == 0:
            return None
        expires = None if plan.rollover else period_end(period)
        if expires is not None and expires <= self.clock():
            return None  # the period is over: a late schedule must not grant dead credits
        return self._grant(account_id, plan, f"plan:{plan.name}:{period}", expires, key)

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

    def current_period(self) -> str:
        return period_of(int(self.clock()))

    def renewal_page(self, after: int) -> tuple[list[Registered], int | None]:
        """The registered accounts to renew after registry position ``after``, at most a page,
        and the position the next page starts after (None: this is the last page)."""
        size = self.renewals_per_page
        page = list(itertools.islice(self.ledger.registry.walk(after), size + 1))
        if len(page) <= size:
            return page, None
        page = page[:size]
        return page, page[-1].n

    def next_grant(self, account_id: str) -> dict[str, Any]:
        plan = self.plan_of(account_id)
        if plan is None or plan.credits == 0:
            return {"plan": plan.name if plan else None, "next_grant": None}
        return {
            "plan": plan.name,
            "next_grant": {"at": period_end(period_of(int(self.clock()))), "credits": plan.credits},
        }

    def _grant(
        self,
        account_id: str,
        plan: PlanGrant,
        reference: str,
        expires: int | None,
        key: str | None = None,
    ) -> dict[str, Any]:
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
        return self.ledger.execute(account_id, "grant", args, key=key)
