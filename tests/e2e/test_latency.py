"""The latency promise on `tollgate up` with the real model: latency-critical requests reach the
edge after at most one warm-up (no trap), the route reason says why, and each request with a
budget is measured for the account's SLA month."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from infra.local.platform import free_port
from tests.up.test_up import tollgate_up

pytestmark = [pytest.mark.model, pytest.mark.slow]

ADMIN = "e2e-latency-admin"
MODEL = "SmolLM2-135M-Instruct"
BUDGET = {"x-tollgate-latency-budget-ms": "20"}  # only the edge (10 ms emulated RTT) fits


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("latency") / "state"
    with tollgate_up(state, free_port(), {"TOLLGATE_ADMIN_TOKEN": ADMIN}) as endpoints:
        endpoints["key"] = (state / "demo-api-key").read_text().strip()
        # The prober may have seen the infer processes before they listened: let it catch up.
        wait_until(lambda: all(m["healthy"] for m in tiers(endpoints).values()), "healthy tiers")
        yield endpoints


def chat(p: dict[str, Any], key: str | None = None, **headers: str) -> requests.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
    auth = {"Authorization": f"Bearer {key or p['key']}", **headers}
    r = requests.post(p["ingress"] + "/v1/chat/completions", json=body, headers=auth, timeout=120)
    assert r.status_code == 200, r.text
    return r


def tiers(p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    view = requests.get(p["route"] + "/tiers", timeout=10).json()  # the router's own view
    return {c["cluster"]: c["models"]["smollm2-135m"] for c in view["clusters"]}


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_latency_critical_requests_reach_the_edge_after_at_most_one_warm_up(
    platform: dict[str, Any],
) -> None:
    # The situation: a request without a budget warms the cheapest tier (the cloud)
    # first, and the edge is cold.
    assert chat(platform).headers["x-tollgate-tier"] == "cloud"
    wait_until(lambda: tiers(platform)["cloud-frankfurt-1"]["warm"] is True, "a warm cloud")
    assert tiers(platform)["edge-lyon-5g-1"]["warm"] is not True
    first = chat(platform, **BUDGET)
    reason = first.headers["x-tollgate-route-reason"]
    if not first.headers["x-tollgate-cluster"].startswith("edge"):
        # Served now by the best tier that can, and the edge woken at the same moment.
        assert "cold (predicted" in reason and "woken; served by" in reason, reason
    wait_until(lambda: tiers(platform)["edge-lyon-5g-1"]["warm"] is True, "the edge woken")
    answers = [chat(platform, **BUDGET) for _ in range(20)]
    edge = [r for r in answers if r.headers["x-tollgate-tier"] == "edge"]
    assert len(edge) >= 19, [r.headers["x-tollgate-route-reason"] for r in answers]
    for r in edge:
        reason = r.headers["x-tollgate-route-reason"]
        # Why: the only tier in budget, or (prefill on a busy CPU) the fastest when none is.
        assert "20 ms budget" in reason and r.headers["x-tollgate-cluster"] in reason, reason
    # The cold start it routes by is learned from what infer measured, not the size guess.
    learned = tiers(platform)["edge-lyon-5g-1"]
    assert learned["last_served_at"] is not None


def test_requests_with_a_budget_are_measured_for_the_accounts_sla_month(
    platform: dict[str, Any],
) -> None:
    admin = requests.Session()
    admin.headers["Authorization"] = f"Bearer {ADMIN}"
    account = "sla-e2e"
    created = admin.post(
        f"{platform['admin']}/accounts",
        json={"account_id": account, "plan": "enterprise-5g-bundle"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    admin.post(f"{platform['admin']}/accounts/{account}/grants", json={"amount": 10**7}, timeout=10)
    key = admin.post(f"{platform['admin']}/accounts/{account}/keys", timeout=10).json()["key"]
    chat(platform, key, **{"x-tollgate-latency-budget-ms": "1"})  # no tier can meet 1 ms
    chat(platform, key, **{"x-tollgate-latency-budget-ms": "60000"})  # any tier meets a minute
    chat(platform, key)  # the plan's 30 ms target is a budget too

    def report() -> dict[str, Any]:
        view: dict[str, Any] = admin.get(
            f"{platform['admin']}/accounts/{account}", timeout=10
        ).json()["sla"]
        return view

    # Recorded after each response closed: poll briefly.
    wait_until(lambda: report()["requests"] == 3, "three observations")
    month = report()
    assert (month["met"] + month["breached"], month["breached"] >= 1, month["met"] >= 1) == (
        3,
        True,
        True,
    )
    assert month["plan_sla"] == {"plan": "enterprise-5g-bundle", "objective_percent": "95.00"}
    assert month["closed"] is False and month["credit"] is None
