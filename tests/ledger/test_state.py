"""The pure transition function: draw order, restrictions, settle/refund/expiry arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from functions.errors import BadRequest, Conflict, NotFound
from ledger_fn.state import AccountState, Op, apply

T0 = 1_800_000_000


def run(state: AccountState, kind: Any, at: int = T0, **args: Any) -> dict[str, Any]:
    new, result = apply(state, Op(kind=kind, at=at, args=args))
    state.__dict__.update(new.__dict__)
    return result


@pytest.fixture
def acct() -> AccountState:
    state = AccountState(account_id="a1")
    run(state, "open")
    return state


def test_restricted_lots_are_drawn_first_then_soonest_expiry(acct: AccountState) -> None:
    plain = run(acct, "grant", amount=100)["lot_id"]
    late = run(acct, "grant", amount=100, expires_at=T0 + 900)["lot_id"]
    soon = run(acct, "grant", amount=100, expires_at=T0 + 100)["lot_id"]
    edge = run(acct, "grant", amount=50, tiers=["edge"])["lot_id"]
    hold = run(acct, "authorize", amount=220, ttl_seconds=60, tier="edge", model="m")
    allocations = acct.holds[hold["hold_id"]].allocations
    assert allocations == [(edge, 50), (soon, 100), (late, 70)]
    assert acct.lots[plain].remaining == 100


def test_restricted_lot_does_not_buy_other_tiers_or_models(acct: AccountState) -> None:
    run(acct, "grant", amount=100, tiers=["edge"], models=["small"])
    declined = run(acct, "authorize", amount=10, ttl_seconds=60, tier="cloud", model="small")
    assert declined["declined"] and declined["available"] == 0
    ok = run(acct, "authorize", amount=10, ttl_seconds=60, tier="edge", model="small")
    assert ok["amount"] == 10


def test_expired_lot_is_not_spendable(acct: AccountState) -> None:
    run(acct, "grant", amount=100, expires_at=T0 + 10)
    assert run(acct, "authorize", at=T0 + 10, amount=1, ttl_seconds=5)["declined"]


def test_settle_captures_at_most_the_hold_and_releases_the_rest(acct: AccountState) -> None:
    run(acct, "grant", amount=1000)
    hold = run(acct, "authorize", amount=300, ttl_seconds=60)["hold_id"]
    result = run(acct, "settle", hold_id=hold, amount=500)
    assert (result["captured"], result["released"], result["requested"]) == (300, 0, 500)
    assert acct.balances() == {
        "granted": 1000,
        "available": 700,
        "held": 0,
        "spent": 300,
        "expired": 0,
    }


def test_settle_by_usage_prices_with_the_quote_on_the_hold(acct: AccountState) -> None:
    run(acct, "grant", amount=1000)
    quote = {"price_book": "v1", "input_per_million": 2_000_000, "output_per_million": 3_000_000}
    hold = run(acct, "authorize", amount=500, ttl_seconds=60, quote=quote)["hold_id"]
    usage = {"prompt_tokens": 10, "completion_tokens": 7}
    result = run(acct, "settle", hold_id=hold, usage=usage, engine_ms=5)
    assert result["captured"] == 10 * 2 + 7 * 3


def test_a_hold_resolves_once(acct: AccountState) -> None:
    run(acct, "grant", amount=1000)
    hold = run(acct, "authorize", amount=100, ttl_seconds=60)["hold_id"]
    run(acct, "settle", hold_id=hold, amount=40)
    with pytest.raises(Conflict):
        run(acct, "settle", hold_id=hold, amount=40)
    with pytest.raises(Conflict):
        run(acct, "expire_hold", at=T0 + 100, hold_id=hold)
    with pytest.raises(NotFound):
        run(acct, "settle", hold_id="a1:999", amount=1)


def test_refund_voids_an_open_hold_or_returns_a_settled_amount(acct: AccountState) -> None:
    run(acct, "grant", amount=1000)
    open_hold = run(acct, "authorize", amount=100, ttl_seconds=60)["hold_id"]
    assert run(acct, "refund", hold_id=open_hold)["refunded"] == 100
    settled = run(acct, "authorize", amount=100, ttl_seconds=60)["hold_id"]
    run(acct, "settle", hold_id=settled, amount=80)
    assert run(acct, "refund", hold_id=settled, amount=30)["refunded"] == 30
    with pytest.raises(Conflict):
        run(acct, "refund", hold_id=settled, amount=51)
    assert run(acct, "refund", hold_id=settled)["refunded"] == 50
    assert acct.balances() == {
        "granted": 1080,
        "available": 1000,
        "held": 0,
        "spent": 80,
        "expired": 0,
    }


def test_refund_of_open_hold_refuses_a_partial_amount(acct: AccountState) -> None:
    run(acct, "grant", amount=1000)
    hold = run(acct, "authorize", amount=100, ttl_seconds=60)["hold_id"]
    with pytest.raises(BadRequest):
        run(acct, "refund", hold_id=hold, amount=10)
    assert hold in acct.holds


def test_expiry_of_holds_and_lots(acct: AccountState) -> None:
    lot = run(acct, "grant", amount=100, expires_at=T0 + 50)["lot_id"]
    hold = run(acct, "authorize", amount=60, ttl_seconds=100)["hold_id"]
    with pytest.raises(Conflict):
        run(acct, "expire_hold", at=T0 + 99, hold_id=hold)
    assert run(acct, "expire_lot", at=T0 + 60, lot_id=lot)["expired"] == 40
    # The hold's credits go back to a lot that has expired meanwhile: they expire too.
    assert run(acct, "expire_hold", at=T0 + 100, hold_id=hold)["released"] == 0
    assert acct.balances() == {
        "granted": 100,
        "available": 0,
        "held": 0,
        "spent": 0,
        "expired": 100,
    }


def test_grant_in_the_past_is_refused(acct: AccountState) -> None:
    with pytest.raises(BadRequest):
        run(acct, "grant", amount=1, expires_at=T0)
    assert acct.balances()["granted"] == 0
