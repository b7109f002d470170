"""The ingress with credit leases, in one process over real HTTP: a real ledger function on
sqlite, and an upstream that meters as infer does (tests/router/metering_upstream.py). Requests
are admitted from the lease (one lease hold, one capture per request at its metered usage), the
lease goes back when idle, a failed-over attempt of a lease is voided and charged once, and an
account at low balance is held request by request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, Response

from events import types
from events.quote import Usage
from functions.apikeys import ApiKeys
from functions.metrics import EVENTS
from functions.store import Store
from ledger_fn.ledger import Ledger
from router_fn import lease
from router_fn.ingress_app import create_app as ingress_app
from router_fn.tierstate import TierStates
from tests.http_server import serving
from tests.ledger.helpers import AUDIENCE, SENDER, ledger_function, senders
from tests.router import metering_upstream
from tests.router.test_ingress import ledger_client, topology
from tests.trust import CapabilityKeys, TestIssuer


@dataclass
class Leased:
    url: str
    ledger: Ledger
    store: Store
    meter_log: Path

    def key(self, account: str, credits: int) -> str:
        self.ledger.open_account(account)
        self.ledger.execute(account, "grant", {"amount": credits})
        key: str = ApiKeys(self.store).issue(account)["key"]
        return key

    def metered(self) -> list[dict[str, Any]]:
        if not self.meter_log.exists():
            return []
        return [json.loads(line) for line in self.meter_log.read_text().splitlines()]

    def settled(self, account: str, served: int) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while len(self.metered()) < served or self.ledger.balance(account)["open_holds"]:
            assert time.monotonic() < deadline, self.ledger.balance(account)
            time.sleep(0.1)
        return self.ledger.balance(account)

    def journal(self, account: str) -> list[dict[str, Any]]:
        return self.ledger.journal(account, limit=500)


def metering_env(
    monkeypatch: pytest.MonkeyPatch,
    issuer: TestIssuer,
    cap_keys: CapabilityKeys,
    tmp_path: Path,
    ledger_url: str,
) -> Path:
    """Set the metering upstream's environment: it checks capabilities and sends what it metered
    to the ledger at ``ledger_url`` as the events' sender. Returns the log of what it metered."""
    sink_token = tmp_path / "upstream-tokens" / "sink"
    sink_token.parent.mkdir()
    sink_token.write_text(issuer.token(SENDER, AUDIENCE, 3600))
    meter_log = tmp_path / "metered.jsonl"
    monkeypatch.setenv("K_SINK", ledger_url)
    monkeypatch.setenv("TOLLGATE_TOKEN_DIR", str(sink_token.parent))
    monkeypatch.setenv("TOLLGATE_CAPABILITY_KEYS", str(cap_keys.directory))
    monkeypatch.setenv("METER_LOG", str(meter_log))
    monkeypatch.setenv("METER_OUTBOX_DIR", str(tmp_path / "upstream-outbox"))
    return meter_log


@pytest.fixture
def leased(
    request: pytest.FixtureRequest,
    sqlite_store: Store,
    issuer: TestIssuer,
    cap_keys: CapabilityKeys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Leased]:
    """Parametrized indirectly: how many requests the edge cluster's replica takes at once."""
    monkeypatch.setattr(lease, "IDLE_S", 0.5)  # return leases soon after the test's requests
    concurrency: int = getattr(request, "param", 1)
    ledger = Ledger(sqlite_store)
    the_ledger = ledger_function(ledger, issuer, cap_keys)
    with ExitStack() as stack:
        ledger_url = stack.enter_context(serving(the_ledger))
        meter_log = metering_env(monkeypatch, issuer, cap_keys, tmp_path, ledger_url)
        edge_url = stack.enter_context(serving(metering_upstream.create_app()))
        regional_url = stack.enter_context(serving(_failing()))
        app = ingress_app(
            topology(edge_url, regional_url, concurrency=concurrency),
            sqlite_store,
            ledger_client(ledger_url, issuer, tmp_path),
            senders=senders(issuer),
            signing_key=cap_keys.signing,
            states=TierStates(sqlite_store),
            lease_ttl_s=30,
        )
        url = stack.enter_context(serving(app))
        yield Leased(url, ledger, sqlite_store, meter_log)


def _failing() -> Flask:
    """The regional cluster: fails every attempt before its first byte."""
    app = Flask("regional")

    @app.post("/v1/chat/completions")
    def chat() -> Response:
        return Response('{"error": {"message": "engine down"}}', status=503)

    return app


def chat(p: Leased, key: str, **body: Any) -> requests.Response:
    payload = {"model": "Tiny-1", "messages": [{"role": "user", "content": "hi"}], **body}
    auth = {"Authorization": f"Bearer {key}", "x-tollgate-tier": "edge"}
    return requests.post(p.url + "/v1/chat/completions", json=payload, headers=auth, timeout=30)


def kinds(entries: list[dict[str, Any]]) -> list[str]:
    return [e["op"]["kind"] for e in entries]


def test_requests_are_admitted_from_a_lease_and_captured_one_by_one(leased: Leased) -> None:
    key = leased.key("acme", 1_000_000)
    answers = [chat(leased, key, max_tokens=20) for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 6
    holds = {r.headers["x-tollgate-hold-id"] for r in answers}
    assert len(holds) == 1  # one lease served them all
    balance = leased.settled("acme", 6)  # metered, and the idle lease returned and closed
    entries = leased.journal("acme")
    assert kinds(entries).count("capture") == 6 and "settle" not in kinds(entries)
    lease_opened = [e for e in entries if e["op"]["args"].get("lease")]
    assert len(lease_opened) >= 1 and "return_lease" in kinds(entries)
    charged = sum(int(r.headers["x-tollgate-credits-charged"]) for r in answers)
    edge = topology("", "").quote("tiny", "edge")
    assert edge is not None
    metered = sum(edge.charge(Usage.model_validate(m["usage"])) for m in leased.metered())
    assert balance["spent"] == charged == metered
    assert (balance["held"], balance["available"]) == (0, 1_000_000 - charged)
    assert leased.ledger.verify().ok


@pytest.mark.parametrize("leased", [8], indirect=True)
def test_concurrent_leased_requests_are_reported_in_batches_each_captured_once(
    leased: Leased,
) -> None:
    """Infer's metering (the upstream's outbox) sends what is due as one inference.usage: under
    load one call to the ledger carries several requests, each still its own journal record."""
    key = leased.key("acme", 1_000_000)
    batches = EVENTS.labels("ledger", types.INFERENCE_USAGE, "2xx")
    before = batches._value.get()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: chat(leased, key, max_tokens=20), range(48)))
    assert [r.status_code for r in answers] == [200] * 48, answers[-1].text
    balance = leased.settled("acme", 48)
    # One record per request: a capture from the lease, or a settle of the request's own hold
    # when the lease was being renewed under this load.
    records = [e for e in leased.journal("acme") if e["op"]["kind"] in ("capture", "settle")]
    assert len(records) == 48
    charged = sum(int(r.headers["x-tollgate-credits-charged"]) for r in answers)
    edge = topology("", "").quote("tiny", "edge")
    assert edge is not None
    metered = sum(edge.charge(Usage.model_validate(m["usage"])) for m in leased.metered())
    assert balance["spent"] == charged == metered
    assert 1 <= batches._value.get() - before < 48  # fewer calls than requests
    assert leased.ledger.verify().ok


def test_a_failed_attempt_of_a_lease_is_voided_and_the_request_charged_once(
    leased: Leased,
) -> None:
    key = leased.key("acme", 1_000_000)
    # Without a tier hint the cheaper regional cluster is tried first; it fails before output.
    payload = {"model": "Tiny-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}
    auth = {"Authorization": f"Bearer {key}"}
    for _ in range(3):
        r = requests.post(leased.url + "/v1/chat/completions", json=payload, headers=auth)
        assert r.status_code == 200 and r.headers["x-tollgate-tier"] == "edge", r.text
    balance = leased.settled("acme", 3)
    entries = leased.journal("acme")
    voids = [e for e in entries if e["op"]["kind"] == "capture" and e["op"]["args"].get("void")]
    served = [e for e in entries if e["op"]["kind"] in ("capture", "settle") and e not in voids]
    assert len(served) == 3
    assert balance["spent"] == sum(e["result"]["captured"] for e in served)
    assert all(e["result"]["captured"] == 0 for e in voids)
    # Every regional attempt was voided: a lease request's void, or its own hold's refund.
    own_voids = [e for e in entries if e["op"]["kind"] == "refund" and e["result"].get("voided")]
    assert len(voids) + len(own_voids) == 3


def test_at_low_balance_each_request_is_held_on_its_own(leased: Leased) -> None:
    # 20 tokens at the edge's 2 credits (max_tokens) + the prompt bound: ~60 credits a request.
    key = leased.key("poor", 150)
    first = chat(leased, key, max_tokens=20)
    assert first.status_code == 200, first.text
    leased.settled("poor", 1)
    entries = leased.journal("poor")
    # The ingress asked for a lease (it knew no balance yet); the ledger declined it.
    asked = [e for e in entries if e["op"]["args"].get("lease")]
    assert asked and all(e["result"].get("declined") for e in asked)
    assert kinds(entries).count("settle") == 1 and "capture" not in kinds(entries)
    assert leased.ledger.balance("poor")["held"] == 0
