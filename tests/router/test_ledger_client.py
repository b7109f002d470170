"""The ingress's ledger client speaks the catalogue's models both ways: what it sends is the
command's model, what it accepts back is the reply's model, and anything else is the ledger's
fault (503), never a hold the ingress half-understood."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, request

from events import catalogue, types
from events.ledger import HoldAuthorized, HoldRefund
from events.quote import Quote
from functions.auth.tokens import TokenFile
from functions.cloudevent import Incoming, make_event, parse_http, to_binary
from functions.errors import PaymentRequired, Unavailable
from router_fn.ledger_client import LedgerClient
from tests.http_server import serving

QUOTE = Quote(price_book="t1", input_per_million=5, output_per_million=7)
AUTHORIZED = {
    "hold_id": "acme:4",
    "account_id": "acme",
    "amount": 90,
    "expires_at": "2027-01-15T00:15:00Z",
    "available": 10,
}


class FakeLedger:
    """Records what it is sent and answers the reply it is told to."""

    def __init__(self) -> None:
        self.received: list[Incoming] = []
        self.bearers: list[str] = []
        self.answer: tuple[str, dict[str, Any]] = (types.HOLD_AUTHORIZED, AUTHORIZED)

    def app(self) -> Flask:
        app = Flask("fake-ledger")

        @app.post("/")
        def receive() -> Response:
            self.received.append(parse_http(dict(request.headers), request.get_data()))
            self.bearers.append(request.headers.get("Authorization", ""))
            kind, data = self.answer
            message = to_binary(make_event(kind, "/fake", data, id="r-1"))
            return Response(message.body, status=200, headers=message.headers)

        return app


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeLedger, LedgerClient]]:
    ledger = FakeLedger()
    authorize_token, refund_token = tmp_path / "authorize", tmp_path / "refund"
    authorize_token.write_text("token-for-authorize", encoding="utf-8")
    refund_token.write_text("token-for-refund", encoding="utf-8")
    with serving(ledger.app()) as url, serving(ledger.app()) as refund_url:
        client = LedgerClient(
            url,
            refund_url,
            authorize_token=TokenFile(authorize_token),
            refund_token=TokenFile(refund_token),
        )
        yield ledger, client


def authorize(client: LedgerClient) -> HoldAuthorized:
    return client.authorize(
        "req-1#edge-a", "acme", 90, ttl_seconds=900, tier="edge", model="tiny", quote=QUOTE
    )


def test_authorize_sends_the_command_model_and_parses_the_reply_model(
    fake: tuple[FakeLedger, LedgerClient],
) -> None:
    ledger, client = fake
    hold = authorize(client)
    assert hold == HoldAuthorized.model_validate(AUTHORIZED)
    [sent] = ledger.received
    assert ledger.bearers == ["Bearer token-for-authorize"]  # the ingress's identity for it
    assert (sent.type, sent.id) == (types.HOLD_AUTHORIZE, "req-1#edge-a")
    assert sent.data == {
        "account_id": "acme",
        "amount": 90,
        "ttl_seconds": 900,
        "tier": "edge",
        "model": "tiny",
        # The whole quote, unit and rounding included: they travel with the hold.
        "quote": QUOTE.model_dump(),
    }
    catalogue.parse(sent.type, sent.data)


def test_a_decline_is_402_with_what_is_available(fake: tuple[FakeLedger, LedgerClient]) -> None:
    ledger, client = fake
    ledger.answer = (
        types.HOLD_DECLINED,
        {"account_id": "acme", "amount": 90, "reason": "insufficient credits", "available": 7},
    )
    with pytest.raises(PaymentRequired) as declined:
        authorize(client)
    assert declined.value.details == {"available": 7, "needed": 90}


@pytest.mark.parametrize(
    "answer",
    [
        (types.HOLD_AUTHORIZED, {**AUTHORIZED, "hold_id": None}),
        (types.HOLD_AUTHORIZED, {**AUTHORIZED, "amount": "90"}),
        (types.HOLD_AUTHORIZED, {**AUTHORIZED, "surprise": 1}),
        (types.HOLD_DECLINED, {"account_id": "acme"}),
        (types.HOLD_SETTLED, {}),
    ],
)
def test_a_reply_that_is_not_its_model_is_the_ledgers_fault(
    fake: tuple[FakeLedger, LedgerClient], answer: tuple[str, dict[str, Any]]
) -> None:
    ledger, client = fake
    ledger.answer = answer
    with pytest.raises(Unavailable) as failed:
        authorize(client)
    assert failed.value.status == 503
    assert "the ledger answered" in failed.value.message


def test_a_failed_attempt_is_voided_with_the_catalogues_hold_refund(
    fake: tuple[FakeLedger, LedgerClient],
) -> None:
    ledger, client = fake
    ledger.answer = (
        types.HOLD_REFUNDED,
        {"hold_id": "acme:4", "account_id": "acme", "refunded": 90},
    )
    client.void("acme:4#void", "acme:4")
    [sent] = ledger.received
    assert ledger.bearers == ["Bearer token-for-refund"]
    assert (sent.type, sent.id) == (types.HOLD_REFUND, "acme:4#void")
    refund = catalogue.parse(sent.type, sent.data)
    assert isinstance(refund, HoldRefund)
    assert refund.hold_id == "acme:4" and refund.amount is None  # all of it, open or settled
