"""What the router keeps for ops (functions/recent.py, events/activity.py): each route decision
and what each network notification did."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests

from events.activity import NetworkEventRecord, RouteDecisionRecord
from functions.apikeys import ApiKeys
from functions.app import create_app
from functions.idempotency import Idempotency
from functions.recent import RecentLog
from functions.store import Store
from ledger_fn.ledger import Ledger
from router_fn.ingress_app import create_app as ingress_app
from router_fn.network_events import network_events_blueprint
from router_fn.tierstate import TierStates
from tests.events import payloads as p
from tests.events.test_endpoint import AUTH, CE_JSON, TOKEN, Recorder
from tests.http_server import serving
from tests.ledger.helpers import ledger_function, senders
from tests.router.test_ingress import Upstream, ledger_client, topology
from tests.trust import CapabilityKeys, TestIssuer, nobody


@pytest.fixture
def ingress(
    sqlite_store: Store, issuer: TestIssuer, cap_keys: CapabilityKeys, tmp_path: Path
) -> Iterator[tuple[str, str, RecentLog]]:
    ledger = Ledger(sqlite_store)
    ledger.open_account("acme")
    ledger.execute("acme", "grant", {"amount": 100_000})
    key = ApiKeys(sqlite_store).issue("acme")["key"]
    decisions = RecentLog(sqlite_store, "route-decisions")
    with ExitStack() as stack:
        ledger_url = stack.enter_context(serving(ledger_function(ledger, issuer, cap_keys)))
        edge = stack.enter_context(serving(Upstream().app()))
        regional = stack.enter_context(serving(Upstream().app()))
        app = ingress_app(
            topology(edge, regional),
            sqlite_store,
            ledger_client(ledger_url, issuer, tmp_path),
            senders=senders(issuer),
            signing_key=cap_keys.signing,
            states=TierStates(sqlite_store),
            decisions=decisions,
        )
        yield stack.enter_context(serving(app)), key, decisions


def _chat(url: str, key: str, **headers: str) -> requests.Response:
    body = {"model": "Tiny-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    auth = {"Authorization": f"Bearer {key}", **headers}
    return requests.post(url + "/v1/chat/completions", json=body, headers=auth, timeout=30)


def test_each_route_decision_is_kept_with_its_reason(
    ingress: tuple[str, str, RecentLog],
) -> None:
    url, key, decisions = ingress
    routed = _chat(url, key, **{"x-tollgate-latency-budget-ms": "20"})
    assert routed.status_code == 200
    refused = _chat(url, key, **{"x-tollgate-residency": "US"})
    assert refused.status_code == 503
    assert decisions.flush()
    latest, first = (RouteDecisionRecord.model_validate(r) for r in decisions.read(2))
    assert (first.outcome, first.cluster, first.tier) == ("routed", "edge-a", "edge")
    assert first.reason == routed.headers["x-tollgate-route-reason"]
    assert first.latency_budget_ms == 20 and first.account_id == "acme"
    assert latest.outcome == "no_route" and latest.cluster is None
    assert "residency" in latest.reason


def test_a_refusal_for_capacity_is_kept_as_full(
    ingress: tuple[str, str, RecentLog], sqlite_store: Store
) -> None:
    url, key, decisions = ingress
    for cluster in ("edge-a", "regional-b"):  # one slot each, busy, 3 queued
        TierStates(sqlite_store).report_load(cluster, "tiny", queue_depth=3, running=1, warm=True)
    served = _chat(url, key)  # 5 tokens: 500 ms of queue, within the 1 s default
    assert served.status_code == 200
    body = {"model": "Tiny-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    auth = {"Authorization": f"Bearer {key}"}
    refused = requests.post(url + "/v1/chat/completions", json=body, headers=auth, timeout=30)
    assert refused.status_code == 429  # 20 tokens: 2 s of queue everywhere
    assert decisions.flush()
    [latest] = (RouteDecisionRecord.model_validate(r) for r in decisions.read(1))
    assert latest.outcome == "full" and latest.cluster is None
    assert "every cluster serving tiny is full" in latest.reason


def _network(store: Store, recent: RecentLog) -> Any:
    blueprint = network_events_blueprint(
        Recorder(),
        credential=TOKEN,
        subscriptions=p.BINDINGS,
        idempotency=Idempotency(store),
        recent=recent,
    )
    return create_app("ingress", senders=nobody(), blueprints=[blueprint]).test_client()


def test_what_each_network_notification_did_is_kept(sqlite_store: Store) -> None:
    recent = RecentLog(sqlite_store, "network-events")
    client = _network(sqlite_store, recent)

    def post(path: str, body: Any, headers: dict[str, str] = AUTH) -> int:
        answer = client.post(
            path, data=json.dumps(body), headers={"Content-Type": CE_JSON, **headers}
        )
        return int(answer.status_code)

    degraded = p.network_quality(packetDelayBudget=p.UNABLE)
    assert post("/events/quality-edge-lyon-5g-1", degraded) == 204
    assert post("/events/quality-edge-lyon-5g-1", degraded) == 204  # a replay
    assert post("/events/quality-edge-lyon-5g-1", {"not": "camara"}) == 400
    assert post("/events/quality-edge-lyon-5g-1", degraded, {"Authorization": "Bearer x"}) == 401
    assert recent.flush()
    records = [NetworkEventRecord.model_validate(r) for r in reversed(recent.read())]
    # The stranger's request is not kept: it must not push real notifications out.
    assert [r.outcome for r in records] == ["published", "duplicate", "refused"]
    published = records[0]
    assert published.kind == f"{p.CI}.network-quality"
    assert published.notification_id == degraded["id"]
    (event,) = published.events
    assert (event.type, event.subject) == ("io.tollgate.network.site.degraded.v1", "edge-lyon-5g-1")
    assert records[2].status == 400 and "invalid CloudEvent" in records[2].detail
