"""Automatic service credits: a plan's latency SLA evaluated per account and calendar month.

Once a month is over (the ``sla-evaluate`` ping, or ``tollgate sla report`` on demand to look),
every account whose plan declares an SLA has its month's requests with a budget counted from the
ingress's observations (functions/sla.py). Below the objective, the account gets one service
credit for the month: a grant with origin ``sla-credit`` and business reference
``sla:<account>:<YYYY-MM>``, run under a long-lived idempotency record and the ledger's own
dedupe, so however often the evaluation runs or its event is redelivered, a month is credited
once; ``io.tollgate.sla.credited.v1`` announces it (its id is the reference: a re-announcement
is a duplicate, not a second credit).

The amount, in integer credits, rounded down (the operator's direction: the operator pays it):
- ``percentOfSpend``: that share of the credits captured from the account in the month (the
  ``spent`` its journal shows moving between the month's first and last second);
- ``perBreach``: that many credits per request that missed its budget, at most the month's spend
  (a service credit never pays back more than was paid).
A breached month with no spend credits nothing (there is nothing to pay back)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from events.sla import (
    SLA_CREDITED,
    SLA_EVALUATE,
    SLA_EVALUATED,
    SlaCredited,
    SlaEvaluate,
    SlaEvaluated,
    credit_reference,
    period_end,
    period_start,
    previous_period,
)
from functions.app import Handler
from functions.cloudevent import Incoming, Reply
from functions.emit import Emitter
from functions.errors import BadRequest
from functions.idempotency import Idempotency
from functions.sla import Tally, tally
from functions.store import Item
from functions.validation import validate
from ledger_fn.ledger import PAGE, Ledger
from ledger_fn.plans import Plans

Emit = Callable[[str, dict[str, Any], str], None]  # (type, data, id)
# A month's credit is decided once, whatever a later re-evaluation would compute (a year and a bit).
CREDIT_RECORD_S = 400 * 24 * 3600


@dataclass(frozen=True)
class SlaTerms:
    """A plan's SLA as the ledger needs it (infra fills it from template.yaml)."""

    objective_bp: int  # 9500 = 95.00% of requests with a budget meet it
    percent_of_spend: int | None = None
    per_breach: int | None = None

    def breached(self, month: Tally) -> bool:
        return month.requests > 0 and month.met * 10_000 < self.objective_bp * month.requests

    def credit(self, month: Tally, spend: int) -> int:
        if self.percent_of_spend is not None:
            return spend * self.percent_of_spend // 100
        assert self.per_breach is not None
        return min(month.breached * self.per_breach, spend)


class ServiceCredits:
    def __init__(
        self,
        ledger: Ledger,
        plans: Plans,
        terms: Mapping[str, SlaTerms],
        emit: Emit | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.ledger = ledger
        self.plans = plans
        self.terms = terms
        self.emit = emit
        self.clock = clock or ledger.clock
        self.records = Idempotency(ledger.store, expires_s=CREDIT_RECORD_S, clock=self.clock)

    def terms_of(self, account_id: str) -> tuple[str, SlaTerms] | None:
        plan = self.plans.plan_of(account_id)
        if plan is None or plan.name not in self.terms:
            return None
        return plan.name, self.terms[plan.name]

    def report(self, account_id: str, period: str) -> dict[str, Any]:
        """What ``tollgate sla report`` and the account view show for one month."""
        self.ledger.state(account_id)  # NotFound for unknown accounts
        month = tally(self.ledger.store, account_id, period)
        found = self.terms_of(account_id)
        over = period_end(period) <= self.clock()
        view: dict[str, Any] = {"account_id": account_id, "period": period, **month.view()}
        view["closed"] = over
        if found is None:
            return {**view, "plan_sla": None, "breached_sla": None, "credit": None}
        plan, terms = found
        view["plan_sla"] = {"plan": plan, "objective_percent": _percent(terms.objective_bp)}
        view["breached_sla"] = terms.breached(month)
        view["credit"] = self._credited(account_id, period)
        return view

    def evaluate_all(self, period: str) -> dict[str, int]:
        self._closed(period)
        accounts = credited = 0
        for account_id in self.ledger.accounts():
            if self.terms_of(account_id) is None:
                continue
            month = tally(self.ledger.store, account_id, period)
            if month.requests == 0:
                continue
            accounts += 1
            if self.evaluate(account_id, period, month) is not None:
                credited += 1
        return {"accounts": accounts, "credited": credited}

    def evaluate(
        self, account_id: str, period: str, month: Tally | None = None
    ) -> SlaCredited | None:
        """Credit the account for ``period`` if its SLA was breached (once); the credit, or
        None when nothing is owed."""
        self._closed(period)
        found = self.terms_of(account_id)
        if found is None:
            return None
        plan, terms = found
        month = month or tally(self.ledger.store, account_id, period)
        if not terms.breached(month):
            return None
        spend = self.spend(account_id, period)
        amount = terms.credit(month, spend)
        if amount <= 0:
            return None
        reference = credit_reference(account_id, period)
        args = {"amount": amount, "origin": "sla-credit", "reference": reference}
        result = self.records.run(
            reference,
            {"account_id": account_id, "reference": reference},
            lambda: self.ledger.execute(account_id, "grant", args, key=reference),
        )
        assert result is not None, "a grant always answers"
        credited = SlaCredited(
            account_id=account_id,
            period=period,
            plan=plan,
            objective_bp=terms.objective_bp,
            attainment_bp=month.attainment_bp,
            requests=month.requests,
            met=month.met,
            breached=month.breached,
            spend=spend,
            amount=result["amount"],
            lot_id=result["lot_id"],
            reference=reference,
        )
        # What the report shows; rewritten identically by a replay.
        seen = {"lot_id": credited.lot_id, "amount": credited.amount, "reference": reference}
        self.ledger.store.put(Item(_credits_pk(account_id), period, 1, seen))
        if self.emit is not None:
            self.emit(SLA_CREDITED, credited.model_dump(mode="json"), reference)
        return credited

    def spend(self, account_id: str, period: str) -> int:
        """Credits captured from the account during ``period``: the move of its journal's
        ``spent`` between the last entry before the month and the last entry within it."""
        start, end = period_start(period), period_end(period)
        before = within = 0
        after = 0
        while True:
            entries = self.ledger.journal(account_id, after=after, limit=PAGE)
            for entry in entries:
                at = entry["op"]["at"]
                if at >= end:
                    return max(within - before, 0)
                if at < start:
                    before = entry["balances"]["spent"]
                within = entry["balances"]["spent"]
            if len(entries) < PAGE:
                return max(within - before, 0)
            after = entries[-1]["seq"]

    def _credited(self, account_id: str, period: str) -> dict[str, Any] | None:
        item = self.ledger.store.get(_credits_pk(account_id), period)
        return None if item is None else item.data

    def _closed(self, period: str) -> None:
        if period_end(period) > self.clock():
            raise BadRequest(
                f"period {period} is not over yet; it can be evaluated from "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(period_end(period)))}"
            )


def _percent(bp: int) -> str:
    return f"{bp // 100}.{bp % 100:02d}"


def _credits_pk(account_id: str) -> str:
    """The service credits granted to an account, one item per month (sk YYYY-MM)."""
    return f"SLACREDIT#{account_id}"


def sla_handlers(credits: ServiceCredits) -> dict[str, Handler]:
    """The grant function's SLA command: evaluate a closed month (default: the last one)."""

    def evaluate(event: Incoming) -> Reply:
        cmd = validate(SlaEvaluate, event.data, f"{event.type} data")
        period = cmd.period or previous_period(credits.clock())
        done = SlaEvaluated(period=period, **credits.evaluate_all(period))
        return Reply(SLA_EVALUATED, done.model_dump(mode="json"))

    return {SLA_EVALUATE: evaluate}


def sla_emitter(emitter: Emitter, function: str) -> Emit:
    """Announce credits from the function that granted them, keyed by the account."""

    def emit(event_type: str, data: dict[str, Any], event_id: str) -> None:
        source = f"/tollgate/{function}"
        emitter.emit(event_type, source, data, id=event_id, subject=data["account_id"])

    return emit
