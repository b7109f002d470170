"""The ingress over real HTTP: a real ledger function, real sqlite, and upstream infer servers
that answer as the infer function does (canned, so each failure mode can be chosen)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, Response, request

from events import wire
from events.capability import verify
from events.quote import Quote
from events.types import INFERENCE_COMPLETED
from functions.apikeys import ApiKeys
from functions.auth.tokens import TokenFile
from functions.cloudevent import make_event, to_binary
from functions.store import Store
from ledger_fn.ledger import Ledger
from router_fn.ingress_app import create_app as ingress_app
from router_fn.ledger_client import LedgerClient
from router_fn.tierstate import TierStates
from router_fn.topology import ClusterSpec, ModelSpec, PlanSpec, Topology
from tests.http_server import serving
from tests.ledger.helpers import AUDIENCE, ledger_function, senders
from tests.trust import CapabilityKeys, TestIssuer

QUOTE = Quote(price_book="t1", input_per_million=1_000_000, output_per_million=2_000_000)
CHEAP = Quote(price_book="t1", input_per_million=500_000, output_per_million=1_000_000)


@dataclass
class Upstream:
    """A stand-in infer function: ``mode`` picks how it answers. ``ok``; ``500``/``400``;
    ``cut``: a stream that dies after two words (as infer killed mid-stream), a whole answer
    that dies half-way; ``settle-then-503``: settles its hold with the ledger at ``settle_url``
    (as an infer that finished after the ingress gave up: with the attempt's capability, checked
    with ``keys``, and the tests' sender's token ``bearer``) and answers 503; ``429``: at
    capacity, with ``retry_after``; ``hold``: one token, then nothing until ``released``."""

    mode: str = "ok"
    calls: list[dict[str, Any]] = field(default_factory=list)
    retry_after: int = 7  # what mode "429" (at capacity) answers
    released: threading.Event = field(default_factory=threading.Event)  # ends mode "hold"
    settle_url: str | None = None
    keys: CapabilityKeys | None = None
    bearer: dict[str, str] = field(default_factory=dict)

    def app(self) -> Flask:
        app = Flask("upstream")

        @app.post("/v1/chat/completions")
        def chat() -> Response:
            body = request.get_json()
            peer = request.environ.get("REMOTE_PORT")  # the connection it came on
            self.calls.append({"body": body, "headers": dict(request.headers), "peer": peer})
            if self.mode == "500":
                return Response('{"error": {"message": "engine down"}}', status=503)
            if self.mode == "429":
                error = {"message": "at capacity", "type": "rate_limit_error", "code": "queue_full"}
                headers = {"Retry-After": str(self.retry_after)}
                return Response(json.dumps({"error": error}), status=429, headers=headers)
            if self.mode == "hold":  # a long generation: one token, then until released
                return Response(self._held(body), mimetype="text/event-stream")
            if self.mode == "400":
                error = {"message": "prompt too long", "code": "context_length_exceeded"}
                return Response(json.dumps({"error": error}), status=400)
            if self.mode == "settle-then-503":
                self._settle(request.headers[wire.CAPABILITY])
                return Response('{"error": {"message": "gave up"}}', status=503)
            if body.get("stream"):
                return Response(self._stream(body), mimetype="text/event-stream")
            reply = {
                "object": "chat.completion",
                "choices": [{"message": {"role": "assistant", "content": "Paris"}, "index": 0}],
                "usage": USAGE,
            }
            if self.mode == "cut":
                return Response(_dies_after(json.dumps(reply)[:20]), mimetype="application/json")
            return Response(json.dumps(reply), mimetype="application/json")

        return app

    def _stream(self, body: dict[str, Any]) -> Iterator[str]:
        # One write per event, as a real stream arrives: the relay must pass them all.
        options = body.get("stream_options") or {}
        words = ("Par", "is", "!")
        for n, word in enumerate(words, start=1):
            chunk: dict[str, Any] = {"choices": [{"delta": {"content": word}, "index": 0}]}
            if options.get("continuous_usage_stats"):
                chunk["usage"] = {"prompt_tokens": 11, "completion_tokens": n}
            yield f"data: {json.dumps(chunk)}\n\n"
            if self.mode == "cut" and n == 2:
                raise ConnectionError("infer died")  # the server drops the connection
        if options.get("include_usage"):
            last = {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3}}
            yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"

    def _held(self, body: dict[str, Any]) -> Iterator[str]:
        usage = (body.get("stream_options") or {}).get("continuous_usage_stats")
        for n, word in enumerate(("Par", "is"), start=1):
            chunk: dict[str, Any] = {"choices": [{"delta": {"content": word}, "index": 0}]}
            if usage:
                chunk["usage"] = {"prompt_tokens": 11, "completion_tokens": n}
            yield f"data: {json.dumps(chunk)}\n\n"
            if n == 1:
                self.released.wait(30)
        yield "data: [DONE]\n\n"

    def _settle(self, token: str) -> None:
        assert self.settle_url is not None and self.keys is not None
        vouched = verify(token, self.keys.verify.get(), audience=None)
        data = {
            "hold_id": vouched.hold_id,
            "account_id": vouched.account_id,
            "model": "Tiny-1",
            "tier": vouched.tier,
            "cluster": vouched.cluster,
            "usage": USAGE,
            "capability": token,
        }
        event = make_event(INFERENCE_COMPLETED, "/upstream", data, id=vouched.hold_id)
        message = to_binary(event)
        headers = {**message.headers, **self.bearer}
        answer = requests.post(self.settle_url, headers=headers, data=message.body)
        assert answer.status_code == 200, answer.text


USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


def _dies_after(text: str) -> Iterator[str]:
    yield text
    raise ConnectionError("infer died")


@dataclass
class Platform:
    url: str
    key: str
    ledger: Ledger
    edge: Upstream
    regional: Upstream
    keys: CapabilityKeys
    states: TierStates  # the shared live view the ingress routes on (as the prober writes it)


MODEL = ModelSpec("tiny", "Tiny-1", 135_000_000, 4096)  # one replica of one slot per cluster


def topology(edge_url: str, regional_url: str, *, concurrency: int = 1) -> Topology:
    """``concurrency``: requests one replica of Tiny-1 takes at once (the router counts them)."""
    clusters = (
        ClusterSpec("edge-a", "edge", "FR", 8, 13 * 10**9, {"tiny": edge_url}),
        ClusterSpec("regional-b", "regional", "FR", 30, 70 * 10**9, {"tiny": regional_url}),
    )
    return Topology(
        clusters,
        {
            "tiny": replace(MODEL, concurrency=concurrency),
            "big": ModelSpec("big", "Big-70B", 70 * 10**9, 8192),
        },
        {("tiny", "edge"): QUOTE, ("tiny", "regional"): CHEAP},
        {"no-tiny": PlanSpec("no-tiny", models=frozenset({"big"}))},
    )


def ledger_client(url: str, issuer: TestIssuer, token_dir: Path) -> LedgerClient:
    """The ingress's client of the ledger, presenting the tests' sender's token."""
    token = token_dir / "ledger"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text(issuer.token("tester", AUDIENCE), encoding="utf-8")
    return LedgerClient(url, None, authorize_token=TokenFile(token), refund_token=TokenFile(token))


@pytest.fixture
def platform(
    sqlite_store: Store, issuer: TestIssuer, cap_keys: CapabilityKeys, tmp_path: Path
) -> Iterator[Platform]:
    ledger = Ledger(sqlite_store)
    ledger.open_account("acme")
    ledger.execute("acme", "grant", {"amount": 100_000})
    key = ApiKeys(sqlite_store).issue("acme")["key"]
    edge, regional = Upstream(), Upstream()
    the_ledger = ledger_function(ledger, issuer, cap_keys)
    with ExitStack() as stack:
        ledger_url = stack.enter_context(serving(the_ledger))
        edge_url = stack.enter_context(serving(edge.app(), kept_alive=True))
        regional_url = stack.enter_context(serving(regional.app(), kept_alive=True))
        app = ingress_app(
            topology(edge_url, regional_url),
            sqlite_store,
            ledger_client(ledger_url, issuer, tmp_path),
            senders=senders(issuer),
            signing_key=cap_keys.signing,
            states=TierStates(sqlite_store),
        )
        url = stack.enter_context(serving(app))
        yield Platform(url, key, ledger, edge, regional, cap_keys, TierStates(sqlite_store))
        edge.released.set()
        regional.released.set()


def chat(
    p: Platform, *, key: str | None = None, headers: dict[str, str] | None = None, **body: Any
) -> requests.Response:
    payload = {
        "model": "Tiny-1",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 20,
        **body,
    }
    auth = {"Authorization": f"Bearer {key or p.key}", **(headers or {})}
    return requests.post(p.url + "/v1/chat/completions", json=payload, headers=auth, timeout=30)


def test_a_request_is_routed_held_and_priced(platform: Platform) -> None:
    r = chat(platform, headers={"x-tollgate-latency-budget-ms": "20"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Paris"
    assert r.headers["x-tollgate-tier"] == "edge"  # only the edge meets a 20 ms budget
    assert "edge-a" in r.headers["x-tollgate-route-reason"]
    hold_id = r.headers["x-tollgate-hold-id"]
    # Priced by the quote: 11 prompt x 1 + 5 completion x 2 credits.
    assert r.headers["x-tollgate-credits-charged"] == "21"
    sent = platform.edge.calls[0]
    headers = {k.lower(): v for k, v in sent["headers"].items()}
    capability = verify(headers[wire.CAPABILITY], platform.keys.verify.get(), audience="edge-a")
    assert (capability.hold_id, capability.account_id) == (hold_id, "acme")
    assert (capability.model, capability.max_tokens) == ("Tiny-1", 20)
    assert sent["body"]["model"] == "Tiny-1" and sent["body"]["max_tokens"] == 20
    balance = platform.ledger.balance("acme")
    # Settlement is asynchronous (the infer function's completed event): the hold is open.
    assert balance["held"] > 0
    assert int(r.headers["x-tollgate-credits-left"]) == 100_000 - 21


def test_without_a_budget_the_cheaper_tier_wins(platform: Platform) -> None:
    r = chat(platform)
    assert r.headers["x-tollgate-tier"] == "regional"


def test_failover_before_the_first_byte_costs_nothing(platform: Platform) -> None:
    platform.regional.mode = "500"
    r = chat(platform)
    assert r.status_code == 200
    assert r.headers["x-tollgate-tier"] == "edge"
    assert len(platform.regional.calls) == 1 and len(platform.edge.calls) == 1
    balance = platform.ledger.balance("acme")
    assert balance["open_holds"] == 1  # only the serving attempt's hold; the failed one voided
    assert balance["spent"] == 0


def test_every_tier_failing_is_503_with_reasons_and_nothing_held(platform: Platform) -> None:
    platform.regional.mode = platform.edge.mode = "500"
    r = chat(platform)
    assert r.status_code == 503
    message = r.json()["error"]["message"]
    assert "regional-b" in message and "edge-a" in message
    assert platform.ledger.balance("acme")["held"] == 0


def test_a_request_the_engine_refuses_is_not_failed_over(platform: Platform) -> None:
    platform.regional.mode = "400"
    r = chat(platform)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert platform.edge.calls == []
    assert platform.ledger.balance("acme")["held"] == 0


def test_streaming_passes_through(platform: Platform) -> None:
    r = chat(platform, stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "Par" in r.text and r.text.rstrip().endswith("data: [DONE]")
    assert "x-tollgate-credits-charged" not in r.headers


def test_calls_to_infer_reuse_one_kept_alive_connection(platform: Platform) -> None:
    # Whole answers (waitress ends the connection of a streamed, chunked one itself).
    for _ in range(4):
        r = chat(platform)
        assert r.status_code == 200, r.text
    peers = [call["peer"] for call in platform.regional.calls]
    assert len(peers) == 4 and len(set(peers)) == 1, peers


def test_not_enough_credits_is_402_and_no_inference_runs(
    platform: Platform, sqlite_store: Store
) -> None:
    platform.ledger.open_account("poor")
    platform.ledger.execute("poor", "grant", {"amount": 50})
    poor = ApiKeys(sqlite_store).issue("poor")["key"]
    r = chat(platform, key=poor, max_tokens=100)
    assert r.status_code == 402
    assert r.json()["error"]["type"] == "insufficient_quota"
    assert "50 available" in r.json()["error"]["message"]
    assert platform.edge.calls == [] and platform.regional.calls == []
    assert platform.ledger.balance("poor")["held"] == 0


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"key": "tg_wrong"}, 401, "unauthorized"),
        ({"key": "nonsense"}, 401, "unauthorized"),
        ({"model": "Nope-1"}, 404, "model_not_found"),
        ({"max_tokens": 1.5}, 400, "bad_request"),
        ({"messages": []}, 400, "bad_request"),
        ({"headers": {"x-tollgate-residency": "US"}}, 503, "no_feasible_tier"),
        ({"headers": {"x-tollgate-latency-budget-ms": "soon"}}, 400, "bad_request"),
    ],
)
def test_bad_requests(platform: Platform, kwargs: dict[str, Any], status: int, code: str) -> None:
    r = chat(platform, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]
    assert platform.edge.calls == [] and platform.regional.calls == []


def test_plan_without_the_model_is_403_and_models_lists_what_the_key_may_use(
    platform: Platform, sqlite_store: Store
) -> None:
    models = requests.get(
        platform.url + "/v1/models", headers={"Authorization": f"Bearer {platform.key}"}, timeout=10
    )
    assert [m["id"] for m in models.json()["data"]] == ["Tiny-1"]
    platform.ledger.update_meta("acme", {"plan": "no-tiny"})
    other = ApiKeys(sqlite_store).issue("acme")["key"]  # a fresh key: no cached profile
    assert chat(platform, key=other).status_code == 403


def test_the_public_ingress_has_no_ops_view(platform: Platform) -> None:
    # The live view is the cluster-local route function's (GET /tiers there).
    assert requests.get(platform.url + "/tiers", timeout=10).status_code == 404


# -- capacity: a full cluster is passed over, all full is 429 with Retry-After ------------------


def report(p: Platform, cluster: str, *, running: int, queued: int) -> None:
    """What the prober would write: one replica (of one slot), this busy."""
    p.states.report_load(
        cluster, "tiny", queue_depth=queued, running=running, warm=True, replicas=1
    )


def test_a_full_cheaper_cluster_sends_the_request_to_a_dearer_one_at_its_price(
    platform: Platform,
) -> None:
    # One slot busy and three queued: 4 x 500 ms (20 tokens at 40/s) > the 1 s default maximum.
    report(platform, "regional-b", running=1, queued=3)
    r = chat(platform)
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-cluster"] == "edge-a"
    assert (
        "regional-b full (queue 2000 ms > 1000 ms max): chose dearer edge-a"
        in r.headers["x-tollgate-route-reason"]
    )
    assert r.headers["x-tollgate-credits-charged"] == "21"  # the edge's price, not regional's
    assert platform.regional.calls == []


def test_every_cluster_full_is_429_with_retry_after_and_nothing_held(platform: Platform) -> None:
    report(platform, "regional-b", running=1, queued=3)
    report(platform, "edge-a", running=1, queued=5)
    r = chat(platform)
    assert r.status_code == 429, r.text
    assert r.headers["Retry-After"] == "1"  # regional is 1 s over: back within the limit in 1 s
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "all_clusters_full")
    assert "exceeds your plan's 1000 ms" in error["message"]
    assert error["queue_wait_ms"] == {"edge-a": 3000, "regional-b": 2000}
    assert platform.edge.calls == [] and platform.regional.calls == []
    assert platform.ledger.balance("acme")["held"] == 0


def test_clusters_refusing_for_capacity_make_a_429_and_cost_nothing(platform: Platform) -> None:
    platform.regional.mode = platform.edge.mode = "429"
    platform.edge.retry_after = 3
    r = chat(platform)
    assert r.status_code == 429, r.text
    assert r.headers["Retry-After"] == "3"
    assert r.json()["error"]["code"] == "all_clusters_full"
    assert len(platform.regional.calls) == 1 and len(platform.edge.calls) == 1
    balance = platform.ledger.balance("acme")
    assert (balance["held"], balance["spent"]) == (0, 0)


def stream_open(p: Platform, **body: Any) -> requests.Response:
    """A streamed chat request whose response is left open (read it, or close it, later)."""
    payload = {"model": "Tiny-1", "messages": [{"role": "user", "content": "hi"}], **body}
    return requests.post(
        p.url + "/v1/chat/completions",
        json={**payload, "stream": True},
        headers={"Authorization": f"Bearer {p.key}"},
        stream=True,
        timeout=30,
    )


def test_a_burst_spreads_before_any_probe_sees_it(platform: Platform) -> None:
    """No probe ever ran (load unknown): the ingress counts what it sent itself. Each cluster
    has one slot; a 100-token request holds it 2.5 s, beyond the 1 s maximum."""
    platform.regional.mode = platform.edge.mode = "hold"
    first, second = (stream_open(platform, max_tokens=100) for _ in range(2))
    try:
        assert first.headers["x-tollgate-cluster"] == "regional-b"
        assert second.headers["x-tollgate-cluster"] == "edge-a"
        assert "regional-b full" in second.headers["x-tollgate-route-reason"]
        third = chat(platform, max_tokens=100)
        assert third.status_code == 429
        assert third.headers["Retry-After"] == "2"
    finally:
        platform.regional.released.set()
        platform.edge.released.set()
    assert first.text.rstrip().endswith("[DONE]") and second.text.rstrip().endswith("[DONE]")
    # Finished: they no longer count, the cheaper cluster takes the next one.
    platform.regional.mode = platform.edge.mode = "ok"
    assert chat(platform, max_tokens=100).headers["x-tollgate-cluster"] == "regional-b"
