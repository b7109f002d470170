"""The ledger functions over CloudEvents: both HTTP modes, replies, redeliveries, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from events import catalogue, types
from functions.auth.tokens import SINK, TOKEN_DIR_ENV
from functions.cloudevent import parse_http
from functions.config import Settings
from functions.store import Store
from ledger_fn.app import create_app
from ledger_fn.ledger import Ledger
from tests.clock import Clock
from tests.infer.conftest import Sink
from tests.ledger.helpers import funded, invariant, ledger_function, send, senders, signed
from tests.trust import CapabilityKeys, TestIssuer, capability_keys


@pytest.fixture
def ledger(sqlite_store: Store) -> Ledger:
    return funded(sqlite_store, Clock(), "acme", 10_000)


@pytest.fixture
def client(
    sqlite_store: Store, ledger: Ledger, issuer: TestIssuer, cap_keys: CapabilityKeys
) -> FlaskClient:
    return signed(ledger_function(ledger, issuer, cap_keys), issuer)


def reply(response: Any) -> tuple[str, dict[str, Any]]:
    assert response.status_code == 200, response.get_json()
    event = parse_http(dict(response.headers), response.get_data())
    return event.type, event.data


def authorize(client: FlaskClient, amount: int = 500, **kw: Any) -> str:
    kind, data = reply(
        send(client, types.HOLD_AUTHORIZE, {"account_id": "acme", "amount": amount}, **kw)
    )
    assert kind == types.HOLD_AUTHORIZED
    hold_id: str = data["hold_id"]
    return hold_id


@pytest.mark.parametrize("structured", [False, True])
def test_authorize_settle_in_each_mode(
    client: FlaskClient, ledger: Ledger, structured: bool
) -> None:
    hold = authorize(client, 500, structured=structured)
    kind, data = reply(
        send(client, types.HOLD_SETTLE, {"hold_id": hold, "amount": 120}, structured=structured)
    )
    assert kind == types.HOLD_SETTLED
    assert (data["captured"], data["released"]) == (120, 380)
    assert invariant(ledger, "acme")["spent"] == 120


def test_decline_is_a_reply_not_an_error(client: FlaskClient, ledger: Ledger) -> None:
    kind, data = reply(send(client, types.HOLD_AUTHORIZE, {"account_id": "acme", "amount": 10_001}))
    assert kind == types.HOLD_DECLINED
    assert "insufficient credits" in data["reason"] and data["available"] == 10_000
    assert invariant(ledger, "acme")["held"] == 0


@pytest.mark.parametrize("structured", [False, True])
def test_every_command_delivered_twice_has_one_effect(
    client: FlaskClient, ledger: Ledger, structured: bool
) -> None:
    commands = [
        (types.CREDITS_GRANT, {"account_id": "acme", "amount": 5}),
        (types.HOLD_AUTHORIZE, {"account_id": "acme", "amount": 50}),
    ]
    for event_type, data in commands:
        first = send(client, event_type, data, id="dup-" + event_type, structured=structured)
        again = send(client, event_type, data, id="dup-" + event_type, structured=not structured)
        assert reply(first) == reply(again)
        assert first.headers["ce-id"] == again.headers["ce-id"]
    hold = reply(
        send(
            client,
            types.HOLD_AUTHORIZE,
            {"account_id": "acme", "amount": 50},
            id="dup-" + types.HOLD_AUTHORIZE,
        )
    )[1]["hold_id"]
    for event_type, data in [
        (types.HOLD_SETTLE, {"hold_id": hold, "amount": 7}),
        (types.HOLD_REFUND, {"hold_id": hold, "amount": 7}),
    ]:
        first = send(client, event_type, data, id="dup-" + event_type)
        again = send(client, event_type, data, id="dup-" + event_type, structured=True)
        assert reply(first) == reply(again)
    b = invariant(ledger, "acme")
    assert (b["granted"], b["spent"], b["held"]) == (10_012, 7, 0)


def test_redelivery_with_different_data_is_refused(client: FlaskClient, ledger: Ledger) -> None:
    send(client, types.CREDITS_GRANT, {"account_id": "acme", "amount": 5}, id="g1")
    response = send(client, types.CREDITS_GRANT, {"account_id": "acme", "amount": 6}, id="g1")
    assert response.status_code == 409
    assert "different data" in response.get_json()["error"]["message"]
    assert ledger.balance("acme")["granted"] == 10_005


def test_inference_completed_settles_by_quote_and_duplicates_charge_once(
    client: FlaskClient, ledger: Ledger, cap_keys: CapabilityKeys
) -> None:
    quote = {
        "price_book": "2026-11",
        "input_per_million": 1_000_000,
        "output_per_million": 2_000_000,
    }
    _, data = reply(
        send(client, types.HOLD_AUTHORIZE, {"account_id": "acme", "amount": 300, "quote": quote})
    )
    completed = {
        "hold_id": data["hold_id"],
        "account_id": "acme",
        "model": "smollm2",
        "tier": "edge",
        "usage": {"prompt_tokens": 20, "completion_tokens": 30},
        "capability": cap_keys.capability(data["hold_id"]),
    }
    kind, settled = reply(send(client, types.INFERENCE_COMPLETED, completed, id="c1"))
    assert kind == types.HOLD_SETTLED and settled["captured"] == 80
    assert reply(send(client, types.INFERENCE_COMPLETED, completed, id="c1"))[1] == settled
    # The same fact under another id cannot settle a settled hold again.
    assert send(client, types.INFERENCE_COMPLETED, completed, id="c2").status_code == 409
    assert invariant(ledger, "acme")["spent"] == 80


def test_inference_failed_refunds_the_hold(
    client: FlaskClient, ledger: Ledger, cap_keys: CapabilityKeys
) -> None:
    hold = authorize(client, 400)
    failed = {
        "hold_id": hold,
        "account_id": "acme",
        "model": "m",
        "error": {"type": "engine", "message": "died"},
        "capability": cap_keys.capability(hold),
    }
    kind, data = reply(send(client, types.INFERENCE_FAILED, failed))
    assert kind == types.HOLD_REFUNDED and data["refunded"] == 400
    assert invariant(ledger, "acme")["available"] == 10_000


def test_inference_failed_after_output_charges_what_was_produced_once(
    client: FlaskClient, ledger: Ledger, cap_keys: CapabilityKeys
) -> None:
    quote = {"price_book": "b", "input_per_million": 1_000_000, "output_per_million": 2_000_000}
    _, held = reply(
        send(client, types.HOLD_AUTHORIZE, {"account_id": "acme", "amount": 300, "quote": quote})
    )
    failed = {
        "hold_id": held["hold_id"],
        "account_id": "acme",
        "model": "m",
        "usage": {"prompt_tokens": 20, "completion_tokens": 3},
        "error": {"type": "engine_error", "message": "died mid-stream"},
        "capability": cap_keys.capability(held["hold_id"]),
    }
    kind, settled = reply(send(client, types.INFERENCE_FAILED, failed, id="f1"))
    assert kind == types.HOLD_SETTLED and settled["captured"] == 26
    # The ingress's metering of the same stream, arriving second, is refused: one capture.
    completed = {k: v for k, v in failed.items() if k != "error"}
    assert send(client, types.INFERENCE_COMPLETED, completed, id="relayed").status_code == 409
    b = invariant(ledger, "acme")
    assert (b["spent"], b["held"]) == (26, 0)


def test_a_stand_in_metering_settles_only_a_hold_nothing_settled(
    client: FlaskClient, ledger: Ledger, cap_keys: CapabilityKeys
) -> None:
    """The ingress's stand-in for a stream's metering: answered with nothing once infer's own
    settled the hold; when it comes first it settles, and infer's later one is refused."""
    quote = {"price_book": "b", "input_per_million": 1_000_000, "output_per_million": 2_000_000}
    spent = []
    for first in ("infer", "stand-in"):
        _, held = reply(
            send(
                client, types.HOLD_AUTHORIZE, {"account_id": "acme", "amount": 300, "quote": quote}
            )
        )
        own = {
            "hold_id": held["hold_id"],
            "account_id": "acme",
            "model": "m",
            "usage": {"prompt_tokens": 20, "completion_tokens": 5},
            "capability": cap_keys.capability(held["hold_id"]),
        }
        stand_in = {**own, "usage": {"prompt_tokens": 20, "completion_tokens": 3}, "stand_in": True}
        entries = len(ledger.journal("acme", limit=500))
        if first == "infer":
            assert reply(send(client, types.INFERENCE_COMPLETED, own))[1]["captured"] == 30
            answer = send(client, types.INFERENCE_COMPLETED, stand_in)
            assert answer.status_code == 204 and not answer.data
        else:
            assert reply(send(client, types.INFERENCE_COMPLETED, stand_in))[1]["captured"] == 26
            assert send(client, types.INFERENCE_COMPLETED, own).status_code == 409
        assert len(ledger.journal("acme", limit=500)) == entries + 1  # one settle, nothing more
        spent.append(invariant(ledger, "acme")["spent"])
    assert spent == [30, 56]


def test_a_voided_hold_charges_nothing_for_a_later_settle(
    client: FlaskClient, ledger: Ledger, cap_keys: CapabilityKeys
) -> None:
    """The ingress voided an abandoned attempt; its infer's event, arriving late, charges nothing
    and journals what it asked as waived (ledger_fn/state.py)."""
    quote = {"price_book": "b", "input_per_million": 1_000_000, "output_per_million": 2_000_000}
    _, held = reply(
        send(client, types.HOLD_AUTHORIZE, {"account_id": "acme", "amount": 400, "quote": quote})
    )
    hold = held["hold_id"]
    assert send(client, types.HOLD_REFUND, {"hold_id": hold}, id="void").status_code == 200
    completed = {
        "hold_id": hold,
        "account_id": "acme",
        "model": "m",
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        "capability": cap_keys.capability(hold),
    }
    kind, settled = reply(send(client, types.INFERENCE_COMPLETED, completed, id="late"))
    assert kind == types.HOLD_SETTLED
    assert (settled["captured"], settled["waived"], settled["late"]) == (0, 3, "voided")
    assert invariant(ledger, "acme")["spent"] == 0


BAD_AMOUNTS = [1.5, 1.0, "100", -5, 0, 2**63, True, None]


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
@pytest.mark.parametrize("event_type", [types.CREDITS_GRANT, types.HOLD_AUTHORIZE])
def test_bad_amounts_are_refused_and_change_nothing(
    client: FlaskClient, ledger: Ledger, event_type: str, amount: Any
) -> None:
    before = ledger.balance("acme")
    response = send(client, event_type, {"account_id": "acme", "amount": amount})
    assert response.status_code == 400
    assert "amount" in response.get_json()["error"]["message"]
    assert ledger.balance("acme") == before


@pytest.mark.parametrize(
    ("event_type", "data", "status"),
    [
        (types.CREDITS_GRANT, {"account_id": "nobody", "amount": 5}, 404),
        (types.HOLD_AUTHORIZE, {"account_id": "nobody", "amount": 5}, 404),
        (types.HOLD_SETTLE, {"hold_id": "acme:9999", "amount": 5}, 404),
        (types.HOLD_SETTLE, {"hold_id": "not-a-hold", "amount": 5}, 400),
        (types.HOLD_REFUND, {"hold_id": "nobody:3"}, 404),
        (types.CREDITS_GRANT, {"account_id": "acme", "amount": 5, "surprise": 1}, 400),
        (types.CREDITS_GRANT, {"account_id": "bad id!", "amount": 5}, 400),
        (
            types.CREDITS_GRANT,
            {"account_id": "acme", "amount": 5, "expires_at": "2020-01-01T00:00:00Z"},
            400,
        ),
        (
            types.CREDITS_GRANT,
            {"account_id": "acme", "amount": 5, "expires_at": "2099-01-01T00:00:00"},
            400,
        ),
        (types.HOLD_AUTHORIZE, {"account_id": "acme", "amount": 5, "ttl_seconds": 0}, 400),
        ("io.tollgate.unknown.v1", {}, 404),
    ],
)
def test_bad_commands_get_a_clear_4xx_and_change_nothing(
    client: FlaskClient, ledger: Ledger, event_type: str, data: dict[str, Any], status: int
) -> None:
    before = ledger.balance("acme")
    response = send(client, event_type, data)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"]["message"]
    assert ledger.balance("acme") == before


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Type": "application/json"}, b'{"amount": 5}'),
        ({"Content-Type": "application/cloudevents+json"}, b"{not json"),
        (
            {
                "ce-specversion": "1.0",
                "ce-type": types.CREDITS_GRANT,
                "ce-source": "/t",
                "ce-id": "x",
                "Content-Type": "application/json",
            },
            b"[1, 2]",
        ),
        (
            {
                "ce-specversion": "1.0",
                "ce-type": types.CREDITS_GRANT,
                "ce-source": "/t",
                "ce-id": "x",
                "Content-Type": "application/json",
            },
            b"{oops",
        ),
    ],
)
def test_malformed_events_are_400(
    client: FlaskClient, ledger: Ledger, headers: dict[str, str], body: bytes
) -> None:
    before = ledger.balance("acme")
    response = client.post("/", headers=headers, data=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["message"]
    assert ledger.balance("acme") == before


def test_each_function_handles_only_its_types(
    sqlite_store: Store, ledger: Ledger, issuer: TestIssuer
) -> None:
    settings = Settings(store_url="unused", admin_token=None, sink=None, port=0)
    app = create_app(
        "settle", senders=senders(issuer), settings=settings, store=sqlite_store, ledger=ledger
    )
    settle = signed(app, issuer)
    response = send(settle, types.HOLD_AUTHORIZE, {"account_id": "acme", "amount": 5})
    assert response.status_code == 404
    assert types.INFERENCE_COMPLETED in response.get_json()["error"]["message"]
    assert settle.get("/accounts").status_code == 404  # no admin API on an event function


def test_sweep_expires_overdue_holds(sqlite_store: Store, issuer: TestIssuer) -> None:
    clock = Clock()
    ledger = funded(sqlite_store, clock, "acme", 1000)
    settings = Settings(store_url="unused", admin_token=None, sink=None, port=0)
    app = create_app(
        "ledger", senders=senders(issuer), settings=settings, store=sqlite_store, ledger=ledger
    )
    client = signed(app, issuer)
    authorize(client, 300)
    clock.advance(301)
    kind, data = reply(send(client, types.HOLDS_SWEEP, {}))
    assert kind == types.HOLDS_SWEPT and data["holds_expired"] == 1
    assert invariant(ledger, "acme")["available"] == 1000


def test_every_reply_and_emitted_fact_is_its_catalogue_model(
    sqlite_store: Store, issuer: TestIssuer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    ledger = funded(sqlite_store, clock, "acme", 1000)
    sink = Sink()
    (tmp_path / SINK).write_text(issuer.token("sweep", "sink"), encoding="utf-8")
    monkeypatch.setenv(TOKEN_DIR_ENV, str(tmp_path))
    settings = Settings(store_url="unused", admin_token=None, sink=sink.url, port=0)
    app = create_app(
        "ledger", senders=senders(issuer), settings=settings, store=sqlite_store, ledger=ledger
    )
    client = signed(app, issuer)
    commands: list[tuple[str, dict[str, Any], str]] = [
        (
            types.CREDITS_GRANT,
            {"account_id": "acme", "amount": 5, "expires_at": "2099-01-01T00:00:00Z"},
            types.CREDITS_GRANTED,
        ),
        (types.HOLD_AUTHORIZE, {"account_id": "acme", "amount": 10**6}, types.HOLD_DECLINED),
        (types.PLANS_RENEW, {}, types.PLANS_RENEWED),
    ]
    replies = [
        (expected, reply(send(client, event_type, data))) for event_type, data, expected in commands
    ]
    settled, refunded = authorize(client, 30), authorize(client, 40)
    replies += [
        (
            types.HOLD_SETTLED,
            reply(send(client, types.HOLD_SETTLE, {"hold_id": settled, "amount": 3})),
        ),
        (types.HOLD_REFUNDED, reply(send(client, types.HOLD_REFUND, {"hold_id": refunded}))),
    ]
    authorize(client, 300)
    clock.advance(301)
    replies.append((types.HOLDS_SWEPT, reply(send(client, types.HOLDS_SWEEP, {}))))
    for expected, (kind, data) in replies:
        assert kind == expected
        assert catalogue.parse(kind, data).model_dump(mode="json") == data
    assert replies[0][1][1]["expires_at"] == "2099-01-01T00:00:00Z"
    emitted = sink.wait_for(2)
    assert [e["type"] for e in emitted] == [types.PLANS_RENEW_ACCOUNT, types.HOLD_EXPIRED]
    for event in emitted:
        assert catalogue.parse(event["type"], event.data).model_dump(mode="json") == event.data
    sink.close()


def test_settle_takes_no_usage(client: FlaskClient, ledger: Ledger) -> None:
    """The operator's settle names the amount; usage is what inference.completed reports."""
    hold = authorize(client, 50)
    usage = {"prompt_tokens": 1, "completion_tokens": 1}
    data = {"hold_id": hold, "amount": 5, "usage": usage}
    response = send(client, types.HOLD_SETTLE, data)
    assert response.status_code == 400
    assert "usage: Extra inputs are not permitted" in response.get_json()["error"]["message"]
    assert ledger.balance("acme")["held"] == 50


def test_health_readiness_metrics(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").get_json()["status"] == "ready"
    send(client, types.CREDITS_GRANT, {"account_id": "acme", "amount": 1})
    metrics = client.get("/metrics").get_data(as_text=True)
    assert (
        'tollgate_events_total{function="ledger",status="2xx",type="io.tollgate.credits.grant.v1"}'
        in metrics
    )


def test_a_knative_ping_runs_the_command_it_names(sqlite_store: Store, issuer: TestIssuer) -> None:
    clock = Clock()
    ledger = funded(sqlite_store, clock, "acme", 1000)
    settings = Settings(store_url="unused", admin_token=None, sink=None, port=0)
    app = create_app(
        "sweep", senders=senders(issuer), settings=settings, store=sqlite_store, ledger=ledger
    )
    ledger.execute("acme", "authorize", {"amount": 100, "ttl_seconds": 10})
    clock.advance(11)
    headers = {
        "ce-specversion": "1.0",
        "ce-type": "dev.knative.sources.ping",
        "ce-source": "/apis/v1/namespaces/tollgate/pingsources/hold-sweep",
        "ce-id": "ping-1",
        "ce-tollgatetype": types.HOLDS_SWEEP,
        "Content-Type": "application/json",
    }
    response = signed(app, issuer).post("/", headers=headers, data=b"{}")
    kind, data = reply(response)
    assert kind == types.HOLDS_SWEPT and data["holds_expired"] == 1


def test_dead_letters_are_kept_once_and_listed(sqlite_store: Store, issuer: TestIssuer) -> None:
    settings = Settings(store_url="unused", admin_token="tok", sink=None, port=0)
    sink = create_app("deadletters", senders=senders(issuer), settings=settings, store=sqlite_store)
    client = signed(sink, issuer)
    event = {"hold_id": "acme:3", "amount": 5}
    for _ in range(2):
        response = send(client, types.HOLD_SETTLE, event, id="lost-1")
        assert response.status_code == 204
    admin = create_app(
        "ledger-admin", senders=senders(issuer), settings=settings, store=sqlite_store
    )
    listed = (
        admin.test_client().get("/deadletters", headers={"Authorization": "Bearer tok"}).get_json()
    )
    assert [(e["type"], e["id"], e["data"]) for e in listed["events"]] == [
        (types.HOLD_SETTLE, "lost-1", event)
    ]


@pytest.mark.parametrize("event_type", [types.INFERENCE_COMPLETED, types.INFERENCE_FAILED])
def test_an_outcome_moves_credits_only_for_the_hold_its_capability_names(
    client: FlaskClient, ledger: Ledger, cap_keys: CapabilityKeys, tmp_path: Path, event_type: str
) -> None:
    quote = {"price_book": "1", "input_per_million": 1, "output_per_million": 1}
    priced = {"account_id": "acme", "amount": 400, "quote": quote}
    hold = reply(send(client, types.HOLD_AUTHORIZE, priced))[1]["hold_id"]
    other = authorize(client, 100)
    stranger = capability_keys(tmp_path / "stranger")
    outcome = {
        "hold_id": hold,
        "account_id": "acme",
        "model": "m",
        "cluster": "test-1",
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
    }
    if event_type == types.INFERENCE_FAILED:
        outcome["error"] = {"type": "engine", "message": "died"}
    before = ledger.balance("acme")
    refused = {
        "none": (None, 400),
        "another hold": (cap_keys.capability(other), 403),
        "another account": (cap_keys.capability(hold, "mallory"), 403),
        "another cluster": (cap_keys.capability(hold, cluster="test-2"), 403),
        "a stranger's key": (stranger.capability(hold), 403),
        "tampered": (cap_keys.capability(hold)[:-8] + "AAAAAAAA", 403),
    }
    for what, (capability, status) in refused.items():
        data = {**outcome, **({"capability": capability} if capability else {})}
        response = send(client, event_type, data)
        assert response.status_code == status, (what, response.get_json())
    assert ledger.balance("acme") == before
    vouched = {**outcome, "capability": cap_keys.capability(hold)}
    assert reply(send(client, event_type, vouched))[0] in (
        types.HOLD_SETTLED,
        types.HOLD_REFUNDED,
    )
