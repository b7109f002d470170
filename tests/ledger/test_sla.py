"""Service credits: a plan's latency SLA breached in a month grants one sla-credit lot, exactly
once however often the evaluation or its observations are replayed, and the journal verifies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from events.sla import SLA_CREDITED, SLA_EVALUATE, SLA_EVALUATED, SlaCredited, period_of
from functions.cloudevent import parse_http
from functions.config import Settings
from functions.sla import Observation, record, tally
from functions.store import Store
from ledger_fn.app import create_app
from ledger_fn.ledger import Ledger
from ledger_fn.plans import PlanGrant, Plans
from ledger_fn.sla import ServiceCredits, SlaTerms
from tests.clock import Clock
from tests.ledger.helpers import invariant, send, senders, signed
from tests.trust import shared_issuer

NOV_15 = datetime(2026, 11, 15, 12, tzinfo=UTC).timestamp()
DEC_2 = datetime(2026, 12, 2, tzinfo=UTC).timestamp()
PLANS = {
    "bundle": PlanGrant("bundle", "monthlyBundle", 0),
    "seconds": PlanGrant("seconds", "perSecond", 0),
    "payg": PlanGrant("payg", "payPerInference", 0),
}
TERMS = {
    "bundle": SlaTerms(objective_bp=9500, percent_of_spend=10),
    "seconds": SlaTerms(objective_bp=9900, per_breach=2000),
}


@pytest.fixture
def clock() -> Clock:
    return Clock(NOV_15)


@pytest.fixture
def ledger(sqlite_store: Store, clock: Clock) -> Ledger:
    ledger = Ledger(sqlite_store, clock=clock)
    for account, plan in (("a", "bundle"), ("s", "seconds"), ("p", "payg")):
        ledger.open_account(account, {"plan": plan})
        ledger.execute(account, "grant", {"amount": 1_000_000, "origin": "top-up"})
    return ledger


def spend(ledger: Ledger, account: str, amount: int) -> None:
    hold = ledger.execute(account, "authorize", {"amount": amount, "ttl_seconds": 60})
    ledger.execute(account, "settle", {"hold_id": hold["hold_id"], "amount": amount})


def observe(store: Store, account: str, met: int, missed: int, *, prefix: str = "r") -> None:
    period = period_of(NOV_15)
    for i in range(met + missed):
        ttft = 12 if i < met else 45
        obs = Observation(f"{prefix}{i}", 20, ttft, "edge-lyon-5g-1", "smollm2-135m", int(NOV_15))
        record(store, account, period, obs)


def credits_app(sqlite_store: Store, ledger: Ledger) -> FlaskClient:
    settings = Settings(store_url="unused", admin_token=None, sink=None, port=0)
    app = create_app(
        "grant",
        senders=senders(shared_issuer()),
        settings=settings,
        store=sqlite_store,
        ledger=ledger,
        plans=PLANS,
        sla=TERMS,
    )
    return signed(app, shared_issuer())


def test_a_breached_month_is_credited_once_and_replays_credit_nothing_more(
    sqlite_store: Store, ledger: Ledger, clock: Clock
) -> None:
    spend(ledger, "a", 123_457)
    observe(sqlite_store, "a", met=18, missed=2)  # 90% < 95%
    announced: list[tuple[str, dict[str, Any], str]] = []
    credits = ServiceCredits(
        ledger, Plans(ledger, PLANS), TERMS, lambda t, d, i: announced.append((t, d, i))
    )
    clock.now = DEC_2
    first = credits.evaluate("a", "2026-11")
    assert first is not None
    # 10% of the month's spend, rounded down: the operator's direction.
    assert (first.spend, first.amount) == (123_457, 12_345)
    assert (first.requests, first.met, first.breached, first.attainment_bp) == (20, 18, 2, 9000)
    granted = ledger.balance("a")["granted"]
    # Replays: the same evaluation, the same observations recorded again, then evaluated again.
    observe(sqlite_store, "a", met=18, missed=2)
    assert tally(sqlite_store, "a", "2026-11").requests == 20
    for _ in range(3):
        again = credits.evaluate("a", "2026-11")
        assert again is not None and again.lot_id == first.lot_id
    assert ledger.balance("a")["granted"] == granted
    lots = [lot for lot in ledger.state("a").lots.values() if lot.origin == "sla-credit"]
    assert [(lot.amount, lot.reference) for lot in lots] == [(12_345, "sla:a:2026-11")]
    # Announced with the reference as its id: redeliveries are duplicates, not new credits.
    assert {i for _, _, i in announced} == {"sla:a:2026-11"}
    assert all(t == SLA_CREDITED for t, _, _ in announced)
    SlaCredited.model_validate(announced[0][1])
    assert ledger.verify().ok
    invariant(ledger, "a")
    report = credits.report("a", "2026-11")
    assert report["credit"] == {
        "lot_id": first.lot_id,
        "amount": 12_345,
        "reference": "sla:a:2026-11",
    }
    assert (report["attainment_percent"], report["breached_sla"]) == ("90.00", True)


def test_the_monthly_event_credits_every_breached_account_once(
    sqlite_store: Store, ledger: Ledger, clock: Clock
) -> None:
    spend(ledger, "a", 50_000)
    spend(ledger, "s", 3_000)
    spend(ledger, "p", 9_000)
    observe(sqlite_store, "a", met=99, missed=1)  # 99% meets 95%: nothing owed
    observe(sqlite_store, "s", met=8, missed=2)  # 2 breaches x 2000, capped at the 3000 spent
    observe(sqlite_store, "p", met=0, missed=5)  # no SLA on pay-as-you-go
    clock.now = DEC_2
    client = credits_app(sqlite_store, ledger)
    for event_id in ("tick-1", "tick-2"):  # the schedule fires twice; each is evaluated
        response = send(client, SLA_EVALUATE, {}, id=event_id)
        assert response.status_code == 200, response.get_json()
        reply = parse_http(dict(response.headers), response.get_data())
        assert reply.type == SLA_EVALUATED
        assert reply.data == {"period": "2026-11", "accounts": 2, "credited": 1}
    credit = [lot for lot in ledger.state("s").lots.values() if lot.origin == "sla-credit"]
    assert [lot.amount for lot in credit] == [3_000]
    assert not any(lot.origin == "sla-credit" for lot in ledger.state("a").lots.values())
    assert ledger.verify().ok


def test_an_open_month_is_not_evaluated(sqlite_store: Store, ledger: Ledger) -> None:
    observe(sqlite_store, "a", met=0, missed=3)
    client = credits_app(sqlite_store, ledger)
    response = send(client, SLA_EVALUATE, {"period": "2026-11"})
    assert response.status_code == 400
    assert "not over yet" in response.get_json()["error"]["message"]
    assert ledger.balance("a")["granted"] == 1_000_000


def test_bad_periods_are_refused(sqlite_store: Store, ledger: Ledger) -> None:
    client = credits_app(sqlite_store, ledger)
    for bad in ("2026-13", "2026-1", "november", 202611):
        assert send(client, SLA_EVALUATE, {"period": bad}).status_code == 400
