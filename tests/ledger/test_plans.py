"""Plans: monthly grants exactly once per account and period; slice bookings grant once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from events import types
from events.camara import EVENTS, SubscriptionBinding, from_camara
from events.network import SLICE_BOOKED
from functions.accounts import bind_slices
from functions.config import Settings
from functions.store import Store
from ledger_fn.app import create_app
from ledger_fn.ledger import Ledger
from ledger_fn.plans import PlanGrant, Plans, period_end
from tests import camara_schemas as specs
from tests.clock import Clock
from tests.events import payloads
from tests.ledger.helpers import invariant, send, senders, signed
from tests.trust import TestIssuer

NOV_15 = datetime(2026, 11, 15, 12, tzinfo=UTC).timestamp()
PLANS = {
    "bundle": PlanGrant("bundle", "monthlyBundle", 1000, tiers=("edge", "regional")),
    "dev": PlanGrant("dev", "subscription", 300, rollover=True),
    "payg": PlanGrant("payg", "payPerInference", 0),
}


@pytest.fixture
def clock() -> Clock:
    return Clock(NOV_15)


@pytest.fixture
def ledger(sqlite_store: Store, clock: Clock) -> Ledger:
    ledger = Ledger(sqlite_store, clock=clock)
    for account, plan in (("a", "bundle"), ("b", "dev"), ("c", "payg"), ("d", None)):
        ledger.open_account(account, {"plan": plan} if plan else {})
    return ledger


@pytest.fixture
def client(sqlite_store: Store, ledger: Ledger, issuer: TestIssuer) -> FlaskClient:
    settings = Settings(store_url="unused", admin_token=None, sink=None, port=0)
    app = create_app(
        "grant",
        senders=senders(issuer),
        settings=settings,
        store=sqlite_store,
        ledger=ledger,
        plans=PLANS,
    )
    return signed(app, issuer)


def test_monthly_grants_run_once_per_account_and_period(
    client: FlaskClient, ledger: Ledger, clock: Clock
) -> None:
    for ping in ("p1", "p2"):  # the schedule fires twice
        response = send(client, types.PLANS_RENEW, {}, id=ping)
        assert response.status_code == 200
    assert ledger.balance("a")["granted"] == 1000
    assert ledger.balance("b")["granted"] == 300
    assert ledger.balance("c")["granted"] == ledger.balance("d")["granted"] == 0
    lot = ledger.balance("a")["lots"][0]
    assert lot["expires_at"] == period_end("2026-11") and lot["tiers"] == ["edge", "regional"]
    assert lot["origin"] == "plan" and lot["reference"] == "plan:bundle:2026-11"
    assert ledger.balance("b")["lots"][0]["expires_at"] is None  # rolls over
    clock.now = datetime(2026, 12, 1, 0, 5, tzinfo=UTC).timestamp()
    send(client, types.PLANS_RENEW, {}, id="p3")
    assert ledger.balance("a")["granted"] == 2000
    invariant(ledger, "a")


def _booked(event: dict[str, Any]) -> dict[str, Any]:
    """What the ingress publishes for a CAMARA booking notification (the real adapter)."""
    binding = SubscriptionBinding("slice-booking", "network-slice-booking", frozenset(EVENTS), "c")
    [booked] = from_camara(event, subscription=binding)
    return booked.data


def test_a_slice_booking_grants_the_plan_bundle_once_until_the_slice_ends(
    client: FlaskClient, ledger: Ledger, sqlite_store: Store
) -> None:
    bind_slices(sqlite_store, "a", [payloads.SLICE_ID])
    booking = payloads.slice_booking(end="2026-12-31T20:00:00Z")
    for event_id in ("s1", "s2", "s2"):  # announced twice, the second delivered twice
        response = send(client, SLICE_BOOKED, _booked(booking), id=event_id)
        assert response.status_code == 200
    balance = invariant(ledger, "a")
    assert balance["granted"] == 1000
    [lot] = balance["lots"]
    assert lot["reference"] == f"slice:{payloads.SLICE_ID}"
    assert lot["expires_at"] == datetime(2026, 12, 31, 20, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("name", ["SLICE_CREATED_EVENT_CIRCLE", "SLICE_CREATED_EVENT_POLYGON"])
def test_the_documents_slice_bookings_grant_during_the_slice_and_not_after(
    name: str, client: FlaskClient, ledger: Ledger, sqlite_store: Store, clock: Clock
) -> None:
    event = specs.notification_examples("network-slice-booking.yaml")[name]
    bind_slices(sqlite_store, "a", [event["data"]["sliceId"]])
    clock.now = datetime(2024, 6, 1, 13, tzinfo=UTC).timestamp()  # during the booked day
    assert send(client, SLICE_BOOKED, _booked(event), id="during").status_code == 200
    [lot] = ledger.balance("a")["lots"]
    assert (lot["amount"], lot["expires_at"]) == (
        1000,
        datetime(2024, 6, 2, 12, tzinfo=UTC).timestamp(),
    )
    clock.now = datetime(2024, 6, 2, 12, 0, 1, tzinfo=UTC).timestamp()
    ledger.sweep()
    assert invariant(ledger, "a")["expired"] == 1000


def test_a_booking_announced_after_its_slice_ended_grants_nothing(
    client: FlaskClient, ledger: Ledger, sqlite_store: Store
) -> None:
    bind_slices(sqlite_store, "a", [payloads.SLICE_ID])
    over = payloads.slice_booking(start="2026-10-01T00:00:00Z", end="2026-10-31T00:00:00Z")
    assert send(client, SLICE_BOOKED, _booked(over)).status_code == 204
    assert ledger.balance("a")["granted"] == 0


def test_a_slice_without_an_end_gets_the_plans_own_expiry(
    client: FlaskClient, ledger: Ledger, sqlite_store: Store
) -> None:
    bind_slices(sqlite_store, "a", [payloads.SLICE_ID])
    assert send(client, SLICE_BOOKED, _booked(payloads.slice_booking(end=None))).status_code == 200
    [lot] = ledger.balance("a")["lots"]
    assert lot["expires_at"] == period_end("2026-11")


def test_a_booking_for_an_unbound_slice_changes_nothing(
    client: FlaskClient, ledger: Ledger
) -> None:
    data = {"slice_id": "nobody", "source_event": "x"}
    assert send(client, SLICE_BOOKED, data).status_code == 204
    assert all(ledger.balance(a)["granted"] == 0 for a in "abcd")


def test_a_late_schedule_does_not_grant_a_finished_period(ledger: Ledger, clock: Clock) -> None:
    plans = Plans(ledger, PLANS, clock=clock)
    assert plans.grant_period("a", "2026-10") is None
    assert ledger.balance("a")["granted"] == 0
    assert plans.next_grant("a") == {
        "plan": "bundle",
        "next_grant": {"at": period_end("2026-11"), "credits": 1000},
    }
