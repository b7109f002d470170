"""Input a sender controls cannot make a function answer 500 or grow its memory: JSON nested too
deep and lone surrogates are a 400 wherever JSON comes in (CloudEvents in both modes, the admin
API, the OpenAI API of the ingress and of infer, the network events sink), over-long CAMARA
sources and ids are a 400, and an invented event type is no new metric label."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from events.adapter import derived_id
from functions.config import Settings
from functions.jsonbody import MAX_DEPTH
from functions.store import Store
from infer_fn.config import InferConfig
from ledger_fn.app import create_app as ledger_app
from tests.events import payloads
from tests.events.test_endpoint import AUTH, Recorder
from tests.events.test_endpoint import client as events_client
from tests.infer.conftest import create_app as infer_app
from tests.infer.fakes import ScriptedEngine
from tests.ledger.helpers import senders, signed
from tests.trust import TestIssuer, nobody

DEEP = "[" * 5000 + "]" * 5000
JUST_TOO_DEEP = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
LONE = '"\\ud800"'
PAIR = '"\\ud83d\\ude00"'  # a valid pair: one emoji
GRANT = "io.tollgate.credits.grant.v1"


def binary(c: FlaskClient, data: str, event_type: str = GRANT, **attrs: str) -> Any:
    headers = {
        "ce-specversion": "1.0",
        "ce-type": event_type,
        "ce-source": attrs.get("source", "/test"),
        "ce-id": attrs.get("id", "e-1"),
        "content-type": "application/json",
    }
    return c.post("/", data=data, headers=headers)


def structured(c: FlaskClient, data: str) -> Any:
    event = '{"specversion": "1.0", "type": "' + GRANT + '", "source": "/t", "id": "e-2", "data": '
    return c.post(
        "/", data=event + data + "}", headers={"content-type": "application/cloudevents+json"}
    )


SETTINGS = Settings(store_url="unused", admin_token="adm", sink=None, port=0)


@pytest.fixture
def ledger(sqlite_store: Store, issuer: TestIssuer) -> FlaskClient:
    app = ledger_app("ledger", senders=senders(issuer), settings=SETTINGS, store=sqlite_store)
    return signed(app, issuer)


@pytest.fixture
def admin(sqlite_store: Store) -> FlaskClient:
    return ledger_app(
        "ledger-admin", senders=nobody(), settings=SETTINGS, store=sqlite_store
    ).test_client()


@pytest.mark.parametrize("send", [binary, structured])
@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (DEEP, "deeper than 64 levels"),
        ('{"account_id": "a", "amount": 5, "x": ' + JUST_TOO_DEEP + "}", "deeper than 64"),
        ('{"account_id": "a", "amount": 5, "note": ' + LONE + "}", "lone UTF-16 surrogate"),
        ('{"account_id": "a", ' + LONE + ": 5}", "lone UTF-16 surrogate"),
    ],
)
def test_cloudevents_too_deep_or_with_lone_surrogates_are_400(
    ledger: FlaskClient, send: Any, data: str, fragment: str
) -> None:
    response = send(ledger, data)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert fragment in response.get_json()["error"]["message"]


def test_a_valid_surrogate_pair_is_text_and_nesting_to_the_limit_is_fine(
    ledger: FlaskClient,
) -> None:
    nested = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    response = binary(ledger, '{"account_id": ' + PAIR + ', "amount": 5, "x": ' + nested + "}")
    # Refused for what it is (an emoji is no account id; x is no field), not for its JSON.
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert "account_id" in message and "surrogate" not in message and "deeper" not in message


@pytest.mark.parametrize("body", [DEEP, '{"account_id": ' + LONE + "}"])
def test_the_admin_api_refuses_them_too(admin: FlaskClient, body: str) -> None:
    response = admin.post(
        "/accounts",
        data=body,
        headers={"Authorization": "Bearer adm", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"


def test_an_invented_event_type_is_no_new_metric_label(
    sqlite_store: Store, issuer: TestIssuer
) -> None:
    app = ledger_app("deadletters", senders=senders(issuer), settings=SETTINGS, store=sqlite_store)
    sink = signed(app, issuer)
    for i in range(3):  # the dead-letter sink takes every type
        response = binary(sink, "{}", event_type=f"com.attacker.t{i}", id=f"x{i}")
        assert response.status_code < 300
    text = sink.get("/metrics").get_data(as_text=True)
    labels = {
        sample.labels.get("type")
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("tollgate_events")
    }
    assert "other" in labels
    assert not any(str(label).startswith("com.attacker") for label in labels)


def test_infer_refuses_them_as_400(tmp_path: Path) -> None:
    config = InferConfig(model_name="scripted", idle_seconds=0)
    api = infer_app(config, engine=ScriptedEngine(["w"])).test_client()  # behind the ingress's half
    for body in (DEEP, '{"model": "scripted", "prompt": ' + LONE + "}"):
        response = api.post("/v1/completions", data=body, headers={"content-type": "x"})
        assert response.status_code == 400, response.get_data(as_text=True)
        assert response.get_json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"source": "https://api.example.com/" + "s" * 300}, "at most 256 bytes"),
        ({"id": "é" * 200}, "at most 256 bytes"),
    ],
)
def test_over_long_camara_sources_and_ids_are_400_and_change_nothing(
    sqlite_store: Store, change: dict[str, str], fragment: str
) -> None:
    handle = Recorder()
    c = events_client(handle, sqlite_store)
    body = {**payloads.network_quality(), **change}
    response = c.post(
        "/events/quality-edge-lyon-5g-1",
        data=json.dumps(body),
        headers={"Content-Type": "application/cloudevents+json", **AUTH},
    )
    assert response.status_code == 400, response.get_data(as_text=True)
    assert fragment in response.get_json()["error"]["message"]
    assert handle.calls == []


@pytest.mark.parametrize("body", [DEEP, '{"id": ' + LONE + "}"])
def test_the_network_events_sink_refuses_them(sqlite_store: Store, body: str) -> None:
    handle = Recorder()
    response = events_client(handle, sqlite_store).post(
        "/events",
        data=body,
        headers={"Content-Type": "application/cloudevents+json", **AUTH},
    )
    assert response.status_code == 400
    assert handle.calls == []


def test_published_ids_stay_short_whatever_the_notification_key() -> None:
    short = derived_id("https://op.example/src#n-1", 0)
    assert short == "https://op.example/src#n-1#0"
    long = derived_id("s" * 256 + "#" + "i" * 256, 2)
    assert long.startswith("sha256:") and long.endswith("#2") and len(long.encode()) < 256
    assert derived_id("s" * 256 + "#" + "i" * 256, 2) == long  # stable across replays
