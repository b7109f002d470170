"""Top-ups bought on the phone bill, end to end over real HTTP: the ledger (admin API and grant
function) as CAMARA Carrier Billing consumer, a CAMARA-conformant operator (every request,
answer and notification checked against the documents), and the ingress sink that publishes
the operator's notifications as CloudEvents to the ledger."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from events.adapter import Mapped
from functions.app import create_app as create_function_app
from functions.auth.tokens import TokenFile
from functions.config import Settings
from functions.emit import Emitter
from functions.idempotency import Idempotency
from functions.store import Store
from infra.cli import main as cli
from ledger_fn.app import create_app as ledger_app
from ledger_fn.carrier_client import CarrierUnreachable
from ledger_fn.ledger import Ledger
from ledger_fn.plans import PlanGrant, Plans
from ledger_fn.topups import CarrierBilling, TopUps
from router_fn.payment_events import payment_events_blueprint
from tests.clock import Clock
from tests.http_server import serving
from tests.ledger.camara_operator import TOKEN, Behaviour, Operator
from tests.ledger.helpers import AUDIENCE, SENDER, invariant, senders
from tests.trust import TestIssuer

ADMIN = "admin-s3cret"
KEY = b"sink-signing-key-for-tests-0123456789"
PHONE = "+33612345678"
PLANS = {"payg": PlanGrant("payg", "payPerInference", 0, top_ups=(1_000_000, 10_000_000))}


@dataclass
class Platform:
    ledger_url: str  # the admin API (ledger-admin)
    ingress_url: str
    operator: Operator
    ledger: Ledger
    clock: Clock
    topups: TopUps

    def admin(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(
            method,
            f"{self.ledger_url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
        )

    def buy(self, credits: int = 10_000_000) -> dict[str, Any]:
        response = self.admin(
            "POST", "/accounts/dev/topups", {"phone_number": PHONE, "credits": credits}
        )
        assert response.status_code in (201, 202), response.text
        body: dict[str, Any] = response.json()
        return body

    def topup(self, topup_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.admin("GET", f"/accounts/dev/topups/{topup_id}").json()
        return body

    def poll(self) -> dict[str, Any]:
        self.clock.advance(120)
        return self.topups.poll()


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def platform(sqlite_store: Store, issuer: TestIssuer, tmp_path: Path) -> Iterator[Platform]:
    clock = Clock(time.time())
    operator = Operator()
    operator.warm_up()  # build the validators now, not inside the client's timeout
    ledger = Ledger(sqlite_store, clock=clock)
    ledger.open_account("dev", {"plan": "payg"})
    with serving(operator.app()) as operator_url:
        config = CarrierBilling(
            api_root=f"{operator_url}/carrier-billing/v0",
            refund_api_root=f"{operator_url}/carrier-billing-refund/v0",
            token=TOKEN,
            sink_key=KEY,
            notify_url="",  # set below, once the ingress listens
            currency="EUR",
            decimals=2,
            credits_per_unit=1_000_000,  # 1 credit = 1 micro-euro
            merchant_identifier="tollgate-demo",
            timeout_s=1,
        )
        holder: dict[str, TopUps] = {}
        settings = Settings(store_url="unused", admin_token=ADMIN, sink=None, port=0)

        def apps_with(notify_url: str) -> tuple[Any, Any]:
            """The event functions and the admin API, sharing one top-up service."""
            topups = TopUps(
                ledger,
                Plans(ledger, PLANS, clock=clock),
                replace(config, notify_url=notify_url),
                clock=clock,
            )
            holder["topups"] = topups
            events, admin = (
                ledger_app(
                    function,
                    senders=senders(issuer),
                    settings=settings,
                    store=sqlite_store,
                    ledger=ledger,
                    plans=PLANS,
                    topups=topups,
                )
                for function in ("ledger", "ledger-admin")
            )
            return events, admin

        ingress, set_sink = _ingress(sqlite_store, issuer, tmp_path)
        with serving(ingress, tls=True) as ingress_url:
            events, admin = apps_with(ingress_url)
            with serving(events) as ledger_url, serving(admin) as admin_url:
                set_sink(ledger_url)
                topups = holder["topups"]
                yield Platform(admin_url, ingress_url, operator, ledger, clock, topups)
    assert operator.violations == [], "Tollgate or the test operator broke the CAMARA documents"
    invariant(ledger, "dev")


def _ingress(store: Store, issuer: TestIssuer, tmp_path: Path) -> tuple[Any, Callable[[str], None]]:
    """The ingress's carrier-billing sinks publishing to the ledger as the broker would (with
    the tests' sender's token, as the broker delivers with its trigger's)."""
    token = tmp_path / "ingress-token"
    token.write_text(issuer.token(SENDER, AUDIENCE), encoding="utf-8")
    emitter = Emitter(None, TokenFile(token))

    def publish(events: list[Mapped], key: str) -> None:
        for index, event in enumerate(events):
            emitter.emit(
                event.type,
                "/tollgate/carrier-billing",
                event.data,
                id=f"{key}#{index}",
                subject=event.subject,
            )

    def set_sink(url: str) -> None:
        emitter.sink = url

    sinks = payment_events_blueprint(publish, sink_key=KEY, idempotency=Idempotency(store))
    ingress = create_function_app("ingress", senders=senders(issuer), blueprints=[sinks])
    return ingress, set_sink


def granted(platform: Platform) -> int:
    return int(platform.ledger.balance("dev")["granted"])


# -- buying ---------------------------------------------------------------------------------


def test_a_confirmed_payment_grants_the_top_up_once_by_notification(platform: Platform) -> None:
    topup = platform.buy(10_000_000)
    assert (topup["status"], topup["amount"], topup["currency"]) == ("reserved", "10.00", "EUR")
    [(_, _, prepared)] = [r for r in platform.operator.requests if r[0] == "prepare"]
    charge = prepared["amountTransaction"]["paymentAmount"]["chargingInformation"]
    assert charge["amount"] == Decimal("10.00") and charge["currency"] == "EUR"
    assert prepared["amountTransaction"]["phoneNumber"] == PHONE
    assert (
        prepared["sink"] == f"{platform.ingress_url}/events/carrier-billing/dev/{topup['topup_id']}"
    )
    assert granted(platform) == 0  # reserved is not paid

    confirmed = platform.admin("POST", f"/accounts/dev/topups/{topup['topup_id']}/confirm")
    assert confirmed.status_code in (201, 202), confirmed.text
    wait_until(lambda: granted(platform) == 10_000_000, "the grant")
    after = platform.topup(topup["topup_id"])
    assert after["status"] == "succeeded" and after["lot_id"]
    assert platform.operator.notified == [
        ("org.camaraproject.carrier-billing.v0.payment-completed", 204)
    ]
    [lot] = platform.ledger.balance("dev")["lots"]
    assert (lot["origin"], lot["reference"]) == ("top-up", topup["topup_id"])
    platform.poll()  # nothing left to ask
    assert granted(platform) == 10_000_000


def test_a_duplicate_notification_grants_once(platform: Platform) -> None:
    platform.operator.behaviour = Behaviour(notify_twice=True)
    topup = platform.buy()
    platform.admin("POST", f"/accounts/dev/topups/{topup['topup_id']}/confirm")
    wait_until(lambda: len(platform.operator.notified) == 2, "both deliveries")
    assert [status for _, status in platform.operator.notified] == [204, 204]
    time.sleep(0.3)
    assert granted(platform) == 10_000_000


def test_a_notification_with_a_wrong_or_foreign_credential_is_refused_and_grants_nothing(
    platform: Platform,
) -> None:
    platform.operator.behaviour = Behaviour(notify=False)
    first, second = platform.buy(), platform.buy(1_000_000)
    platform.admin("POST", f"/accounts/dev/topups/{first['topup_id']}/confirm")
    _, token = platform.operator.sinks[first["payment_id"]]
    event = {
        "id": "forged-1",
        "source": "https://attacker.example",
        "type": "org.camaraproject.carrier-billing.v0.payment-completed",
        "specversion": "1.0",
        "time": "2026-11-28T12:00:00Z",
        "data": {
            "paymentId": first["payment_id"],
            "status": "succeeded",
            "description": "paid",
            "paymentDate": "2026-11-28T12:00:00Z",
        },
    }
    url = f"{platform.ingress_url}/events/carrier-billing/dev/{first['topup_id']}"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {token}x"}):
        answer = requests.post(url, json=event, headers=headers, timeout=10, verify=False)
        assert answer.status_code == 401
    # The first top-up's credential does not open the second one's sink.
    other = f"{platform.ingress_url}/events/carrier-billing/dev/{second['topup_id']}"
    stolen = requests.post(
        other, json=event, headers={"Authorization": f"Bearer {token}"}, timeout=10, verify=False
    )
    assert stolen.status_code == 401
    assert granted(platform) == 0
    assert platform.topup(first["topup_id"])["status"] == "confirming"


def test_an_unanswered_confirmation_is_polled_and_granted_once(platform: Platform) -> None:
    # The operator charges the line but answers after Tollgate's timeout and notifies nobody.
    platform.operator.behaviour = Behaviour(notify=False, answer_delay_s=1.5)
    topup = platform.buy()
    confirmed = platform.admin("POST", f"/accounts/dev/topups/{topup['topup_id']}/confirm")
    assert confirmed.status_code == 202 and confirmed.json()["status"] == "confirming"
    assert granted(platform) == 0
    assert platform.poll() == {"checked": 1, "granted": 1, "settled": 1}
    assert granted(platform) == 10_000_000
    assert platform.poll() == {"checked": 0, "granted": 0, "settled": 0}
    # A notification that arrives after all changes nothing.
    platform.operator.notify_payment(
        topup["payment_id"], "completed", {"paymentDate": "2026-11-28T12:00:00Z"}
    )
    assert granted(platform) == 10_000_000


def test_an_unanswered_preparation_is_found_by_its_reference(
    platform: Platform, sqlite_store: Store
) -> None:
    platform.operator.behaviour = Behaviour(notify=False)
    real = platform.topups.client.prepare

    def lost_answer(**kwargs: Any) -> dict[str, Any]:
        real(**kwargs)  # the operator creates it; the answer never comes back
        raise CarrierUnreachable("read timed out")

    platform.topups.client.prepare = lost_answer  # type: ignore[method-assign]
    topup = platform.buy()
    assert topup["status"] == "preparing" and topup["payment_id"] is None
    platform.poll()
    found = platform.topup(topup["topup_id"])
    assert found["status"] == "reserved" and found["payment_id"].startswith("pay-")


def test_a_payment_declined_by_the_operator_grants_nothing(platform: Platform) -> None:
    platform.operator.behaviour = Behaviour(
        prepare_error=(403, "CARRIER_BILLING.PAYMENT_DENIED", "Payment denied by business.")
    )
    response = platform.admin(
        "POST", "/accounts/dev/topups", {"phone_number": PHONE, "credits": 1_000_000}
    )
    assert response.status_code == 422
    assert "CARRIER_BILLING.PAYMENT_DENIED" in response.json()["error"]["message"]
    [topup] = platform.admin("GET", "/accounts/dev/topups").json()["topups"]
    assert (
        topup["status"] == "failed" and topup["error"]["code"] == "CARRIER_BILLING.PAYMENT_DENIED"
    )
    assert granted(platform) == 0


def test_a_confirmation_denied_later_grants_nothing(platform: Platform) -> None:
    platform.operator.behaviour = Behaviour(confirm_outcome="denied")
    topup = platform.buy()
    platform.admin("POST", f"/accounts/dev/topups/{topup['topup_id']}/confirm")
    wait_until(lambda: platform.topup(topup["topup_id"])["status"] == "denied", "the denial")
    platform.poll()
    assert granted(platform) == 0


def test_a_cancelled_payment_grants_nothing_and_cannot_be_confirmed(platform: Platform) -> None:
    topup = platform.buy()
    cancelled = platform.admin("POST", f"/accounts/dev/topups/{topup['topup_id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    again = platform.admin("POST", f"/accounts/dev/topups/{topup['topup_id']}/confirm")
    assert again.status_code == 409
    wait_until(lambda: len(platform.operator.notified) == 1, "the cancel notification")
    assert granted(platform) == 0


def test_a_code_validates_a_payment_pending_validation(platform: Platform) -> None:
    platform.operator.behaviour = Behaviour(prepare_status="pending_validation")
    topup = platform.buy()
    assert topup["validation"] == {"action": "validate", "authorizationId": "auth-1"}
    path = f"/accounts/dev/topups/{topup['topup_id']}/validate"
    wrong = platform.admin("POST", path, {"code": "000000"})
    assert wrong.status_code == 422 and "CARRIER_BILLING.INVALID_CODE" in wrong.text
    assert platform.admin("POST", path, {"code": "352673"}).json()["status"] == "reserved"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"phone_number": PHONE, "credits": 5}, 400, "not a top-up of account dev's plan"),
        ({"phone_number": "0612345678", "credits": 1_000_000}, 400, "phone_number"),
        ({"phone_number": PHONE, "credits": 1.5}, 400, "credits"),
    ],
)
def test_bad_top_ups_are_refused_and_nothing_is_asked(
    platform: Platform, body: dict[str, Any], status: int, reason: str
) -> None:
    response = platform.admin("POST", "/accounts/dev/topups", body)
    assert response.status_code == status and reason in response.text
    assert platform.operator.requests == []


# -- refunds --------------------------------------------------------------------------------


def _paid(platform: Platform, credits: int = 10_000_000) -> dict[str, Any]:
    topup = platform.buy(credits)
    platform.admin("POST", f"/accounts/dev/topups/{topup['topup_id']}/confirm")
    wait_until(lambda: granted(platform) == credits, "the grant")
    return platform.topup(topup["topup_id"])


def _spend(platform: Platform, credits: int) -> None:
    hold = platform.ledger.execute("dev", "authorize", {"amount": credits, "ttl_seconds": 60})
    platform.ledger.execute("dev", "settle", {"hold_id": hold["hold_id"], "amount": credits})


def test_refunding_takes_back_exactly_the_unspent_credits(platform: Platform) -> None:
    topup = _paid(platform)
    _spend(platform, 2_345_678)
    response = platform.admin("POST", f"/accounts/dev/topups/{topup['topup_id']}/refunds", {})
    assert response.status_code == 201, response.text
    [refund] = response.json()["refunds"]
    # 7,654,322 unspent; refunds are whole cents (10,000 credits): 7.65 EUR for 7,650,000.
    assert (refund["credits"], refund["amount"], refund["status"]) == (
        7_650_000,
        "7.65",
        "succeeded",
    )
    [(_, _, asked)] = [r for r in platform.operator.requests if r[0] == "refund"]
    assert asked["type"] == "partial"
    assert asked["amountTransaction"]["refundAmount"]["chargingInformation"]["amount"] == Decimal(
        "7.65"
    )
    b = invariant(platform.ledger, "dev")
    assert (b["granted"], b["available"], b["spent"], b["revoked"]) == (
        2_350_000,
        4_322,
        2_345_678,
        7_650_000,
    )
    again = platform.admin("POST", f"/accounts/dev/topups/{topup['topup_id']}/refunds", {})
    assert again.status_code == 409  # under a cent left


def test_a_whole_unspent_top_up_is_refunded_in_total(platform: Platform) -> None:
    topup = _paid(platform, 1_000_000)
    response = platform.admin(
        "POST", f"/accounts/dev/topups/{topup['topup_id']}/refunds", {"credits": 1_000_000}
    )
    assert response.status_code == 201
    [(_, _, asked)] = [r for r in platform.operator.requests if r[0] == "refund"]
    assert asked["type"] == "total" and asked["amountTransaction"]["refundAmount"] == {}
    assert invariant(platform.ledger, "dev")["available"] == 0


def test_a_refund_denied_later_restores_the_credits_once(platform: Platform) -> None:
    platform.operator.behaviour = Behaviour(refund_status="processing", refund_outcome="denied")
    topup = _paid(platform)
    response = platform.admin(
        "POST", f"/accounts/dev/topups/{topup['topup_id']}/refunds", {"credits": 5_000_000}
    )
    assert response.status_code == 202
    assert invariant(platform.ledger, "dev")["available"] == 5_000_000  # taken out meanwhile
    wait_until(
        lambda: platform.topup(topup["topup_id"])["refunds"][0]["status"] == "denied", "the denial"
    )
    b = invariant(platform.ledger, "dev")
    assert (b["available"], b["revoked"], b["granted"]) == (10_000_000, 0, 10_000_000)
    platform.poll()
    assert invariant(platform.ledger, "dev")["available"] == 10_000_000


def test_a_processing_refund_without_notification_is_polled(platform: Platform) -> None:
    platform.operator.behaviour = Behaviour(refund_status="processing", refund_outcome="succeeded")
    topup = _paid(platform)
    platform.operator.behaviour.notify = False
    platform.admin(
        "POST", f"/accounts/dev/topups/{topup['topup_id']}/refunds", {"credits": 5_000_000}
    )
    platform.operator.refunds[topup["payment_id"]][0]["refundStatus"] = "succeeded"
    platform.poll()
    assert platform.topup(topup["topup_id"])["refunds"][0]["status"] == "succeeded"
    assert invariant(platform.ledger, "dev")["revoked"] == 5_000_000


def test_refunds_never_take_more_than_the_unspent_remainder(platform: Platform) -> None:
    topup = _paid(platform, 1_000_000)
    _spend(platform, 600_000)
    path = f"/accounts/dev/topups/{topup['topup_id']}/refunds"
    assert platform.admin("POST", path, {"credits": 500_000}).status_code == 409
    assert platform.admin("POST", path, {"credits": 1_234}).status_code == 400  # not whole cents
    assert [r for r in platform.operator.requests if r[0] == "refund"] == []
    assert invariant(platform.ledger, "dev")["available"] == 400_000


def test_the_cli_buys_and_confirms_through_the_admin_api(platform: Platform) -> None:
    env = {"TOLLGATE_ADMIN_URL": platform.ledger_url, "TOLLGATE_ADMIN_TOKEN": ADMIN}
    runner = CliRunner(env=env)
    bought = runner.invoke(
        cli, ["ledger", "topup", "buy", "dev", "--phone", PHONE, "--credits", "1000000"]
    )
    assert bought.exit_code == 0, bought.output
    topup_id = json.loads(bought.output)["topup_id"]
    confirmed = runner.invoke(cli, ["ledger", "topup", "confirm", "dev", topup_id])
    assert confirmed.exit_code == 0, confirmed.output
    wait_until(lambda: granted(platform) == 1_000_000, "the grant")
    refused = runner.invoke(
        cli, ["ledger", "topup", "buy", "dev", "--phone", PHONE, "--credits", "7"]
    )
    assert refused.exit_code == 1 and "not a top-up of account dev's plan" in refused.output
