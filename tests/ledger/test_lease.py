"""Credit leases in the ledger: one hold, many captures (one journal record and one claim per
request, never above its bound nor the hold), renewals, returns that wait for the captures
still owed, captures after the lease closed charged like late settles, and the sweep."""

from __future__ import annotations

from typing import Any

import pytest

from functions.errors import BadRequest, Conflict
from functions.store import Store
from ledger_fn import footprint
from ledger_fn.ledger import Ledger
from tests.clock import Clock
from tests.ledger.helpers import funded, invariant

QUOTE = {"price_book": "t1", "input_per_million": 1_000_000, "output_per_million": 2_000_000}
USAGE = {"prompt_tokens": 10, "completion_tokens": 5}  # 10 + 10 = 20 credits


@pytest.fixture
def ledger(real_store: Store, clock: Clock) -> Ledger:
    return funded(real_store, clock, amount=1000)


def lease(ledger: Ledger, amount: int, renew: str | None = None, **extra: Any) -> dict[str, Any]:
    ask = {"min_amount": 50, **({"renew": renew} if renew else {})}
    args = {"amount": amount, "ttl_seconds": 60, "quote": QUOTE, "lease": ask, **extra}
    return ledger.execute("acme", "authorize", args)


def capture(
    ledger: Ledger, hold_id: str, request: str, bound: int = 100, **extra: Any
) -> dict[str, Any]:
    args = {"hold_id": hold_id, "request": request, "bound": bound, "usage": USAGE, **extra}
    return ledger.execute("acme", "capture", args, key=f"meter-{request}-{extra}")


def test_many_captures_against_one_lease_each_its_own_record(ledger: Ledger) -> None:
    opened = lease(ledger, 300)
    h = opened["hold_id"]
    assert (opened["amount"], opened["lease"]) == (300, {"captured": 0, "bounds": 0, "requests": 0})
    for n in range(3):
        r = capture(ledger, h, f"req-{n}")
        assert (r["captured"], r["request"], r["closed"]) == (20, f"req-{n}", False)
    b = invariant(ledger, "acme")
    assert (b["held"], b["spent"], b["available"], b["open_holds"]) == (240, 60, 700, 1)
    records = [e for e in ledger.journal("acme") if e["op"]["kind"] == "capture"]
    assert [e["result"]["request"] for e in records] == ["req-0", "req-1", "req-2"]
    # A second report of a request (infer's and the ingress's, under other event ids) gets
    # the first one's result and charges nothing more.
    again = capture(ledger, h, "req-1", usage={"prompt_tokens": 90, "completion_tokens": 5})
    assert again["captured"] == 20
    assert invariant(ledger, "acme")["spent"] == 60


def test_a_capture_is_at_most_its_bound_and_at_most_the_hold(ledger: Ledger) -> None:
    h = lease(ledger, 100)["hold_id"]
    assert capture(ledger, h, "a", bound=15)["captured"] == 15  # usage says 20: the bound wins
    assert capture(ledger, h, "b", bound=100)["captured"] == 20
    big = capture(ledger, h, "c", bound=100, usage={"prompt_tokens": 200, "completion_tokens": 0})
    # Only 65 left in the hold: never more, and the part over it is journaled as a shortfall.
    assert (big["captured"], big["shortfall"]) == (65, 35)
    b = invariant(ledger, "acme")
    assert (b["held"], b["spent"], b["shortfall"]) == (0, 100, 35)


def test_a_lease_takes_at_most_half_and_declines_below_its_minimum(ledger: Ledger) -> None:
    assert lease(ledger, 5000)["amount"] == 500
    assert lease(ledger, 5000)["amount"] == 250
    assert lease(ledger, 5000)["amount"] == 125
    assert lease(ledger, 5000)["amount"] == 62
    declined = lease(ledger, 5000)
    assert declined["declined"] and "at low balance" in declined["reason"]
    invariant(ledger, "acme")


def test_renewal_tops_up_extends_and_reports_what_was_captured(
    ledger: Ledger, clock: Clock
) -> None:
    h = lease(ledger, 100)["hold_id"]
    capture(ledger, h, "a")
    clock.advance(40)
    renewed = lease(ledger, 100, renew=h)
    assert renewed["hold_id"] == h and renewed["granted"] == 100
    assert renewed["amount"] == 180 and renewed["lease"] == {
        "captured": 20,
        "bounds": 100,
        "requests": 1,
    }
    assert renewed["expires_at"] == int(clock()) + 60
    clock.advance(40)  # past the first TTL, within the renewed one
    assert ledger.sweep()["holds_expired"] == 0
    b = invariant(ledger, "acme")
    assert (b["held"], b["spent"], b["available"]) == (180, 20, 800)
    with pytest.raises(BadRequest, match="not a credit lease"):
        h2 = ledger.execute("acme", "authorize", {"amount": 10, "ttl_seconds": 60})["hold_id"]
        lease(ledger, 10, renew=h2)


def test_a_return_keeps_what_outstanding_requests_may_capture_then_closes(
    ledger: Ledger,
) -> None:
    h = lease(ledger, 400)["hold_id"]
    capture(ledger, h, "a", bound=100)
    # The ingress admitted 3 requests (bounds 100 + 100 + 80); one is counted so far.
    r = ledger.execute(
        "acme", "return_lease", {"hold_id": h, "requests": 3, "bounds": 280, "ttl_seconds": 60}
    )
    assert (r["closed"], r["outstanding"], r["released"]) == (False, 2, 200)
    b = invariant(ledger, "acme")
    assert (b["held"], b["spent"]) == (180, 20)  # 180 = the two outstanding bounds
    with pytest.raises(Conflict, match="returned"):
        lease(ledger, 100, renew=h)
    c = capture(ledger, h, "b", bound=100)
    assert (c["captured"], c["released"], c["closed"]) == (20, 80, False)
    last = ledger.execute(
        "acme", "capture", {"hold_id": h, "request": "c", "bound": 80, "void": True}
    )
    assert (last["captured"], last["closed"]) == (0, True)
    b = invariant(ledger, "acme")
    assert (b["held"], b["spent"], b["available"], b["open_holds"]) == (0, 40, 960, 0)
    # A capture after the lease closed is charged from what the account has (a late settle).
    late = capture(ledger, h, "d", bound=100)
    assert (late["captured"], late["late"], late["shortfall"]) == (20, "returned", 0)
    # ... and the voided request stays void.
    assert capture(ledger, h, "c", bound=80)["captured"] == 0
    assert invariant(ledger, "acme")["spent"] == 60
    assert ledger.verify().ok


def test_a_lease_returned_with_nothing_outstanding_closes_at_once(ledger: Ledger) -> None:
    h = lease(ledger, 400)["hold_id"]
    capture(ledger, h, "a")
    r = ledger.execute(
        "acme", "return_lease", {"hold_id": h, "requests": 1, "bounds": 100, "ttl_seconds": 60}
    )
    assert (r["closed"], r["released"]) == (True, 380)
    b = invariant(ledger, "acme")
    assert (b["held"], b["spent"], b["available"]) == (0, 20, 980)


def test_an_expired_lease_returns_and_late_captures_still_charge(
    ledger: Ledger, clock: Clock
) -> None:
    h = lease(ledger, 400)["hold_id"]
    capture(ledger, h, "a")
    clock.advance(61)
    assert ledger.sweep()["holds_expired"] == 1
    assert invariant(ledger, "acme")["available"] == 980
    late = capture(ledger, h, "b")
    assert (late["captured"], late["late"]) == (20, "expired")
    assert invariant(ledger, "acme")["spent"] == 40
    assert ledger.verify().ok


def test_a_void_after_its_capture_gives_the_capture_back(ledger: Ledger) -> None:
    h = lease(ledger, 400)["hold_id"]
    capture(ledger, h, "a")
    voided = ledger.execute("acme", "capture", {"hold_id": h, "request": "a", "bound": 100})
    assert voided["captured"] == 20  # the first report's result
    back = ledger.execute("acme", "refund_capture", {"hold_id": h, "request": "a", "amount": 20})
    again = ledger.execute("acme", "refund_capture", {"hold_id": h, "request": "a", "amount": 20})
    assert back == again and back["refunded"] == 20  # once, by its reference
    b = invariant(ledger, "acme")
    assert (b["spent"], b["refunded"]) == (20, 20)
    assert b["available"] == 1000 - 380 - 20 + 20


def test_a_lease_is_settled_only_request_by_request(ledger: Ledger) -> None:
    h = lease(ledger, 400)["hold_id"]
    with pytest.raises(BadRequest, match="credit lease"):
        ledger.execute("acme", "settle", {"hold_id": h, "amount": 10})


def test_captures_and_returns_pass_a_full_accounts_budget(real_store: Store, clock: Clock) -> None:
    ledger = Ledger(real_store, clock=clock)
    ledger.open_account("acme")
    ledger.execute("acme", "grant", {"amount": 10**12})
    h = lease(ledger, 10**9)["hold_id"]
    capture(ledger, h, "a")
    # The account is as full as its budget allows: nothing may grow it now...
    size = ledger._load("acme").bytes
    full = Ledger(real_store, clock=clock, budget_bytes=size)
    with pytest.raises(Conflict, match="is full"):
        full.execute("acme", "grant", {"amount": 5})
    # ... but every request of the lease is still captured, and the lease still returns.
    for n in range(20):
        assert capture(full, h, f"r{n}", bound=10**6)["captured"] == 20
    args = {"hold_id": h, "requests": 21, "bounds": 21 * 10**6, "ttl_seconds": 60}
    assert full.execute("acme", "return_lease", args)["closed"]
    assert invariant(full, "acme")["spent"] == 21 * 20


def test_a_closed_lease_is_never_settled_whole(ledger: Ledger) -> None:
    h = lease(ledger, 400)["hold_id"]
    capture(ledger, h, "a")
    ledger.execute(
        "acme", "return_lease", {"hold_id": h, "requests": 1, "bounds": 100, "ttl_seconds": 60}
    )
    # A settle of the whole lease (a per-request capability naming it) takes nothing, however
    # much it asks, before or after the lease closed.
    usage = {"prompt_tokens": 5000, "completion_tokens": 5000}
    with pytest.raises(Conflict, match="credit lease"):
        ledger.execute("acme", "settle", {"hold_id": h, "usage": usage}, key="forged")
    assert invariant(ledger, "acme")["spent"] == 20


def test_a_leases_size_bound_is_kept_exactly_through_captures_and_renewals(
    ledger: Ledger,
) -> None:
    """Captures skip re-sizing the lease (ledger_fn/footprint.py): the kept figure still equals
    the one computed from scratch, a renewal drawing on a second lot included."""

    def kept_exactly() -> None:
        loaded = ledger._load("acme")
        assert loaded.elements == footprint.elements(loaded.state)

    h = lease(ledger, 400)["hold_id"]
    for n in range(3):
        capture(ledger, h, f"req-{n}")
        kept_exactly()
    ledger.execute("acme", "grant", {"amount": 5000})  # a second lot for the renewal to draw on
    renewed = lease(ledger, 2000, renew=h)
    assert len(ledger.state("acme").holds[h].allocations) == 2, renewed
    kept_exactly()
    capture(ledger, h, "req-3")
    kept_exactly()
    returned = {"hold_id": h, "requests": 5, "bounds": 500, "ttl_seconds": 60}
    assert not ledger.execute("acme", "return_lease", returned)["closed"]  # one still owed
    kept_exactly()
    capture(ledger, h, "req-4")
    kept_exactly()
    assert h not in ledger.state("acme").holds
