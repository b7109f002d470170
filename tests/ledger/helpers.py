"""Shared pieces of the ledger tests: a controllable clock and event builders."""

from __future__ import annotations

import itertools
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from functions.auth.senders import Senders
from functions.cloudevent import make_event, to_binary, to_structured
from functions.config import Settings
from functions.store import Store
from ledger_fn.app import create_app
from ledger_fn.ledger import Ledger
from tests.clock import Clock
from tests.trust import CapabilityKeys, TestIssuer

AUDIENCE = "serving.knative.dev/service/tollgate/ledger"
SENDER = "tester"  # the ServiceAccount the tests send events as


def senders(issuer: TestIssuer) -> Senders:
    """The ledger's check, allowing the tests' sender any event."""
    return issuer.senders(AUDIENCE, {SENDER: ()})


def ledger_function(
    ledger: Ledger, issuer: TestIssuer, keys: CapabilityKeys | None = None
) -> Flask:
    """The all-in-one ledger function over ``ledger``'s store, taking the tests' sender's events
    and checking capabilities with ``keys``."""
    return create_app(
        "ledger",
        senders=senders(issuer),
        capability_keys=keys.verify if keys else None,
        settings=Settings(store_url="unused", admin_token="admin", sink=None, port=0),
        store=ledger.store,
        ledger=ledger,
    )


def signed(app: Flask, issuer: TestIssuer) -> FlaskClient:
    """A test client whose every request carries the tests' sender's token."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {issuer.token(SENDER, AUDIENCE)}"
    return client


_ids = itertools.count(1)


def send(
    client: FlaskClient,
    type: str,
    data: dict[str, Any],
    *,
    id: str | None = None,
    source: str = "/tests",
    structured: bool = False,
) -> Any:
    """POST a CloudEvent to a function app; returns the Flask test response."""
    event = make_event(type, source, data, id=id or f"evt-{next(_ids)}")
    message = to_structured(event) if structured else to_binary(event)
    return client.post("/", headers=message.headers, data=message.body)


def funded(store: Store, clock: Clock, account_id: str = "acme", amount: int = 10_000) -> Ledger:
    ledger = Ledger(store, clock=clock)
    ledger.open_account(account_id)
    ledger.execute(account_id, "grant", {"amount": amount})
    return ledger


def invariant(ledger: Ledger, account_id: str) -> dict[str, Any]:
    b = ledger.balance(account_id)
    assert b["granted"] == b["available"] + b["held"] + b["spent"] + b["expired"], b
    assert min(b["available"], b["held"], b["spent"], b["expired"]) >= 0, b
    return b
