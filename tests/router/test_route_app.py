"""The route function over CloudEvents (binary and structured): decisions, and the status of
every refusal (404 unknown model, 400 bad data, 422 impossible, 429 full, 503 transient)."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from events import types
from events.routing import RouteDecided
from functions.cloudevent import parse_http
from functions.store import Store
from router_fn.route_app import create_app
from router_fn.tierstate import TierStates
from tests.clock import START, Clock
from tests.ledger.helpers import send, senders, signed
from tests.router.helpers import topology
from tests.trust import TestIssuer


@pytest.fixture
def tiers(sqlite_store: Store) -> TierStates:
    states = TierStates(sqlite_store, Clock(), cache_s=0)
    for name in ("edge-a", "edge-b", "regional", "cloud"):
        states.report_health(name, "small", True)
        states.report_load(name, "small", queue_depth=0, running=0, warm=True)
    return states


@pytest.fixture
def client(sqlite_store: Store, tiers: TierStates, issuer: TestIssuer) -> FlaskClient:
    app = create_app(topology(), sqlite_store, states=tiers, senders=senders(issuer))
    return signed(app, issuer)


def test_the_live_view_is_served_inside_the_cluster(client: FlaskClient) -> None:
    view = client.get("/tiers").get_json()
    assert [c["cluster"] for c in view["clusters"]] == ["edge-a", "edge-b", "regional", "cloud"]


def decided(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_json()
    event = parse_http(dict(response.headers), response.get_data())
    assert event.type == types.ROUTE_DECIDED
    RouteDecided.model_validate(event.data)
    return event.data


@pytest.mark.parametrize("structured", [False, True])
def test_a_decision_in_each_mode(client: FlaskClient, structured: bool) -> None:
    data = decided(
        send(
            client,
            types.ROUTE_REQUESTED,
            {"model": "Small-135M", "plan": "bundle", "prompt_tokens": 20},
            structured=structured,
        )
    )
    assert (data["cluster"], data["tier"], data["predicted_ms"]) == ("regional", "regional", 28)
    assert data["url"] == "http://regional.test/small" and data["budget_ms"] == 30
    assert [a["cluster"] for a in data["alternatives"]] == ["edge-a", "edge-b"]
    assert data["rejected"] == {"cloud": "plan bundle does not include tier cloud"}
    assert data["reasons"][0] == "regional: meets 30 ms budget (predicted 28 ms), cheapest"


def test_hints_exclusions_and_degradation(client: FlaskClient, tiers: TierStates) -> None:
    request = {"model": "small", "latency_budget_ms": 30, "exclude": ["regional"]}
    assert decided(send(client, types.ROUTE_REQUESTED, request))["cluster"] == "edge-a"
    tiers.degrade("edge-a", "packet delay budget not met", START + 300, "/camara/q")
    data = decided(send(client, types.ROUTE_REQUESTED, request))
    assert data["cluster"] == "edge-b"
    assert "avoided degraded edge-a: packet delay budget not met" in data["reasons"]
    pinned = {"model": "small", "tier": "cloud", "residency": ["DE"]}
    assert decided(send(client, types.ROUTE_REQUESTED, pinned))["cluster"] == "cloud"


def test_unknown_model_is_404(client: FlaskClient) -> None:
    response = send(client, types.ROUTE_REQUESTED, {"model": "gpt-5"})
    assert response.status_code == 404
    assert "Small-135M" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "data",
    [
        {"model": "small", "plan": "gold"},
        {"model": "small", "latency_budget_ms": "fast"},
        {"model": "small", "latency_budget_ms": 0},
        {"model": "small", "residency": ["fr"]},
        {"model": "small", "colour": "blue"},
        {},
    ],
)
def test_bad_requests_are_400(client: FlaskClient, data: dict[str, Any]) -> None:
    assert send(client, types.ROUTE_REQUESTED, data).status_code == 400


def test_an_impossible_request_is_422_with_each_reason(client: FlaskClient) -> None:
    response = send(
        client, types.ROUTE_REQUESTED, {"model": "small", "plan": "bundle", "residency": ["DE"]}
    )
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "no_feasible_tier"
    assert error["rejected"]["edge-a"] == "residency: FR not in nowhere (hint and plan disjoint)"
    assert error["rejected"]["cloud"] == "plan bundle does not include tier cloud"


def test_only_unhealthy_clusters_are_tried_anyway(client: FlaskClient, tiers: TierStates) -> None:
    for name in ("edge-a", "edge-b", "regional", "cloud"):
        tiers.report_health(name, "small", False, "readyz 503")
    data = decided(send(client, types.ROUTE_REQUESTED, {"model": "small"}))
    assert "every feasible cluster probed unhealthy: trying them anyway" in data["reasons"]
    assert data["rejected"] == {}


def test_every_cluster_full_is_429_with_retry_after(client: FlaskClient, tiers: TierStates) -> None:
    # One slot each (the helpers' model), busy, with 3 queued: 4 x 1 s (40 tokens at 40/s).
    for name in ("edge-a", "edge-b", "regional", "cloud"):
        tiers.report_load(name, "small", queue_depth=3, running=1, warm=True)
    response = send(client, types.ROUTE_REQUESTED, {"model": "small", "max_tokens": 40})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    error = response.get_json()["error"]
    assert error["code"] == "all_clusters_full"
    assert error["queue_wait_ms"] == dict.fromkeys(("edge-a", "edge-b", "regional", "cloud"), 4000)


def test_the_shipped_template_routes_an_enterprise_request(
    sqlite_store: Store, issuer: TestIssuer
) -> None:
    from infra.template.load import load_template
    from infra.wiring import topology as template_topology

    topo = template_topology(load_template("template.yaml"))
    states = TierStates(sqlite_store, Clock(), cache_s=0)
    for spec in topo.clusters:
        states.report_load(spec.name, "smollm2-135m", queue_depth=0, running=0, warm=True)
    client = signed(create_app(topo, sqlite_store, states=states, senders=senders(issuer)), issuer)
    data = decided(
        send(
            client,
            types.ROUTE_REQUESTED,
            {"model": "SmolLM2-135M-Instruct", "plan": "enterprise-5g-bundle"},
        )
    )
    assert data["cluster"] == "regional-paris-1"  # 28 ms meets 30 ms and is cheaper than edge
    assert data["rejected"] == {
        "cloud-frankfurt-1": "plan enterprise-5g-bundle does not include tier cloud"
    }
