"""Credit leases raced by real processes on a real store (sqlite and DynamoDB Local): 4 ingress
processes (`tollgate serve ingress`, leases on, a short TTL) x 8 clients against one account,
one `tollgate serve ledger`, and an upstream that meters every request as infer does
(tests/router/metering_upstream.py). Afterwards: nothing spent beyond what was granted, every
request captured once and exactly at its metered usage, every lease and hold closed, and
`tollgate ledger verify` clean; the same with one ingress SIGKILLed mid-run (its leases come
back at their TTL); and at low balance the per-request path drains the account to exactly 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from events import types, wire
from events.openai import ChatRequest
from events.quote import Quote, Usage
from functions.apikeys import ApiKeys
from functions.auth import keys, senders, tokens
from functions.auth.policy import SenderPolicy, SenderRule, Trust
from functions.store import Store
from infra.template.load import load_template
from infra.wiring import topology
from ledger_fn.ledger import Ledger
from router_fn.ingress import ENGINE_BOUND_MS
from tests.dynamodb_local import free_port
from tests.trust import TestIssuer, sub

ROOT = Path(__file__).resolve().parents[2]
LEDGER = "serving.knative.dev/service/tollgate/ledger"
MODEL = "SmolLM2-135M-Instruct"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Capital of France?"}]}
MAX_TOKENS = 16
INGRESSES = 4
CLIENTS = 8  # per ingress
LEASE_TTL_S = 3


def requests_each(store_url: str) -> int:
    """Requests per client: DynamoDB Local commits ~10 journal entries a second on these 2
    cores (each request is one, captured on its own), sqlite ~10 times that."""
    return 2 if store_url.startswith("dynamodb") else 8


def worst_case() -> tuple[Quote, int]:
    """The quote requests are priced at (the regional tier) and one request's worst case."""
    topo = topology(load_template(ROOT / "template.yaml")).at(time.time())
    spec = topo.model(MODEL)
    assert spec is not None
    quote = topo.quote(spec.name, "regional")
    assert quote is not None

    bound = ChatRequest.model_validate({**BODY, "max_tokens": MAX_TOKENS}).prompt_tokens_bound()
    return quote, quote.worst_case(bound, MAX_TOKENS, ENGINE_BOUND_MS)


@dataclass
class Platform:
    tmp: Path
    store_url: str
    ledger: Ledger
    key: str
    meter_log: Path
    ingresses: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in [p for _, p in self.ingresses] + self.others:
            if proc.poll() is None:
                proc.terminate()
        for proc in [p for _, p in self.ingresses] + self.others:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def metered(self) -> list[dict[str, Any]]:
        if not self.meter_log.exists():
            return []
        lines = self.meter_log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]


def start(args: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        args,
        env={**os.environ, **env, "PORT": str(port), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args} exited: {log.read_text()[-2000:]}")
        try:
            requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return proc
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{args} did not start: {log.read_text()[-2000:]}")


def identities(tmp: Path, issuer: TestIssuer) -> dict[str, dict[str, str]]:
    """Each process's identity as tollgate up gives it: the ingress may authorize, refund and
    report relayed usage at the ledger; the upstream (standing in for infer) may report usage."""
    rules = (
        SenderRule("ingress", (sub("ingress"),), (
            {"type": types.HOLD_AUTHORIZE}, {"type": types.HOLD_REFUND},
            {"type": types.INFERENCE_COMPLETED}, {"type": types.INFERENCE_FAILED},
        )),
        SenderRule("infer", (sub("infer"),), (
            {"type": types.INFERENCE_COMPLETED}, {"type": types.INFERENCE_USAGE},
            {"type": types.INFERENCE_FAILED},
        )),
    )  # fmt: skip
    trust = tmp / "trust.json"
    trust.write_text(json.dumps(Trust({LEDGER: SenderPolicy(LEDGER, rules)}).to_json()))
    keys.rotate(tmp / "keys")
    out = {}
    targets = {tokens.AUTHORIZE: LEDGER, tokens.REFUND: LEDGER, tokens.SINK: LEDGER}
    for process in ("ledger", "ingress", "infer"):
        directory = tmp / "tokens" / process
        directory.mkdir(parents=True)
        for target, audience in targets.items():
            (directory / target).write_text(issuer.token(process, audience, 3600))
        out[process] = {
            senders.DISCOVERY_ENV: issuer.url,
            senders.TRUST_ENV: str(trust),
            senders.AUDIENCE_ENV: f"serving.knative.dev/service/tollgate/{process}",
            tokens.TOKEN_DIR_ENV: str(directory),
            keys.KEYS_ENV: str(tmp / "keys"),
        }
    return out


@pytest.fixture
def platform(
    real_store: Store, real_store_url: str, issuer: TestIssuer, tmp_path: Path
) -> Iterator[Platform]:
    ledger = Ledger(real_store)
    ledger.open_account("racer")
    key = ApiKeys(real_store).issue("racer")["key"]
    p = Platform(tmp_path, real_store_url, ledger, key, tmp_path / "metered.jsonl")
    yield p
    p.stop()


def run(
    p: Platform,
    issuer: TestIssuer,
    *,
    exact: bool = False,
    ingress_env: Mapping[str, str] | None = None,
    upstream_env: Mapping[str, str] | None = None,
) -> None:
    """Start the ledger, the metering upstream and the ingresses (with these env additions)."""
    ids = identities(p.tmp, issuer)
    ledger_port, upstream_port = free_port(), free_port()
    ledger_url = f"http://127.0.0.1:{ledger_port}"
    upstream = f"http://127.0.0.1:{upstream_port}"
    template = load_template(ROOT / "template.yaml")
    endpoints = p.tmp / "endpoints.json"
    clusters = {c.name: {m: upstream for m in c.models} for c in template.clusters}
    endpoints.write_text(json.dumps({"clusters": clusters, "emulated": False}))
    base = {"TOLLGATE_STORE": p.store_url, "TOLLGATE_TEMPLATE": str(ROOT / "template.yaml")}
    serve = [sys.executable, "-m", "infra.cli", "serve"]
    p.others.append(
        start(
            [*serve, "ledger"],
            {**base, **ids["ledger"], "TOLLGATE_ADMIN_TOKEN": "race"},
            ledger_port,
            p.tmp / "ledger.log",
        )
    )
    meter = {
        "K_SINK": ledger_url,
        "METER_LOG": str(p.meter_log),
        "METER_EXACT": str(int(exact)),
        "METER_OUTBOX_DIR": str(p.tmp / "upstream-outbox"),
    }
    meter |= upstream_env or {}
    p.others.append(
        start(
            [sys.executable, "-m", "tests.router.metering_upstream", str(upstream_port)],
            {**ids["infer"], **meter},
            upstream_port,
            p.tmp / "upstream.log",
        )
    )
    for n in range(INGRESSES):
        port = free_port()
        env = {
            **base,
            **ids["ingress"],
            "K_SINK": ledger_url,
            "TOLLGATE_LEDGER_URL": ledger_url,
            "TOLLGATE_LOCAL_ENDPOINTS": str(endpoints),
            "TOLLGATE_PROBE_INTERVAL_S": "0",
            "TOLLGATE_OUTBOX_DIR": str(p.tmp / f"outbox-{n}"),
            "TOLLGATE_LEASE_TTL_SECONDS": str(LEASE_TTL_S),
            # Short: a killed ingress's own holds come back soon too (its leases at LEASE_TTL_S).
            "TOLLGATE_HOLD_TTL_SECONDS": "20",
            # DynamoDB Local takes ~0.1 s a commit here: 32 requests queue for seconds.
            "TOLLGATE_LEDGER_TIMEOUT_SECONDS": "30",
            **(ingress_env or {}),
        }
        log = p.tmp / f"ingress-{n}.log"
        p.ingresses.append((f"http://127.0.0.1:{port}", start([*serve, "ingress"], env, port, log)))


def clients(p: Platform, requests_each: int, *, kill_after_s: float | None = None) -> Counter[int]:
    """CLIENTS clients per ingress, each sending ``requests_each`` requests (until a 402: no
    credits for it); optionally SIGKILL the first ingress mid-run."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {p.key}", wire.TIER: "regional"}

    def client(url: str) -> None:
        session = requests.Session()
        for _ in range(requests_each):
            try:
                r = session.post(
                    url + "/v1/chat/completions",
                    json={**BODY, "max_tokens": MAX_TOKENS},
                    headers=headers,
                    timeout=30,
                )
                status = r.status_code
            except requests.ConnectionError:
                status = 0  # its ingress was killed
            with lock:
                statuses[status] += 1
            if status in (0, 402):  # its ingress was killed; the account has no more for it
                return

    threads = [
        threading.Thread(target=client, args=(url,))
        for url, _ in p.ingresses
        for _ in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        p.ingresses[0][1].send_signal(signal.SIGKILL)
    for t in threads:
        t.join()
    return statuses


def settle_all(p: Platform, served: int, *, expect_expiries: bool) -> None:
    """Until every metering was delivered and every lease and hold closed (returned when idle,
    or expired at its TTL: the sweep runs as the ledger's schedule would)."""
    deadline = time.monotonic() + 60
    expired = 0
    while True:
        if len(p.metered()) >= served:
            if p.ledger.balance("racer")["open_holds"] == 0:
                break
            expired += p.ledger.sweep()["holds_expired"]
        assert time.monotonic() < deadline, (len(p.metered()), served, p.ledger.balance("racer"))
        time.sleep(0.5)
    if not expect_expiries:
        assert expired == 0, "a lease of a live ingress expired instead of being returned"


def check_books(p: Platform, quote: Quote, granted: int) -> dict[str, Any]:
    """Every request captured once at exactly its metered usage; nothing beyond the grant."""
    balance = p.ledger.balance("racer")
    assert balance["granted"] == granted
    assert balance["held"] == 0 and balance["open_holds"] == 0
    assert balance["spent"] + balance["available"] + balance["expired"] == granted
    assert balance["shortfall"] == 0 and balance["waived"] == 0
    entries = []
    after = 0
    while page := p.ledger.journal("racer", after=after, limit=500):
        entries += page
        after = page[-1]["seq"]
    charges = [e for e in entries if e["op"]["kind"] in ("capture", "settle")]
    metered = p.metered()
    expected = sum(quote.charge(Usage.model_validate(m["usage"])) for m in metered)
    assert len(charges) == len(metered)  # one journal record per request, no more
    for entry in charges:
        usage = Usage.model_validate(entry["op"]["args"]["usage"])
        assert entry["result"]["captured"] == quote.charge(usage)
    assert balance["spent"] == expected == sum(e["result"]["captured"] for e in charges)
    leased = [e for e in entries if e["op"]["kind"] == "capture"]
    assert leased, "no request was served from a lease"
    report = p.ledger.verify()
    assert report.ok, report.problems
    return balance


def test_four_ingresses_race_one_account_through_leases(
    platform: Platform, issuer: TestIssuer
) -> None:
    quote, worst = worst_case()
    granted = 50 * worst
    platform.ledger.execute("racer", "grant", {"amount": granted})
    run(platform, issuer)
    statuses = clients(platform, requests_each(platform.store_url))
    assert set(statuses) <= {200, 402}, statuses
    settle_all(platform, statuses[200], expect_expiries=False)
    balance = check_books(platform, quote, granted)
    assert balance["spent"] <= granted
    # The balance ran low: some requests were held one by one, some refused.
    assert statuses[402] > 0


def test_a_killed_ingress_leases_return_at_their_ttl(
    platform: Platform, issuer: TestIssuer
) -> None:
    quote, worst = worst_case()
    granted = 50 * worst
    platform.ledger.execute("racer", "grant", {"amount": granted})
    run(platform, issuer)
    statuses = clients(platform, requests_each(platform.store_url), kill_after_s=1.0)
    assert set(statuses) <= {0, 200, 402}, statuses
    # What the killed ingress served is still metered (its clients may not have seen it).
    settle_all(platform, statuses[200], expect_expiries=True)
    check_books(platform, quote, granted)


def test_at_low_balance_requests_are_held_one_by_one_down_to_zero(
    platform: Platform, issuer: TestIssuer
) -> None:
    _, worst = worst_case()
    granted = 3 * worst  # under a lease's minimum: every request is held on its own
    platform.ledger.execute("racer", "grant", {"amount": granted})
    run(platform, issuer, exact=True)  # each request uses all of its worst case
    statuses = clients(platform, 2)
    assert statuses[200] == 3 and statuses[402] == INGRESSES * CLIENTS, statuses
    settle_all(platform, 3, expect_expiries=False)
    balance = p_balance = platform.ledger.balance("racer")
    assert (p_balance["available"], balance["spent"], balance["held"]) == (0, granted, 0)
    entries = platform.ledger.journal("racer", limit=500)
    assert not [e for e in entries if e["op"]["kind"] == "capture"]  # no lease was opened
    assert platform.ledger.verify().ok
