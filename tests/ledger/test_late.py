"""Settles that arrive after their hold ended: charged from what is there, never free, never
negative, the shortfall journaled and visible; a settle after a void charges nothing."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from events import types
from functions.cloudevent import parse_http
from functions.config import Settings
from functions.errors import Conflict
from functions.store import Store
from ledger_fn.app import create_app
from ledger_fn.ledger import Ledger
from tests.clock import Clock
from tests.ledger.helpers import funded, invariant, send, senders, signed
from tests.trust import CapabilityKeys, nobody, shared_issuer

QUOTE = {"price_book": "t1", "input_per_million": 1_000_000, "output_per_million": 2_000_000}


def hold(ledger: Ledger, amount: int, **extra: Any) -> str:
    args = {"amount": amount, "ttl_seconds": 60, "quote": QUOTE, **extra}
    hold_id: str = ledger.execute("acme", "authorize", args)["hold_id"]
    return hold_id


def expire(ledger: Ledger, clock: Clock) -> None:
    clock.advance(61)
    ledger.sweep()


@pytest.fixture
def ledger(real_store: Store, clock: Clock) -> Ledger:
    return funded(real_store, clock, amount=1000)


def test_a_settle_after_expiry_charges_what_was_used(ledger: Ledger, clock: Clock) -> None:
    h = hold(ledger, 300)
    expire(ledger, clock)
    assert invariant(ledger, "acme")["available"] == 1000  # the hold's credits came back
    usage = {"prompt_tokens": 40, "completion_tokens": 30}  # 40 + 60 = 100 credits
    r = ledger.execute("acme", "settle", {"hold_id": h, "usage": usage}, key="late")
    assert (r["captured"], r["shortfall"], r["late"]) == (100, 0, "expired")
    b = invariant(ledger, "acme")
    assert (b["spent"], b["available"], b["shortfall"]) == (100, 900, 0)
    # The journal says it per hold (what the tally reads), and a replay gets the same answer.
    entry = ledger.journal("acme", after=0, limit=100)[-1]
    assert entry["result"] == r and entry["op"]["args"]["late"]["resolved"] == "expired"
    assert ledger.execute("acme", "settle", {"hold_id": h, "usage": usage}, key="late") == r


def test_what_is_no_longer_there_is_a_journaled_visible_shortfall(
    ledger: Ledger, clock: Clock
) -> None:
    h = hold(ledger, 300)
    expire(ledger, clock)
    spent = hold(ledger, 950)
    ledger.execute("acme", "settle", {"hold_id": spent, "amount": 950})  # 50 left
    before = REGISTRY.get_sample_value("tollgate_ledger_shortfall_credits_total") or 0
    r = ledger.execute("acme", "settle", {"hold_id": h, "amount": 200})
    assert (r["captured"], r["shortfall"], r["requested"]) == (50, 150, 200)
    b = invariant(ledger, "acme")  # never negative
    assert (b["available"], b["spent"], b["shortfall"]) == (0, 1000, 150)
    after = REGISTRY.get_sample_value("tollgate_ledger_shortfall_credits_total")
    assert after == before + 150
    with pytest.raises(Conflict, match="already settled"):  # once, even under another id
        ledger.execute("acme", "settle", {"hold_id": h, "amount": 200}, key="another")


def test_a_late_settle_is_still_owed_after_the_state_forgot_the_hold(
    real_store: Store, ledger: Ledger, clock: Clock
) -> None:
    """Nothing about the ended hold is kept in the state: a ledger with a cold cache finds how it
    ended and its terms in the journal (through the claim index)."""
    h = hold(ledger, 300)
    expire(ledger, clock)
    for n in range(5):  # the hold's end is no longer the journal's head
        ledger.execute("acme", "grant", {"amount": 1}, key=f"g{n}")
    cold = Ledger(real_store, clock=clock)
    r = cold.execute("acme", "settle", {"hold_id": h, "amount": 120})
    assert (r["captured"], r["late"]) == (120, "expired")


def test_a_late_settle_draws_only_on_lots_the_hold_could_use(ledger: Ledger, clock: Clock) -> None:
    ledger.execute("acme", "grant", {"amount": 500, "tiers": ["edge"]})
    h = hold(ledger, 300, tier="cloud")
    expire(ledger, clock)
    spent = hold(ledger, 1000, tier="cloud")
    ledger.execute("acme", "settle", {"hold_id": spent, "amount": 1000})  # the unrestricted lot
    r = ledger.execute("acme", "settle", {"hold_id": h, "amount": 100})
    assert (r["captured"], r["shortfall"]) == (0, 100)  # the edge credits do not buy cloud
    assert invariant(ledger, "acme")["available"] == 500


def test_a_settle_after_a_void_charges_nothing_and_says_so(ledger: Ledger) -> None:
    h = hold(ledger, 300)
    ledger.execute("acme", "refund", {"hold_id": h})
    r = ledger.execute("acme", "settle", {"hold_id": h, "amount": 80})
    assert (r["captured"], r["waived"], r["late"]) == (0, 80, "voided")
    b = invariant(ledger, "acme")
    assert (b["available"], b["spent"], b["waived"]) == (1000, 0, 80)


def test_a_failure_report_never_undoes_a_capture(ledger: Ledger) -> None:
    h = hold(ledger, 300)
    ledger.execute("acme", "settle", {"hold_id": h, "amount": 100})
    with pytest.raises(Conflict, match="never undoes a capture"):
        ledger.execute("acme", "refund", {"hold_id": h, "void_only": True})
    assert invariant(ledger, "acme")["spent"] == 100


def test_a_late_settle_beyond_the_claims_window_is_refused_clearly(
    real_store: Store, clock: Clock
) -> None:
    ledger = Ledger(real_store, clock=clock, dedupe_s=3600)
    ledger.open_account("acme")
    ledger.execute("acme", "grant", {"amount": 1000})
    h = hold(ledger, 300)
    expire(ledger, clock)
    ledger.execute("acme", "grant", {"amount": 1})
    clock.advance(3601)
    with pytest.raises(Conflict, match="no longer open"):
        ledger.execute("acme", "settle", {"hold_id": h, "amount": 10})
    assert invariant(ledger, "acme")["spent"] == 0


def test_inference_completed_after_the_sweep_over_cloudevents(
    sqlite_store: Store, cap_keys: CapabilityKeys
) -> None:
    clock = Clock()
    ledger = Ledger(sqlite_store, clock=clock)
    ledger.open_account("acme")
    ledger.execute("acme", "grant", {"amount": 1000})
    settings = Settings(store_url="unused", admin_token="admin", sink=None, port=0)
    app = create_app(
        "ledger",
        senders=senders(shared_issuer()),
        capability_keys=cap_keys.verify,
        settings=settings,
        store=sqlite_store,
        ledger=ledger,
    )
    client: FlaskClient = signed(app, shared_issuer())
    admin = create_app(
        "ledger-admin", senders=nobody(), settings=settings, store=sqlite_store, ledger=ledger
    ).test_client()
    h = hold(ledger, 300)
    expire(ledger, clock)
    done = {
        "hold_id": h,
        "account_id": "acme",
        "model": "m",
        "usage": {"prompt_tokens": 40, "completion_tokens": 30},
        "capability": cap_keys.capability(h),
    }
    response = send(client, types.INFERENCE_COMPLETED, done, id="late-1")
    assert response.status_code == 200
    settled = parse_http(dict(response.headers), response.get_data())
    assert settled.type == types.HOLD_SETTLED
    assert (settled.data["captured"], settled.data["late"]) == (100, "expired")
    view = admin.get("/accounts/acme", headers={"Authorization": "Bearer admin"}).get_json()
    assert (view["spent"], view["shortfall"], view["waived"]) == (100, 0, 0)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'tollgate_ledger_late_settles_total{resolved="expired"}' in metrics


def test_racing_late_settles_of_one_hold_charge_once(
    real_store: Store, ledger: Ledger, clock: Clock
) -> None:
    """The infer outbox and the ingress may both report one request: 8 threads settle the same
    expired hold under ids of their own; exactly one charges, the rest are refused."""
    h = hold(ledger, 300)
    expire(ledger, clock)
    captured: list[int] = []
    refused: list[str] = []
    start = threading.Barrier(8)

    def settle(n: int) -> None:
        own = Ledger(real_store, clock=clock)
        start.wait()
        try:
            r = own.execute("acme", "settle", {"hold_id": h, "amount": 100}, key=f"s{n}")
            captured.append(r["captured"])
        except Conflict as exc:
            refused.append(exc.message)

    threads = [threading.Thread(target=settle, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert captured == [100] and len(refused) == 7
    assert invariant(ledger, "acme")["spent"] == 100
    assert Ledger(real_store, clock=clock).verify().ok
