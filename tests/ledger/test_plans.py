"""Plans: monthly grants exactly once per account and period; slice bookings grant once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cloudevents.v1.http import CloudEvent
from flask.testing import FlaskClient

from events import types
from events.camara import EVENTS, SubscriptionBinding, from_camara
from events.network import SLICE_BOOKED
from events.sla import period_end
from functions.accounts import bind_slices
from functions.app import create_app as create_function_app
from functions.auth.tokens import TOKEN_DIR_ENV
from functions.config import Settings
from functions.emit import Emitter
from functions.store import Store
from ledger_fn.app import create_app
from ledger_fn.handlers import LedgerHandlers, handlers_for
from ledger_fn.ledger import Ledger
from ledger_fn.plans import PlanGrant, Plans
from ledger_fn.state import MAX_LOTS
from tests import camara_schemas as specs
from tests.clock import Clock
from tests.events import payloads
from tests.infer.conftest import Sink
from tests.ledger.helpers import invariant, send, senders, signed
from tests.ledger.test_events import reply
from tests.trust import TestIssuer, shared_issuer, token_file

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


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Sink]:
    """K_SINK's stand-in, and the projected token the grant function presents to it."""
    token_file(tmp_path / "tokens")
    monkeypatch.setenv(TOKEN_DIR_ENV, str(tmp_path / "tokens"))
    sink = Sink()
    yield sink
    sink.close()


def grant_app(store: Store, ledger: Ledger, sink: Sink) -> FlaskClient:
    """The grant function with K_SINK pointing at ``sink`` (the renewal fans out through it)."""
    settings = Settings(store_url="unused", admin_token=None, sink=sink.url, port=0)
    app = create_app(
        "grant",
        senders=senders(shared_issuer()),
        settings=settings,
        store=store,
        ledger=ledger,
        plans=PLANS,
    )
    return signed(app, shared_issuer())


def deliver(client: FlaskClient, events: list[CloudEvent]) -> list[int]:
    """What the broker does with what the grant function emitted: deliver each, as sent."""
    return [
        send(client, e["type"], e.data, id=e["id"], source=e["source"]).status_code for e in events
    ]


def renew(client: FlaskClient, sink: Sink, data: dict[str, Any], ping: str) -> list[CloudEvent]:
    """Run the renewal command; the events it sent."""
    before = len(sink.events)
    response = send(client, types.PLANS_RENEW, data, id=ping)
    assert response.status_code == 200, response.get_json()
    _, renewed = reply(response)
    sent = renewed["accounts"] + (renewed["next_after"] is not None)
    return sink.wait_for(before + sent)[before:]


def test_monthly_renewal_fans_out_one_event_per_account_and_grants_once(
    sqlite_store: Store, ledger: Ledger, clock: Clock, sink: Sink
) -> None:
    client = grant_app(sqlite_store, ledger, sink)
    first = renew(client, sink, {}, "p1")
    again = renew(client, sink, {}, "p2")  # the schedule fires twice: the same events again
    assert [e["id"] for e in first] == [e["id"] for e in again]
    assert [e.data for e in first] == [
        {"account_id": account, "period": "2026-11"} for account in "abcd"
    ]
    assert set(deliver(client, first + again)) <= {200, 204}
    assert ledger.balance("a")["granted"] == 1000
    assert ledger.balance("b")["granted"] == 300
    assert ledger.balance("c")["granted"] == ledger.balance("d")["granted"] == 0
    lot = ledger.balance("a")["lots"][0]
    assert lot["expires_at"] == period_end("2026-11") and lot["tiers"] == ["edge", "regional"]
    assert lot["origin"] == "plan" and lot["reference"] == "plan:bundle:2026-11"
    assert ledger.balance("b")["lots"][0]["expires_at"] is None  # rolls over
    clock.now = datetime(2026, 12, 1, 0, 5, tzinfo=UTC).timestamp()
    deliver(client, renew(client, sink, {}, "p3"))
    assert ledger.balance("a")["granted"] == 2000
    invariant(ledger, "a")


def test_the_renewal_pages_through_accounts_and_a_rerun_sends_the_same_events(
    sqlite_store: Store, ledger: Ledger, sink: Sink, tmp_path: Path
) -> None:
    for n in range(5):
        ledger.open_account(f"e{n}", {"plan": "bundle"})
    plans = Plans(ledger, PLANS, renewals_per_page=3)
    emitter = Emitter(sink.url, token_file(tmp_path))
    handlers = LedgerHandlers(ledger, plans, emitter, source="/tollgate/grant")
    app = create_function_app(
        "grant",
        senders=senders(shared_issuer()),
        handlers=handlers_for(handlers.routes(), ["grant"]),
    )
    client = signed(app, shared_issuer())
    pages = [renew(client, sink, {}, "ping")]
    while pages[-1][-1]["type"] == types.PLANS_RENEW:  # a page that is not the last continues
        more = pages[-1][-1]
        pages.append(renew(client, sink, more.data, more["id"]))
    assert [len(page) for page in pages] == [4, 4, 3]  # 3 renewals (+ the continuation) a page
    renewals = [e for page in pages for e in page if e["type"] == types.PLANS_RENEW_ACCOUNT]
    assert [e.data["account_id"] for e in renewals] == [*"abcd", *(f"e{n}" for n in range(5))]
    rerun = renew(client, sink, pages[0][-1].data, pages[0][-1]["id"])
    assert [e["id"] for e in rerun] == [e["id"] for e in pages[1]]
    assert set(deliver(client, renewals + rerun)) <= {200, 204}
    assert all(ledger.balance(f"e{n}")["granted"] == 1000 for n in range(5))


def test_one_account_that_cannot_be_renewed_fails_alone(
    sqlite_store: Store, ledger: Ledger, sink: Sink
) -> None:
    ledger.registry.add("half")  # registered, never opened (a crash in its creation)
    ledger.open_account("full", {"plan": "bundle"})
    for n in range(MAX_LOTS):
        ledger.execute("full", "grant", {"amount": 1, "reference": f"r{n}"})
    ledger.open_account("z", {"plan": "bundle"})
    client = grant_app(sqlite_store, ledger, sink)
    events = renew(client, sink, {}, "p1")
    statuses = dict(
        zip((e.data["account_id"] for e in events), deliver(client, events), strict=True)
    )
    assert statuses == {"a": 200, "b": 200, "c": 204, "d": 204, "half": 204, "full": 409, "z": 200}
    assert ledger.balance("z")["granted"] == ledger.balance("a")["granted"] == 1000


def test_a_renewal_redelivered_after_a_crash_grants_once(ledger: Ledger) -> None:
    """No in-progress record outlives a crash: the grant itself dedupes on its reference, so a
    redelivery (under any event id) after the grant committed gets the first grant."""
    plans = Plans(ledger, PLANS)
    first = plans.grant_period("a", "2026-11", key="/tollgate/grant#renew:2026-11:a")
    # The process died before answering; the broker delivers again later, a re-run of the
    # schedule under another event id as well.
    assert plans.grant_period("a", "2026-11", key="/tollgate/grant#renew:2026-11:a") == first
    assert plans.grant_period("a", "2026-11", key="/other#x") == first
    assert ledger.balance("a")["granted"] == 1000


def test_the_renewal_needs_a_sink(client: FlaskClient, ledger: Ledger) -> None:
    response = send(client, types.PLANS_RENEW, {})
    assert response.status_code == 503
    assert "K_SINK" in response.get_json()["error"]["message"]


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
