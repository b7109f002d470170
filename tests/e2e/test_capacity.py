"""Serving under load on the real platform (`tollgate up`, the real model, ledger, broker,
activators and replicas):

- work-conserving routing: with the cheapest cluster full, the next request goes to another
  feasible cluster at that cluster's price (the reason says so); with every one full it is
  refused with 429 and Retry-After, which the official openai client waits out and retries;
- the local platform scales like Knative: concurrent load on one service starts a second
  replica, which goes again (and the service to zero) once idle;
- nothing is lost: afterwards every account reconciles exactly (nothing held, spent is the sum
  of the captures, one capture per answered request).

The template is the shipped one with the local model's service shrunk to replicas of one slot
(at most two), Knative's shortest stable window and scale-to-zero grace and a 1 s scale-down
delay, so a slot is easy to fill and the scale-down comes within the test (6 s + 6 s).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from openai import OpenAI, RateLimitError
from prometheus_client.parser import text_string_to_metric_families

from infra.local.platform import free_port
from tests.up.test_up import ROOT, tollgate_up

pytestmark = [pytest.mark.model, pytest.mark.slow]

ADMIN = "capacity-admin"
MODEL = "SmolLM2-135M-Instruct"
SHIPPED = "serving: {concurrency: 4, maxScale: 4}"
SHRUNK = "serving: {concurrency: 1, maxScale: 2, scaleDownDelay: 1s, window: 6s}"
# Greedy, SmolLM2 counts on from here to max_tokens: a request that holds its slot for long.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"
CLUSTERS = {"cloud-frankfurt-1", "regional-paris-1", "edge-lyon-5g-1", "edge-marseille-5g-1"}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("capacity")
    text = (ROOT / "template.yaml").read_text(encoding="utf-8")
    assert text.count(SHIPPED) == 1
    # A plan for callers who take only a cluster that can start them now.
    strict = text.replace(SHIPPED, SHRUNK).replace(
        "  - name: batch\n",
        "  - name: strict\n    kind: payPerInference\n    topUps: [1000000]\n"
        "    maxQueueWaitMs: 0\n  - name: batch\n",
    )
    # The shortest scale-to-zero grace Knative allows (config-autoscaler).
    strict += "\nautoscaler: {scaleToZeroGracePeriod: 6s}\n"
    template = root / "template.yaml"
    template.write_text(strict, encoding="utf-8")
    state = root / "state"
    env = {"TOLLGATE_ADMIN_TOKEN": ADMIN}
    with tollgate_up(state, free_port(), env, template) as endpoints:
        endpoints["strict_key"] = new_account(endpoints, "rush", "strict")
        endpoints["batch_key"] = new_account(endpoints, "bulk", "batch")
        yield endpoints


def new_account(p: dict[str, Any], account: str, plan: str) -> str:
    s = admin()
    created = s.post(
        f"{p['admin']}/accounts", json={"account_id": account, "plan": plan}, timeout=10
    )
    assert created.status_code == 201, created.text
    granted = s.post(
        f"{p['admin']}/accounts/{account}/grants", json={"amount": 10_000_000}, timeout=10
    )
    assert granted.status_code == 201, granted.text
    key: str = s.post(f"{p['admin']}/accounts/{account}/keys", timeout=10).json()["key"]
    return key


def admin() -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {ADMIN}"
    return session


def replicas(p: dict[str, Any]) -> list[str]:
    """The infer replicas running now (tollgate up's processes.json)."""
    children = json.loads((Path(p["state"]) / "processes.json").read_text())["children"]
    return sorted(name for name in children if name.startswith("infer-"))


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


def hold_open(p: dict[str, Any], key: str) -> requests.Response:
    """A long streamed answer, left open: its cluster's one slot stays busy until closed (the
    ingress answers once the first chunk is there, so it is running when this returns)."""
    body = {"model": MODEL, "prompt": COUNTING, "temperature": 0, "max_tokens": 2000}
    r = requests.post(
        p["ingress"] + "/v1/completions",
        json={**body, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        stream=True,
        timeout=180,
    )
    assert r.status_code == 200, r.text
    return r


def settled_view(p: dict[str, Any], held: list[requests.Response]) -> None:
    """Wait until the router's view (the prober's last look) shows the held streams running and
    every busy tier's second replica ready: a look taken while a replica was starting would make
    the next decision depend on how fast it starts."""
    per_tier = Counter(h.headers["x-tollgate-tier"] for h in held)

    def seen() -> bool:
        view = requests.get(p["route"] + "/tiers", timeout=10).json()["clusters"]
        for c in view:
            load = c["models"]["smollm2-135m"]
            count = per_tier.get(c["tier"], 0)
            if count and ((load["running"] or 0) < count or (load["replicas"] or 0) < 2):
                return False
        return True

    wait_until(seen, 60, f"{dict(per_tier)} seen running, two replicas each")


def refused_full(p: dict[str, Any]) -> float:
    """How many requests the ingress refused because every cluster was full."""
    text = requests.get(p["ingress"] + "/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tollgate_ingress_requests_total" and s.labels.get("outcome") == "full"
    )


def reconciled(p: dict[str, Any], account: str) -> dict[str, Any]:
    """The account once nothing is held: spent is exactly the sum of the captures."""
    url = f"{p['admin']}/accounts/{account}/balance"
    wait_until(
        lambda: admin().get(url, timeout=10).json()["open_holds"] == 0, 90, f"{account} held"
    )
    balance: dict[str, Any] = admin().get(url, timeout=10).json()
    assert balance["held"] == 0
    assert balance["granted"] == sum(balance[k] for k in ("available", "held", "spent", "expired"))
    settles = captures(p, account)
    assert balance["spent"] == sum(settles)
    balance["settles"] = settles
    return balance


def _metered(op: dict[str, Any]) -> bool:
    """A request's metered charge: a hold's settle, or a credit lease's capture of one request
    (a void of a lease's request counts it and charges nothing)."""
    return op["kind"] == "settle" or (op["kind"] == "capture" and not op["args"].get("void"))


def captures(p: dict[str, Any], account: str) -> list[int]:
    """Every request's capture in the account's journal."""
    out: list[int] = []
    after = 0
    while True:
        page = (
            admin()
            .get(
                f"{p['admin']}/accounts/{account}/journal",
                params={"after": after, "limit": 100},
                timeout=10,
            )
            .json()
        )
        out += [e["result"]["captured"] for e in page["entries"] if _metered(e["op"])]
        if page["next_after"] is None:
            return out
        after = page["next_after"]


def test_full_clusters_are_passed_over_then_429_with_retry_after(platform: dict[str, Any]) -> None:
    key = platform["strict_key"]  # takes only a cluster that can start it now
    held: list[requests.Response] = []
    try:
        # Each tier's service runs at most two one-slot replicas; one request in flight makes
        # the autoscaler want both (its target is 70 % of a slot). The cheapest fills first, then
        # the dearer tiers, each at its own price.
        for expected in ("cloud", "cloud", "regional", "regional", "edge", "edge"):
            held.append(hold_open(platform, key))
            headers = held[-1].headers
            assert headers["x-tollgate-tier"] == expected, headers["x-tollgate-route-reason"]
            settled_view(platform, held)
        reasons = [h.headers["x-tollgate-route-reason"] for h in held]
        assert re.search(
            r"cloud-frankfurt-1 full \(queue \d+ ms > 0 ms max\): chose dearer regional-paris-1",
            reasons[2],
        ), reasons[2]
        assert "regional-paris-1 full" in reasons[4], reasons[4]

        # Every cluster full: refused at once, in OpenAI's shape; the official client waits
        # out Retry-After and retries by itself (twice by default) before giving up.
        client = OpenAI(base_url=platform["ingress"] + "/v1", api_key=key)
        before = refused_full(platform)
        started = time.monotonic()
        with pytest.raises(RateLimitError) as caught:
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=4)
        response = caught.value.response
        assert int(response.headers["retry-after"]) >= 1
        error = response.json()["error"]
        assert error["code"] == "all_clusters_full" and error["type"] == "rate_limit_error"
        assert set(error["queue_wait_ms"]) == CLUSTERS
        assert refused_full(platform) - before == 3
        assert time.monotonic() - started >= 2  # it waited before each retry
    finally:
        for stream in held:
            stream.close()  # the clients go; each replica stops and meters what it produced
    balance = reconciled(platform, "rush")
    assert len(balance["settles"]) == len(held)  # each held stream metered, the refused never held


def test_load_starts_a_second_replica_which_goes_when_idle_and_nothing_is_lost(
    platform: dict[str, Any],
) -> None:
    # Batch callers wait for the cheapest cluster however long: four at once queue on one
    # service of one-slot replicas, and its autoscaler starts the second replica it allows.
    client = OpenAI(base_url=platform["ingress"] + "/v1", api_key=platform["batch_key"])
    seen: set[str] = set()

    def ask(n: int) -> tuple[str, int]:
        r = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {n}"}], max_tokens=24
        )
        seen.update(replicas(platform))
        return r.headers["x-tollgate-cluster"], int(r.headers["x-tollgate-credits-charged"])

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    assert {cluster for cluster, _ in answers} == {"cloud-frankfurt-1"}
    assert {"infer-cloud-1", "infer-cloud-2"} <= seen, seen
    # Idle: the stable window empties, the grace passes, the replicas drain and go.
    wait_until(
        lambda: not any(r.startswith("infer-cloud") for r in replicas(platform)),
        90,
        "cloud back to zero",
    )
    output = platform["output"].read_text(errors="replace")
    assert "infer-cloud: 1 -> 2 replicas" in output
    assert re.search(r"infer-cloud: \d -> 0 replicas", output)
    # Nothing lost to the scale-down: one capture per answer, each what its answer said.
    balance = reconciled(platform, "bulk")
    assert sorted(balance["settles"]) == sorted(charged for _, charged in answers)
