"""The whole platform under `tollgate up` with the real model: credits, failover, duplicates,
and network events steering routing and granting bundles. One platform for the package
(tests/e2e/conftest.py: it loads the model once per tier); tests run in file order and each
leaves the platform usable, but the last, which kills the edge."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from events import types
from functions.cloudevent import make_event, to_binary
from infra.local.demo import ACCOUNT
from tests.e2e.conftest import ADMIN, CAMARA, mint_capability, process_token
from tests.events import payloads

pytestmark = [pytest.mark.model, pytest.mark.slow]

MODEL = "SmolLM2-135M-Instruct"


def admin() -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {ADMIN}"
    return session


def chat(p: dict[str, Any], key: str | None = None, **headers: str) -> requests.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 6}
    auth = {"Authorization": f"Bearer {key or p['key']}", **headers}
    return requests.post(
        p["ingress"] + "/v1/chat/completions", json=body, headers=auth, timeout=120
    )


def balance(p: dict[str, Any], account: str = ACCOUNT) -> dict[str, Any]:
    """The balance once every hold is resolved (settle runs asynchronously via the broker)."""
    deadline = time.monotonic() + 30
    while True:
        b: dict[str, Any] = (
            admin().get(f"{p['admin']}/accounts/{account}/balance", timeout=10).json()
        )
        if not b["open_holds"] or time.monotonic() > deadline:
            return b
        time.sleep(0.2)


def replicas(p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The infer replicas running now: name -> pid and URL (tollgate up's processes.json)."""
    running = json.loads((Path(p["state"]) / "processes.json").read_text())
    return {
        name: {"pid": pid, "url": running["urls"][name]}
        for name, pid in running["children"].items()
        if name.startswith("infer-")
    }


def prompt_tokens_seen(p: dict[str, Any]) -> float:
    """Prompt tokens every running replica's engine has read."""
    total = 0.0
    for url in (r["url"] for r in replicas(p).values()):
        text = requests.get(url + "/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "tollgate_infer_tokens_total"
                    and sample.labels.get("kind") == "prompt"
                ):
                    total += sample.value
    return total


def new_account(p: dict[str, Any], account: str, credits: int, **fields: Any) -> str:
    s = admin()
    assert (
        s.post(
            f"{p['admin']}/accounts", json={"account_id": account, **fields}, timeout=10
        ).status_code
        == 201
    )
    if credits:
        s.post(f"{p['admin']}/accounts/{account}/grants", json={"amount": credits}, timeout=10)
    key: str = s.post(f"{p['admin']}/accounts/{account}/keys", timeout=10).json()["key"]
    return key


def invariant(b: dict[str, Any]) -> None:
    assert b["granted"] == b["available"] + b["held"] + b["spent"] + b["expired"]


def test_not_enough_credits_is_402_and_the_engine_is_never_called(
    platform: dict[str, Any],
) -> None:
    key = new_account(platform, "poor", 0)  # at these prices a short request costs 1 credit
    before = prompt_tokens_seen(platform)
    r = chat(platform, key)
    assert r.status_code == 402, r.text
    assert (
        "insufficient" in r.json()["error"]["message"]
        or "not enough" in r.json()["error"]["message"]
    )
    assert prompt_tokens_seen(platform) == before
    b = balance(platform, "poor")
    assert (b["available"], b["held"], b["spent"]) == (0, 0, 0)


def test_a_duplicate_completed_event_is_charged_once(platform: dict[str, Any]) -> None:
    r = chat(platform)
    assert r.status_code == 200, r.text
    charged = int(r.headers["x-tollgate-credits-charged"])
    settled = balance(platform)
    hold = r.headers["x-tollgate-hold-id"]
    duplicate = {
        "hold_id": hold,
        "account_id": ACCOUNT,
        "model": "smollm2-135m",
        "usage": {"prompt_tokens": 5000, "completion_tokens": 5000},
        # A second fact vouched for as infer would (the operator's keys, from the state dir).
        "capability": mint_capability(platform, hold, ACCOUNT, r.headers["x-tollgate-cluster"]),
    }
    event = to_binary(make_event(types.INFERENCE_COMPLETED, "/e2e", duplicate, id="dup-1"))
    as_infer = {"Authorization": f"Bearer {process_token(platform, 'infer-regional-1')}"}
    for _ in range(2):  # the same event twice, and it is a second fact for a settled hold
        response = requests.post(
            platform["broker"], headers={**event.headers, **as_infer}, data=event.body, timeout=10
        )
        assert response.status_code == 202
    time.sleep(2)
    again = balance(platform)
    assert again["spent"] == settled["spent"] and charged <= settled["spent"]
    invariant(again)


def wait_for(
    p: dict[str, Any], condition: Callable[[dict[str, Any]], bool], *clusters: str
) -> None:
    """Until the router's live view (GET /tiers) satisfies ``condition`` for every cluster."""
    view: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = requests.get(p["route"] + "/tiers", timeout=10).json()
        states = {c["cluster"]: c for c in view["clusters"]}
        if all(condition(states[name]) for name in clusters):
            return
        time.sleep(0.2)
    pytest.fail(f"the router's view never got there: {view}")


def post_camara(p: dict[str, Any], sink: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{p['events']}/{sink}",
        json=body,
        timeout=10,
        headers={
            "Authorization": f"Bearer {CAMARA}",
            "Content-Type": "application/cloudevents+json",
        },
    )


def test_a_degraded_site_is_avoided_for_latency_critical_requests_then_used_again(
    platform: dict[str, Any],
) -> None:
    # Warm both tiers: a cold tier cannot meet a tight budget anyway (its cold start counts).
    for tier in ("edge", "regional"):
        assert chat(platform, **{"x-tollgate-tier": tier}).status_code == 200
    wait_for(platform, lambda c: c["models"]["smollm2-135m"]["warm"], "edge-lyon-5g-1")
    budget = {"x-tollgate-latency-budget-ms": "20"}  # only the edge (10 ms) meets it
    assert chat(platform, **budget).headers["x-tollgate-tier"] == "edge"
    wrong = requests.post(
        f"{platform['events']}/quality-edge-lyon-5g-1",
        timeout=10,
        json=payloads.network_quality(),
        headers={"Authorization": "Bearer x"},
    )
    assert wrong.status_code == 401
    degraded = payloads.network_quality(packetDelayBudget=payloads.UNABLE)
    degraded["id"] = f"ci-{uuid.uuid4().hex}"
    assert post_camara(platform, "quality-edge-lyon-5g-1", degraded).status_code == 204
    assert (
        post_camara(
            platform, "quality-edge-marseille-5g-1", {**degraded, "id": f"ci-{uuid.uuid4().hex}"}
        ).status_code
        == 204
    )
    # The broker delivers to the route function asynchronously.
    wait_for(platform, lambda c: bool(c["degraded"]), "edge-lyon-5g-1", "edge-marseille-5g-1")
    r = chat(platform, **budget)
    assert r.status_code == 200
    assert not r.headers["x-tollgate-cluster"].startswith("edge"), r.headers
    assert "degraded" in r.headers["x-tollgate-route-reason"]
    for sink in ("quality-edge-lyon-5g-1", "quality-edge-marseille-5g-1"):
        restored = {**payloads.network_quality(), "id": f"ci-{uuid.uuid4().hex}"}
        assert post_camara(platform, sink, restored).status_code == 204
    wait_for(platform, lambda c: not c["degraded"], "edge-lyon-5g-1", "edge-marseille-5g-1")
    r = chat(platform, **budget)
    # Either edge: locally both are one process, and what each learned of it differs by noise.
    assert r.headers["x-tollgate-cluster"].startswith("edge"), r.headers


def test_a_slice_booking_grants_the_bound_account_its_bundle_once(
    platform: dict[str, Any],
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    ends = now + timedelta(days=30)
    slice_id = payloads.SLICE_ID
    new_account(platform, "enterprise", 0, plan="enterprise-5g-bundle", slice_ids=[slice_id])
    for event_id in ("nsb-1", "nsb-2", "nsb-2"):  # announced twice, once delivered twice
        event = payloads.slice_booking(
            start=now.isoformat().replace("+00:00", "Z"),
            end=ends.isoformat().replace("+00:00", "Z"),
            event_id=event_id,
        )
        assert post_camara(platform, "slice-booking", event).status_code == 204
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        b = balance(platform, "enterprise")
        if b["granted"]:
            break
        time.sleep(0.2)
    time.sleep(2)  # a second grant, were there one, would have arrived by now
    b = balance(platform, "enterprise")
    assert b["granted"] == 500_000_000
    assert b["lots"][0]["reference"] == f"slice:{slice_id}"
    assert b["lots"][0]["tiers"] == ["edge", "regional"]
    assert b["lots"][0]["expires_at"] == ends.isoformat().replace("+00:00", "Z")


# Last: it kills the edge tier's infer replicas.
def test_infer_replicas_killed_mid_run_are_restarted_and_nothing_is_charged_wrongly(
    platform: dict[str, Any],
) -> None:
    before = balance(platform)
    # A 20 ms budget: only the edge meets it (and starts its replica if none runs).
    first = chat(platform, **{"x-tollgate-latency-budget-ms": "20"})
    assert first.status_code == 200, first.text
    victims = {n: r["pid"] for n, r in replicas(platform).items() if n.startswith("infer-edge-")}
    assert victims
    for pid in victims.values():
        os.kill(pid, signal.SIGKILL)
    # The edge's activator holds what comes meanwhile for the replicas the supervisor restarts
    # (as Knative's activator buffers for a new pod); the other tiers keep serving.
    r = chat(platform, **{"x-tollgate-latency-budget-ms": "20"})
    assert r.status_code == 200, r.text
    cheap = chat(platform)
    assert cheap.status_code == 200 and cheap.headers["x-tollgate-tier"] != "edge"
    deadline = time.monotonic() + 30
    while any(
        replicas(platform).get(n, {}).get("pid") in (None, pid) for n, pid in victims.items()
    ):
        assert time.monotonic() < deadline, "edge replicas not restarted"
        time.sleep(0.2)
    after = balance(platform)
    assert after["held"] == 0 and after["open_holds"] == 0
    charged = sum(int(x.headers["x-tollgate-credits-charged"]) for x in (first, r, cheap))
    assert after["spent"] - before["spent"] == charged
    invariant(after)


def test_no_secret_the_run_used_is_in_any_log(platform: dict[str, Any]) -> None:
    """After everything above: the logs of every process and of tollgate up itself hold none of
    the secrets the run used (credentials, keys, tokens)."""
    state = Path(platform["state"])
    secrets = {
        "admin token": ADMIN,
        "CAMARA credential": CAMARA,
        "demo API key": platform["key"],
        "capability signing key": json.loads((state / "keys" / "signing.jwk").read_text())["d"],
        "issuer signing key": json.loads((state / "issuer" / "key.jwk").read_text())["d"],
    }
    for token in sorted((state / "tokens").rglob("*")):
        if token.is_file():
            secrets[f"token {token.relative_to(state)}"] = token.read_text().strip()
    logs = [*sorted((state / "logs").glob("*.log")), platform["output"]]
    assert len(logs) >= 9
    found = [
        f"{what} in {log.name}"
        for log in logs
        for what, secret in secrets.items()
        if secret in log.read_text(errors="replace")
    ]
    assert found == []
