"""The trust boundary under attack, against a real `tollgate up` (real processes, real tokens,
real keys): every attempt is refused (401/403) and changes nothing. Balances, the journal
(`tollgate ledger verify`) and the dead letters are identical before and after.

An attacker here holds what a caller of the platform could: tokens of the wrong identity, expired
or for another audience (minted with the platform's own issuer key, so only the check under test
can refuse them), capabilities signed by another key, for another cluster, past their deadline,
above their bound, or replayed; and a real open hold's id, read from a response."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from events import types, wire
from events.network import SITE_DEGRADED
from events.quote import Quote, Usage
from functions.cloudevent import make_event, to_binary
from infra.local.demo import ACCOUNT
from infra.template.catalog import PING_EVENT_TYPE, PING_TYPE_EXTENSION
from infra.template.policies import ping_account
from tests.e2e.conftest import issuer, mint_capability, process_token
from tests.e2e.test_platform import MODEL, admin, balance, invariant
from tests.trust import capability_keys

pytestmark = [pytest.mark.model, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BROKER = "eventing.knative.dev/broker/tollgate/default"
COMMANDS: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "grant": (types.CREDITS_GRANT, {"account_id": ACCOUNT, "amount": 10**12}, {}),
    "authorize": (
        types.HOLD_AUTHORIZE,
        {"account_id": ACCOUNT, "amount": 10**6, "ttl_seconds": 86_400},
        {},
    ),
    "settle": (types.HOLD_SETTLE, {"hold_id": f"{ACCOUNT}:1", "amount": 1}, {}),
    "refund": (types.HOLD_REFUND, {"hold_id": f"{ACCOUNT}:1"}, {}),
    "sweep": (PING_EVENT_TYPE, {}, {PING_TYPE_EXTENSION: types.HOLDS_SWEEP}),
    "renew": (PING_EVENT_TYPE, {}, {PING_TYPE_EXTENSION: types.PLANS_RENEW}),
    "site-degraded": (
        SITE_DEGRADED,
        {"cluster": "regional-paris-1", "cause": "attack", "source_event": "x"},
        {},
    ),
}


def audience(process: str) -> str:
    return BROKER if process == "broker" else f"serving.knative.dev/service/tollgate/{process}"


def targets(p: dict[str, Any]) -> dict[str, str]:
    """Every process and the broker, by the audience name each checks."""
    out = {name: url + "/" for name, url in p["processes"].items()}
    out["broker"] = p["broker"]
    out["ingress"] = p["ingress"] + "/"
    return out


def credentials(p: dict[str, Any], target: str) -> dict[str, tuple[dict[str, str], int]]:
    """Each bad credential for ``target`` and the status it must get."""
    minting = issuer(p)
    right = audience(target)
    expired = minting.mint("ingress", right, 600, now=time.time() - 3600)
    return {
        "no token": ({}, 401),
        "a token of the wrong identity": (
            {"Authorization": f"Bearer {minting.mint('route', right)}"},
            403,
        ),
        "an expired token": ({"Authorization": f"Bearer {expired}"}, 401),
        "a token for another audience": (
            {"Authorization": f"Bearer {minting.mint('ingress', 'serving.knative.dev/x')}"},
            401,
        ),
        "a token of another issuer": (
            {"Authorization": f"Bearer {_stranger_token(right)}"},
            401,
        ),
    }


def _stranger_token(aud: str) -> str:
    from infra.local.issuer import Issuer

    stranger = Issuer("tollgate")
    stranger.url = "http://127.0.0.1:9"
    return stranger.mint("ingress", aud)


def snapshot(p: dict[str, Any]) -> dict[str, Any]:
    """Everything an attack could change: every account, the journal check, the dead letters."""
    session = admin()
    accounts = session.get(f"{p['admin']}/accounts", timeout=10).json()["accounts"]
    balances = {
        a: session.get(f"{p['admin']}/accounts/{a}/balance", timeout=10).json() for a in accounts
    }
    verify = subprocess.run(
        [sys.executable, "-m", "infra.cli", "ledger", "verify", "--store",
         f"sqlite:///{Path(p['state']) / 'tollgate.db'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    letters = session.get(f"{p['admin']}/deadletters", timeout=10).json()
    tiers = requests.get(p["route"] + "/tiers", timeout=10).json()
    degraded = {c["cluster"]: c["degraded"] for c in tiers["clusters"]}
    return {
        "balances": balances,
        "verify": (verify.returncode, verify.stdout),
        "dead letters": letters,
        "degraded": degraded,
    }


def settled(p: dict[str, Any]) -> None:
    """Until nothing is in flight: every hold resolved, the broker's queue empty."""
    balance(p)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not requests.get(p["broker"] + "/healthz", timeout=10).json()["deliveries"]:
            return
        time.sleep(0.2)


@pytest.fixture
def unchanged(platform: dict[str, Any]) -> Iterator[None]:
    settled(platform)
    before = snapshot(platform)
    assert before["verify"][0] == 0, before["verify"]
    yield
    time.sleep(1)  # anything accepted would be delivered by now
    settled(platform)
    assert snapshot(platform) == before


@pytest.mark.usefixtures("unchanged")
def test_every_command_with_a_bad_credential_is_refused_by_every_process_and_the_broker(
    platform: dict[str, Any],
) -> None:
    refused: list[str] = []
    for target, url in targets(platform).items():
        for what, (auth, status) in credentials(platform, target).items():
            for name, (event_type, data, extensions) in COMMANDS.items():
                event = make_event(event_type, "/attacker", data)
                message = to_binary(event)
                headers = {**message.headers, **auth}
                headers.update({f"ce-{k}": v for k, v in extensions.items()})
                answer = requests.post(url, headers=headers, data=message.body, timeout=10)
                if answer.status_code != status:
                    refused.append(f"{name} to {target} with {what}: {answer.status_code}")
    assert refused == []


@pytest.mark.usefixtures("unchanged")
def test_the_cluster_events_endpoint_takes_nothing_but_other_clusters_infer_metering(
    platform: dict[str, Any],
) -> None:
    url = platform["ingress"] + "/events/clusters"
    minting = issuer(platform)
    events_audience = url
    grant = to_binary(make_event(types.CREDITS_GRANT, "/attacker", COMMANDS["grant"][1]))
    cases = {
        "no token": ({}, 401),
        "the ingress's own identity": (minting.mint("ingress", events_audience), 403),
        "infer, for another audience": (minting.mint("infer-edge", BROKER), 401),
        "infer, granting credits": (minting.mint("infer-edge", events_audience), 403),
    }
    for what, (token, status) in cases.items():
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        answer = requests.post(url, headers={**grant.headers, **auth}, data=grant.body, timeout=10)
        assert answer.status_code == status, (what, answer.text)


def test_a_forged_zero_usage_completion_cannot_settle_a_real_open_hold(
    platform: dict[str, Any], tmp_path: Path
) -> None:
    before = balance(platform)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from one to twenty."}],
        "max_tokens": 24,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    auth = {"Authorization": f"Bearer {platform['key']}", wire.TIER: "regional"}
    with requests.post(
        platform["ingress"] + "/v1/chat/completions",
        json=body,
        headers=auth,
        stream=True,
        timeout=120,
    ) as stream:
        assert stream.status_code == 200, stream.text
        hold, cluster = stream.headers[wire.HOLD_ID], stream.headers[wire.CLUSTER]
        forged = {
            "hold_id": hold,
            "account_id": ACCOUNT,
            "model": MODEL,
            "cluster": cluster,
            "usage": {"prompt_tokens": 0, "completion_tokens": 0},
        }
        as_infer = {"Authorization": f"Bearer {process_token(platform, 'infer-regional-1')}"}
        stranger = capability_keys(tmp_path / "stranger")
        attempts = {
            # The hold id alone, no token: the broker refuses.
            "no token": ({**forged, "capability": "x" * 32}, {}, 401),
            # A real infer identity (its token file), but no capability the ingress signed: the
            # broker takes it, settle refuses it (and it is kept as a dead letter).
            "a forged capability": (
                {**forged, "capability": stranger.capability(hold, ACCOUNT, cluster=cluster)},
                as_infer,
                202,
            ),
        }
        for what, (data, headers, status) in attempts.items():
            event = to_binary(make_event(types.INFERENCE_COMPLETED, "/attacker", data))
            answer = requests.post(
                platform["broker"], headers={**event.headers, **headers}, data=event.body
            )
            assert answer.status_code == status, (what, answer.text)
        lines = [line for line in stream.iter_lines() if line.startswith(b"data: {")]
    usage = Usage.model_validate(json.loads(lines[-1][len(b"data: ") :])["usage"])
    after = balance(platform)
    # What was charged is the real usage, at the hold's own price: the published regional rate
    # of the version in effect.
    book = requests.get(platform["ingress"] + "/v1/prices", timeout=10).json()
    current = next(v for v in book["versions"] if v["version"] == book["current_version"])
    row = next(r for r in current["prices"] if r["tier"] == "regional" and r["model"] == MODEL)
    price = Quote(
        price_book=current["version"],
        input_per_million=row["input_per_million"],
        output_per_million=row["output_per_million"],
    )
    assert after["spent"] - before["spent"] == price.charge(usage, 0)
    assert after["open_holds"] == 0
    invariant(after)
    letters = admin().get(f"{platform['admin']}/deadletters", timeout=10).json()["events"]
    assert any(e["data"].get("hold_id") == hold for e in letters)  # kept, not applied


def test_infer_called_directly_serves_nothing_it_was_not_vouched_for(
    platform: dict[str, Any], tmp_path: Path
) -> None:
    before = balance(platform)
    infer = platform["infer"]["regional"] + "/v1/chat/completions"
    here = "regional-paris-1"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    stranger = capability_keys(tmp_path / "stranger")
    replayed = mint_capability(platform, f"{ACCOUNT}:999", ACCOUNT, here, max_tokens=8)
    first = requests.post(infer, json=body, headers={wire.CAPABILITY: replayed}, timeout=120)
    assert first.status_code == 200, first.text  # a real capability serves once
    cases = {
        "without a capability": (None, 401),
        "with a forged one": (stranger.capability(model=MODEL, cluster=here), 401),
        "with one for another cluster": (
            mint_capability(platform, f"{ACCOUNT}:998", ACCOUNT, "cloud-frankfurt-1"),
            401,
        ),
        "with max_tokens above its bound": (
            mint_capability(platform, f"{ACCOUNT}:997", ACCOUNT, here, max_tokens=4),
            400,
        ),
        "after its deadline": (
            mint_capability(platform, f"{ACCOUNT}:996", ACCOUNT, here, deadline_s=-60),
            401,
        ),
        "replayed": (replayed, 409),
    }
    for what, (capability, status) in cases.items():
        headers = {wire.CAPABILITY: capability} if capability else {}
        answer = requests.post(infer, json=body, headers=headers, timeout=60)
        assert answer.status_code == status, (what, answer.text)
    time.sleep(1)
    settled(platform)
    after = balance(platform)
    # The one served attempt reported usage for a hold that does not exist: refused downstream.
    assert {k: after[k] for k in ("available", "held", "spent")} == {
        k: before[k] for k in ("available", "held", "spent")
    }


def test_the_monthly_renewal_arrives_as_its_ping_source_and_grants(
    platform: dict[str, Any],
) -> None:
    """A happy path through the policies: the monthly ping, sent as its PingSource's identity,
    reaches the grant function through its trigger and renews the developer plan once."""
    session = admin()
    assert (
        session.post(
            f"{platform['admin']}/accounts",
            json={"account_id": "monthly", "plan": "developer"},
            timeout=10,
        ).status_code
        == 201
    )
    ping = make_event(
        PING_EVENT_TYPE, "/apis/v1/namespaces/tollgate/pingsources/monthly-grants", {}
    )
    message = to_binary(ping)
    token = issuer(platform).mint(ping_account("monthly-grants"), BROKER)
    headers = {
        **message.headers,
        f"ce-{PING_TYPE_EXTENSION}": types.PLANS_RENEW,
        "Authorization": f"Bearer {token}",
    }
    for _ in range(2):  # the schedule fires twice
        answer = requests.post(platform["broker"], headers=headers, data=message.body, timeout=10)
        assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 30
    while balance(platform, "monthly")["granted"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    assert balance(platform, "monthly")["granted"] == 20_000_000
