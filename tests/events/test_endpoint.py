"""The network events sink through a Flask test client: trust, replays, reasons, no effect."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from events import network
from events.adapter import Mapped
from functions.app import create_app
from functions.auth.oidc import Discovery, TokenVerifier
from functions.auth.policy import SenderPolicy
from functions.auth.senders import Senders
from functions.idempotency import Idempotency
from functions.store import Store
from router_fn.network_events import network_events_blueprint
from tests.events import payloads as p

TOKEN = "c2lua3Rva2VuLWxpdmUtMjAyNi0xMS0yNg"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CE_JSON = "application/cloudevents+json"


class Recorder:
    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[list[Mapped], str]] = []
        self.fail = fail

    def __call__(self, events: list[Mapped], key: str) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("broker unreachable")
        self.calls.append((events, key))


def client(
    handle: Recorder,
    store: Store | None = None,
    credential: str | None = TOKEN,
) -> FlaskClient:
    blueprint = network_events_blueprint(
        handle,
        credential=credential,
        subscriptions=p.BINDINGS,
        idempotency=Idempotency(store) if store is not None else None,
        sites=p.SITES,
    )
    # These tests speak to /events only; POST / (and its sender check) is not exercised here.
    nobody = Senders(TokenVerifier(Discovery("http://127.0.0.1:9"), "ingress"), SenderPolicy("i"))
    return create_app("ingress", senders=nobody, blueprints=[blueprint]).test_client()


def post(c: FlaskClient, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    return c.post(
        path,
        data=json.dumps(body),
        headers={"Content-Type": CE_JSON, **AUTH, **(headers or {})},
    )


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["missing", "wrong", "not-bearer"],
)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/events", p.slice_booking()),
        ("/events/quality-edge-lyon-5g-1", p.network_quality()),
        ("/events/no-such-subscription", p.network_quality()),
        ("/events/3gpp/nwdaf", p.nwdaf(p.dn_performance(45))),
        ("/events/3gpp/moi", p.moi_creation()),
    ],
)
def test_without_the_right_bearer_it_is_401_and_nothing_happens(
    headers: dict[str, str], path: str, body: dict[str, Any]
) -> None:
    handle = Recorder()
    response = client(handle).post(
        path, data=json.dumps(body), headers={"Content-Type": CE_JSON, **headers}
    )
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert handle.calls == []


def test_without_a_configured_credential_the_sink_is_closed() -> None:
    handle = Recorder()
    response = post(client(handle, credential=None), "/events", p.slice_booking())
    assert response.status_code == 503
    assert "TOLLGATE_CAMARA_TOKEN" in response.get_json()["error"]["message"]
    assert handle.calls == []


def test_a_booking_is_handed_over_once_and_its_replay_is_204_without_effect(
    sqlite_store: Store,
) -> None:
    handle = Recorder()
    c = client(handle, sqlite_store)
    first = post(c, "/events", p.slice_booking())
    replay = post(c, "/events", p.slice_booking())
    assert (first.status_code, first.data, replay.status_code) == (204, b"", 204)
    [(events, key)] = handle.calls
    assert key == f"{p.SOURCE}#nsb-7781"
    assert [(e.type, e.subject) for e in events] == [
        (network.SLICE_BOOKED, "3fa85f64-5717-4562-b3fc-2c963f66afa6")
    ]


def test_an_id_reused_with_other_data_is_a_conflict(sqlite_store: Store) -> None:
    handle = Recorder()
    c = client(handle, sqlite_store)
    assert post(c, "/events", p.slice_booking()).status_code == 204
    later_end = p.slice_booking(end="2027-01-31T20:00:00Z")
    assert post(c, "/events", later_end).status_code == 409
    assert len(handle.calls) == 1


def test_a_failed_hand_over_is_retried_by_the_sender_and_then_applied(
    sqlite_store: Store,
) -> None:
    handle = Recorder(fail=1)
    c = client(handle, sqlite_store)
    assert post(c, "/events", p.slice_booking()).status_code == 500
    assert post(c, "/events", p.slice_booking()).status_code == 204
    assert len(handle.calls) == 1


def test_without_idempotency_the_handler_gets_the_dedupe_key_each_time() -> None:
    handle = Recorder()
    c = client(handle)
    post(c, "/events", p.slice_booking())
    post(c, "/events", p.slice_booking())
    assert [key for _, key in handle.calls] == [f"{p.SOURCE}#nsb-7781"] * 2


def test_network_quality_is_posted_to_its_subscriptions_own_sink() -> None:
    handle = Recorder()
    c = client(handle)
    event = p.network_quality(packetDelayBudget=p.UNABLE)
    assert post(c, "/events/quality-edge-marseille-5g-1", event).status_code == 204
    [([degraded], _)] = handle.calls
    assert (degraded.type, degraded.data["cluster"]) == (
        network.SITE_DEGRADED,
        "edge-marseille-5g-1",
    )
    shared = post(c, "/events", event)
    assert shared.status_code == 400
    assert "several subscriptions" in shared.get_json()["error"]["message"]
    unknown = post(c, "/events/quality-edge-nice-1", event)
    assert unknown.status_code == 404
    assert "quality-edge-lyon-5g-1" in unknown.get_json()["error"]["message"]
    assert len(handle.calls) == 1


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        ({**p.slice_booking(), "time": None}, {}, "time: null is not allowed"),
        ({**p.slice_booking(), "specversion": "0.3"}, {}, "specversion: Input should be '1.0'"),
        (
            {**p.slice_booking(), "type": "org.camaraproject.network-slice-booking.v0.resized"},
            {},
            "no subscription delivers org.camaraproject.network-slice-booking.v0.resized",
        ),
        (
            {**p.slice_booking(), "data": {"sliceId": p.SLICE_ID}},
            {},
            "status-changed data: serviceTime: Field required",
        ),
        (p.slice_booking(), {"ce-specversion": "1.0"}, "structured CloudEvents, not binary mode"),
        ("not json at all", {}, "the body must be a JSON object"),
    ],
)
def test_malformed_or_unknown_notifications_are_400_with_the_reason(
    body: Any, headers: dict[str, str], reason: str
) -> None:
    handle = Recorder()
    c = client(handle)
    if isinstance(body, str):
        response = c.post("/events", data=body, headers={"Content-Type": CE_JSON, **AUTH})
    else:
        response = post(c, "/events", body, headers)
    assert response.status_code == 400
    assert reason in response.get_json()["error"]["message"]
    assert handle.calls == []


def test_nwdaf_analytics_are_handed_over_once_per_identical_body(sqlite_store: Store) -> None:
    handle = Recorder()
    c = client(handle, sqlite_store)
    body = p.nwdaf(p.dn_performance(45, 11))
    assert (
        post(c, "/events/3gpp/nwdaf", body, {"Content-Type": "application/json"}).status_code == 204
    )
    assert post(c, "/events/3gpp/nwdaf", body).status_code == 204
    [(events, key)] = handle.calls
    assert [e.type for e in events] == [network.SITE_DEGRADED, network.SITE_RESTORED]
    assert key.startswith("nwdaf:nwdaf-sub-17#")
    later = p.nwdaf(p.dn_performance(9, 11))
    assert post(c, "/events/3gpp/nwdaf", later).status_code == 204
    assert len(handle.calls) == 2


def test_broken_3gpp_bodies_are_400_and_unknown_places_are_204_without_effect() -> None:
    handle = Recorder()
    c = client(handle)
    body = p.nwdaf(p.dn_performance())
    body["eventNotifications"][0]["event"] = "ABNORMAL_BEHAVIOUR"
    response = post(c, "/events/3gpp/nwdaf", body)
    assert response.status_code == 400
    assert "ABNORMAL_BEHAVIOUR is not accepted" in response.get_json()["error"]["message"]
    elsewhere = p.nwdaf(p.dn_performance())
    elsewhere["eventNotifications"][0]["dnPerfInfos"][0]["dnPerf"] = [
        {"dnai": "edge-nice-1", "perfData": {"avePacketDelay": 300}}
    ]
    assert post(c, "/events/3gpp/nwdaf", elsewhere).status_code == 204
    moi = p.moi_creation()
    moi["objectClass"] = "GNBDUFunction"
    response = post(c, "/events/3gpp/moi", moi)
    assert response.status_code == 400
    assert "only NetworkSlice" in response.get_json()["error"]["message"]
    assert handle.calls == []


def test_a_network_slice_creation_is_handed_over_once(sqlite_store: Store) -> None:
    handle = Recorder()
    c = client(handle, sqlite_store)
    assert post(c, "/events/3gpp/moi", p.moi_creation()).status_code == 204
    assert post(c, "/events/3gpp/moi", p.moi_creation()).status_code == 204
    [(events, key)] = handle.calls
    assert key == "DC=demo-telco.example,SubNetwork=France,ManagementNode=nsmf-1#90817"
    assert [(e.type, e.data["slice_id"]) for e in events] == [(network.SLICE_BOOKED, "nsi-42")]
