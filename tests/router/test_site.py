"""An ingress at a site (an edge or regional cluster) against the home ledger, in one process
over real HTTP: the home ingress with its ledger relay in front of a real ledger function on
sqlite, and a site ingress with a store of its own (no table of the home's) whose ledger and key
lookups go through the relay under its own identity. A request at the site is served, charged
on the home ledger exactly (one capture per request at its metered usage) from a lease of the
site's own; forged relay calls are refused and change nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from events import types
from events.ledger import usage_batch
from events.quote import Usage
from events.ratelimits import RateLimits
from events.sla import period_of
from functions.apikeys import ApiKeys, key_digest
from functions.app import create_app as create_function_app
from functions.auth.oidc import Discovery, TokenVerifier
from functions.auth.policy import SenderPolicy, SenderRule
from functions.auth.tokens import TokenFile
from functions.cloudevent import make_event, to_binary
from functions.emit import Emitter
from functions.rateshares import RUNNING_SK, subject_pk, window_sk
from functions.sla import Observation, tally
from functions.store import Store, StoreUnavailable
from functions.store.sqlite import SqliteStore
from ledger_fn.ledger import Ledger
from router_fn import lease
from router_fn.cluster_events import PATH as CLUSTER_EVENTS
from router_fn.cluster_events import cluster_events_blueprint
from router_fn.ingress_app import create_app as ingress_app
from router_fn.ledger_client import LedgerClient
from router_fn.ledger_relay import MAX_RUNNING_HOLD_S, PATH, ledger_relay_blueprint
from router_fn.ratelimit import RateLimiter
from router_fn.remote_senders import RemoteIssuer
from router_fn.site import RelayedCallers, RelayedShares, relayed_observation
from router_fn.tierstate import TierStates
from tests.http_server import serving
from tests.ledger.helpers import ledger_function, senders
from tests.router import metering_upstream
from tests.router.test_ingress import ledger_client, topology
from tests.router.test_lease import Leased, chat, kinds, metering_env
from tests.trust import CapabilityKeys, TestIssuer, nobody, sub

RELAY_AUDIENCE = "https://ingress.tollgate.home.example/sites/ledger"
SITE = "ingress-edge-a"  # the site ingress's ServiceAccount
RELAYED = (
    types.HOLD_AUTHORIZE,
    types.HOLD_REFUND,
    types.CALLER_LOOKUP,
    types.SLA_OBSERVED,
    types.RATES_HOLD,
)
WINDOW_S = 3600  # rate-limit windows: long, so a test's requests fall in one


@dataclass
class Sites:
    home: Leased  # the home ingress, its ledger and store
    site_url: str
    relay_url: str
    issuer: TestIssuer
    to_home: LedgerClient  # the site's client of the relay


@pytest.fixture
def sites(
    sqlite_store: Store,
    issuer: TestIssuer,
    cap_keys: CapabilityKeys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Sites]:
    monkeypatch.setattr(lease, "IDLE_S", 0.5)  # return leases soon after the test's requests
    ledger = Ledger(sqlite_store)
    site_store = SqliteStore(tmp_path / "site.db")  # the site's own: no API key, no ledger
    policy = SenderPolicy(
        RELAY_AUDIENCE,
        (SenderRule("relay-from-sites", (sub(SITE),), tuple({"type": t} for t in RELAYED)),),
    )
    verifier = TokenVerifier(Discovery(issuer.url), RELAY_AUDIENCE)
    with ExitStack() as stack:
        stack.callback(site_store.close)
        ledger_url = stack.enter_context(serving(ledger_function(ledger, issuer, cap_keys)))
        meter_log = metering_env(monkeypatch, issuer, cap_keys, tmp_path, ledger_url)
        edge_url = stack.enter_context(serving(metering_upstream.create_app()))
        the_topology = topology(edge_url, edge_url)
        home_ledger = ledger_client(ledger_url, issuer, tmp_path / "home")
        relay = ledger_relay_blueprint(
            [RemoteIssuer(verifier, frozenset({"edge-a"}))], policy, home_ledger, sqlite_store
        )
        home = ingress_app(
            the_topology,
            sqlite_store,
            home_ledger,
            senders=senders(issuer),
            signing_key=cap_keys.signing,
            states=TierStates(sqlite_store),
            network=relay,
            lease_ttl_s=30,
            limits=RateLimiter(sqlite_store, window_s=WINDOW_S),
        )
        home_url = stack.enter_context(serving(home))
        relay_url = home_url + PATH
        token = tmp_path / "site-tokens" / "relay"
        token.parent.mkdir()
        token.write_text(issuer.token(SITE, RELAY_AUDIENCE, 3600))
        to_home = LedgerClient(
            relay_url, None, authorize_token=TokenFile(token), refund_token=TokenFile(token)
        )
        site = ingress_app(
            the_topology,
            site_store,
            to_home,
            senders=senders(issuer),
            signing_key=cap_keys.signing,
            states=TierStates(site_store),
            lease_ttl_s=30,
            callers=RelayedCallers(to_home, the_topology),
            limits=RateLimiter(counters=RelayedShares(to_home), window_s=WINDOW_S),
        )
        site_url = stack.enter_context(serving(site))
        home_side = Leased(home_url, ledger, sqlite_store, meter_log)
        yield Sites(home_side, site_url, relay_url, issuer, to_home)


def at_site(sites: Sites) -> Leased:
    home = sites.home
    return Leased(sites.site_url, home.ledger, home.store, home.meter_log)


def test_a_request_at_the_site_is_served_and_charged_on_the_home_ledger(sites: Sites) -> None:
    home, site = sites.home, at_site(sites)
    key = home.key("acme", 1_000_000)
    answers = [chat(site, key, max_tokens=20) for _ in range(5)]
    assert [r.status_code for r in answers] == [200] * 5, answers[0].text
    site_leases = {r.headers["x-tollgate-hold-id"] for r in answers}
    assert len(site_leases) == 1  # the site's own lease served them all
    at_home = chat(home, key, max_tokens=20)
    assert at_home.status_code == 200
    assert at_home.headers["x-tollgate-hold-id"] not in site_leases  # home leases for itself
    balance = home.settled("acme", 6)
    entries = home.journal("acme")
    assert kinds(entries).count("capture") == 6 and "settle" not in kinds(entries)
    opened = {e["result"]["hold_id"] for e in entries if e["op"]["args"].get("lease")}
    assert site_leases < opened and kinds(entries).count("return_lease") >= 2
    charged = sum(int(r.headers["x-tollgate-credits-charged"]) for r in [*answers, at_home])
    edge = topology("", "").quote("tiny", "edge")
    assert edge is not None
    metered = sum(edge.charge(Usage.model_validate(m["usage"])) for m in home.metered())
    assert balance["spent"] == charged == metered
    assert (balance["held"], balance["available"]) == (0, 1_000_000 - charged)
    assert home.ledger.verify().ok


def test_an_unknown_or_revoked_key_is_refused_at_the_site(sites: Sites) -> None:
    home, site = sites.home, at_site(sites)
    assert chat(site, "tg_" + "x" * 43).status_code == 401
    key = home.key("acme", 1_000_000)
    ApiKeys(home.store).revoke("acme", key_digest(key)[:16])
    answer = chat(site, key)
    assert answer.status_code == 401 and "revoked" in answer.json()["error"]["message"]
    assert home.ledger.balance("acme")["held"] == 0


def _forge(
    sites: Sites, event_type: str, data: dict[str, Any], bearer: str | None
) -> requests.Response:
    message = to_binary(make_event(event_type, "/forged", data))
    headers = dict(message.headers)
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return requests.post(sites.relay_url, data=message.body, headers=headers, timeout=10)


def test_forged_relay_calls_are_refused_and_change_nothing(sites: Sites) -> None:
    home = sites.home
    key = home.key("acme", 1_000_000)
    assert chat(at_site(sites), key, max_tokens=20).status_code == 200
    home.settled("acme", 1)
    before = (home.ledger.balance("acme"), json.dumps(home.journal("acme")))
    issuer = sites.issuer
    site_token = issuer.token(SITE, RELAY_AUDIENCE)
    hold = {"account_id": "acme", "amount": 500_000, "ttl_seconds": 86_400}
    lookup = {"key_sha256": key_digest(key)}
    rates = _rates_hold(key_digest(key)[:16], RUNNING_SK, time.time() + 30)
    attempts: dict[str, tuple[str, dict[str, Any], str | None, int]] = {
        "no token": (types.HOLD_AUTHORIZE, hold, None, 401),
        "not a token": (types.HOLD_AUTHORIZE, hold, "forged", 401),
        "another audience": (
            types.HOLD_AUTHORIZE,
            hold,
            issuer.token(SITE, "serving.knative.dev/service/tollgate/authorize"),
            401,
        ),
        "expired": (types.HOLD_AUTHORIZE, hold, issuer.token(SITE, RELAY_AUDIENCE, -60), 401),
        "infer's identity": (
            types.HOLD_AUTHORIZE,
            hold,
            issuer.token("infer-edge", RELAY_AUDIENCE),
            403,
        ),
        "a lookup by infer": (
            types.CALLER_LOOKUP,
            lookup,
            issuer.token("infer-edge", RELAY_AUDIENCE),
            403,
        ),
        "a grant": (types.CREDITS_GRANT, {"account_id": "acme", "amount": 10**9}, site_token, 403),
        "a sweep": (types.HOLDS_SWEEP, {}, site_token, 403),
        "a refund of settled credits": (
            types.HOLD_REFUND,
            {"hold_id": "acme:1", "amount": 10},
            site_token,
            403,
        ),
        "a malformed authorize": (types.HOLD_AUTHORIZE, {"amount": -1}, site_token, 400),
        "a rate share without a token": (types.RATES_HOLD, rates, None, 401),
        "a rate share with a forged token": (types.RATES_HOLD, rates, "forged", 401),
        "a rate share by infer": (
            types.RATES_HOLD,
            rates,
            issuer.token("infer-edge", RELAY_AUDIENCE),
            403,
        ),
        "a malformed rate share": (types.RATES_HOLD, {**rates, "limits": {}}, site_token, 400),
        "an SLA observation by infer": (
            types.SLA_OBSERVED,
            _observed("acme", "f" * 32),
            issuer.token("infer-edge", RELAY_AUDIENCE),
            403,
        ),
    }
    for what, (event_type, data, bearer, status) in attempts.items():
        answer = _forge(sites, event_type, data, bearer)
        assert answer.status_code == status, (what, answer.text)
    assert (home.ledger.balance("acme"), json.dumps(home.journal("acme"))) == before
    assert home.ledger.verify().ok
    assert tally(home.store, "acme", period_of(time.time())).requests == 0
    assert home.store.get(subject_pk(key_digest(key)[:16]), RUNNING_SK) is None
    # The site's own identity is let through, and the lookup answers by the key's hash only.
    answer = _forge(sites, types.CALLER_LOOKUP, lookup, site_token)
    assert answer.status_code == 200 and json.loads(answer.content)["account_id"] == "acme"


def _rates_hold(subject: str, sk: str, until: float) -> dict[str, Any]:
    return {
        "replica": "e" * 32,
        "subject": subject,
        "sk": sk,
        "targets": {"running": 5},
        "limits": {"running": 5},
        "until": until,
    }


def _observed(account: str, request_id: str) -> dict[str, Any]:
    return {
        "account_id": account,
        "period": period_of(time.time()),
        "request_id": request_id,
        "budget_ms": 30,
        "ttft_ms": 45,
        "cluster": "edge-a",
        "model": "tiny",
        "at": int(time.time()),
    }


def test_the_sites_sla_observations_are_counted_at_home_once(sites: Sites) -> None:
    record = relayed_observation(sites.to_home)
    observation = Observation(
        request_id="a" * 32, budget_ms=30, ttft_ms=45, cluster="edge-a", model="tiny", at=1
    )
    period = period_of(time.time())
    record("acme", period, observation)
    record("acme", period, observation)  # a retry
    counted = tally(sites.home.store, "acme", period)
    assert (counted.requests, counted.met) == (1, 0)


class _Published(Emitter):
    """What the cluster-events endpoint publishes to the home broker (a unit test's fake)."""

    def __init__(self) -> None:
        super().__init__(None, None)
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, type: str, source: str, data: dict[str, Any], **_: Any) -> None:
        self.events.append((type, data))


def test_a_site_ingress_reports_its_stand_ins_for_any_cluster_infer_only_its_own(
    issuer: TestIssuer,
) -> None:
    events = "https://ingress.tollgate.home.example/events/clusters"
    completed = ({"type": types.INFERENCE_COMPLETED},)
    policy = SenderPolicy(
        events,
        (
            SenderRule("from-infer", (sub("infer-*"),), completed),
            SenderRule("from-site-ingresses", (sub(SITE),), completed),
        ),
    )
    published = _Published()
    verifier = TokenVerifier(Discovery(issuer.url), events)
    blueprint = cluster_events_blueprint(
        [RemoteIssuer(verifier, frozenset({"edge-a"}))], policy, published
    )
    app = create_function_app("ingress", senders=nobody(), blueprints=[blueprint])
    client = app.test_client()

    def report(sender: str, cluster: str, stand_in: bool) -> int:
        data = {"hold_id": "acme:1", "cluster": cluster, "stand_in": stand_in}
        message = to_binary(make_event(types.INFERENCE_COMPLETED, "/tests", data))
        auth = {"Authorization": f"Bearer {issuer.token(sender, events)}"}
        answer = client.post(CLUSTER_EVENTS, headers={**message.headers, **auth}, data=message.body)
        return answer.status_code

    # The site routed to regional-b: its stand-in for that attempt passes (settle checks its
    # capability); infer speaks only for its own cluster.
    assert report(SITE, "regional-b", True) == 202
    assert report("infer-edge", "regional-b", False) == 403
    assert report(SITE, "regional-b", False) == 403
    assert report("infer-edge", "edge-a", False) == 202
    assert [d["cluster"] for _, d in published.events] == ["regional-b", "edge-a"]


def test_a_batch_of_infer_reports_passes_only_if_every_report_is_about_its_clusters(
    issuer: TestIssuer,
) -> None:
    events = "https://ingress.tollgate.home.example/events/clusters"
    usage = ({"type": types.INFERENCE_USAGE},)
    policy = SenderPolicy(events, (SenderRule("from-infer", (sub("infer-*"),), usage),))
    published = _Published()
    verifier = TokenVerifier(Discovery(issuer.url), events)
    blueprint = cluster_events_blueprint(
        [RemoteIssuer(verifier, frozenset({"edge-a"}))], policy, published
    )
    client = create_function_app("ingress", senders=nobody(), blueprints=[blueprint]).test_client()

    def batch(*clusters: str) -> int:
        done = {
            "hold_id": "acme:1",
            "account_id": "acme",
            "model": "m",
            "cluster": "edge-a",
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            "capability": "c" * 32,
        }
        data = usage_batch((f"r{i}", {**done, "cluster": c}) for i, c in enumerate(clusters))
        message = to_binary(make_event(types.INFERENCE_USAGE, "/tests", data))
        auth = {"Authorization": f"Bearer {issuer.token('infer-edge', events)}"}
        answer = client.post(CLUSTER_EVENTS, headers={**message.headers, **auth}, data=message.body)
        return answer.status_code

    assert batch("edge-a", "edge-a") == 202
    assert batch("edge-a", "regional-b") == 403  # one report about a cluster it cannot speak for
    assert batch() == 400  # no reports: malformed
    assert [t for t, _ in published.events] == [types.INFERENCE_USAGE]


def test_the_home_and_a_site_together_admit_one_limit_per_window(sites: Sites) -> None:
    home, site = sites.home, at_site(sites)
    key = home.key("acme", 1_000_000)
    key_id = key_digest(key)[:16]
    ApiKeys(home.store).set_rate_limits("acme", key_id, RateLimits(requests_per_minute=6))
    # Each alone would admit all 8 (its own share of a pod-local counter was the whole limit).
    answers: dict[str, list[int]] = {"home": [], "site": []}
    for _ in range(8):
        for where, ingress in (("site", site), ("home", home)):
            answers[where].append(chat(ingress, key, max_tokens=20).status_code)
    admitted = {where: codes.count(200) for where, codes in answers.items()}
    assert set(answers["home"] + answers["site"]) == {200, 429}, answers
    assert sum(admitted.values()) <= 6 and admitted["site"] >= 1 and admitted["home"] >= 1
    # The site's share is in the home table, under the site's verified identity.
    item = home.store.get(subject_pk(key_id), window_sk(WINDOW_S, int(time.time() // WINDOW_S)))
    assert item is not None
    holders = item.data["holders"]
    site_entries = [r for r in holders if r.startswith(f"site:{sites.issuer.url}:")]
    assert len(site_entries) == 1 and SITE in site_entries[0]
    assert sum(int(h.get("requests", 0)) for h in holders.values()) <= 6


def test_a_site_cannot_hold_running_slots_far_ahead(sites: Sites) -> None:
    token = sites.issuer.token(SITE, RELAY_AUDIENCE)
    asked = _rates_hold("a" * 16, RUNNING_SK, time.time() + 10**6)
    answer = _forge(sites, types.RATES_HOLD, asked, token)
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.content) == {"mine": {"running": 5}, "total": {"running": 5}}
    item = sites.home.store.get(subject_pk("a" * 16), RUNNING_SK)
    assert item is not None
    (until,) = [h["until"] for h in item.data["holders"].values()]
    assert until <= time.time() + MAX_RUNNING_HOLD_S


def test_relayed_shares_are_unavailable_while_the_home_cannot_answer(tmp_path: Path) -> None:
    token = tmp_path / "relay"
    token.write_text("not-a-token")
    down = LedgerClient(
        "http://127.0.0.1:9/sites/ledger",
        None,
        authorize_token=TokenFile(token),
        refund_token=TokenFile(token),
        timeout_s=1,
    )
    with pytest.raises(StoreUnavailable):  # the rate limiter admits (fails open) on it
        RelayedShares(down).hold("a" * 16, RUNNING_SK, {"running": 1}, {"running": 1}, 1e10)
