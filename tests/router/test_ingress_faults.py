"""The ingress when things break, over real HTTP with a real ledger on sqlite: a stream infer
breaks off is billed for what reached the client, and so is one the client leaves as infer dies
(a stand-in that yields to infer's own metering when there is one); a failed attempt is voided
before any other cluster is tried, and not failed over while its void is owed; an abandoned
attempt that settled anyway is refunded; an authorize whose answer was lost is found again and
voided; an unknown plan is refused."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, Response, request

from events import wire
from functions.apikeys import ApiKeys
from functions.auth.tokens import TokenFile
from functions.emit import Emitter
from functions.outbox import FILE_NAME, OutboxSettings
from functions.store import Store
from ledger_fn.ledger import Ledger
from router_fn import owed
from router_fn.ingress_app import create_app as ingress_app
from router_fn.ledger_client import LedgerClient
from router_fn.tierstate import TierStates
from tests.http_server import serving
from tests.ledger.helpers import AUDIENCE, SENDER, ledger_function, senders
from tests.router.test_ingress import Upstream, topology
from tests.trust import CapabilityKeys, TestIssuer

CREDITS = 100_000


@dataclass
class Gate:
    """Between the ingress and one ledger endpoint: passes calls on, or fails them."""

    target: str
    down: bool = False
    slow_s: float = 0.0  # answer only this long after the ledger did (a lost answer)

    def app(self) -> Flask:
        app = Flask("gate")

        @app.post("/")
        def forward() -> Response:
            if self.down:
                return Response('{"error": {"message": "down"}}', status=503)
            answer = requests.post(
                self.target, headers=dict(request.headers), data=request.get_data(), timeout=10
            )
            time.sleep(self.slow_s)
            return Response(answer.content, status=answer.status_code, headers=dict(answer.headers))

        return app


@dataclass
class Faulty:
    url: str
    key: str
    store: Store
    ledger: Ledger
    edge: Upstream
    regional: Upstream
    authorize: Gate
    refund: Gate
    outbox: Path

    def balance(self) -> dict[str, Any]:
        return self.ledger.balance("acme")

    def ops(self, kind: str) -> list[dict[str, Any]]:
        entries = self.ledger.journal("acme", limit=500)
        return [e for e in entries if e["op"]["kind"] == kind]


@pytest.fixture
def faulty(
    sqlite_store: Store, tmp_path: Path, issuer: TestIssuer, cap_keys: CapabilityKeys
) -> Iterator[Faulty]:
    ledger = Ledger(sqlite_store)
    ledger.open_account("acme")
    ledger.execute("acme", "grant", {"amount": CREDITS})
    key = ApiKeys(sqlite_store).issue("acme")["key"]
    with ExitStack() as stack:
        the_ledger = ledger_function(ledger, issuer, cap_keys)
        ledger_url = stack.enter_context(serving(the_ledger))
        authorize, refund = Gate(ledger_url), Gate(ledger_url)
        authorize_url = stack.enter_context(serving(authorize.app()))
        refund_url = stack.enter_context(serving(refund.app()))
        bearer = issuer.bearer(SENDER, AUDIENCE)
        edge, regional = (
            Upstream(settle_url=ledger_url, keys=cap_keys, bearer=bearer) for _ in range(2)
        )
        edge_url = stack.enter_context(serving(edge.app()))
        regional_url = stack.enter_context(serving(regional.app()))
        token = tmp_path / "tokens" / "ledger"
        token.parent.mkdir(parents=True)
        token.write_text(issuer.token(SENDER, AUDIENCE), encoding="utf-8")
        app = ingress_app(
            # Room for the concurrent requests below: these tests are about failover, not capacity.
            topology(edge_url, regional_url, concurrency=8),
            sqlite_store,
            LedgerClient(
                authorize_url,
                refund_url,
                authorize_token=TokenFile(token),
                refund_token=TokenFile(token),
                timeout_s=1.0,
            ),
            senders=senders(issuer),
            signing_key=cap_keys.signing,
            states=TierStates(sqlite_store),
            # The all-in-one ledger settles inference.completed itself: it is the broker here.
            emitter=Emitter(ledger_url, TokenFile(token)),
            outbox=OutboxSettings(tmp_path / "ingress-outbox", max_backoff_s=0.5),
        )
        url = stack.enter_context(serving(app))
        yield Faulty(
            url,
            key,
            sqlite_store,
            ledger,
            edge,
            regional,
            authorize,
            refund,
            tmp_path / "ingress-outbox",
        )


def chat(f: Faulty, *, key: str | None = None, **body: Any) -> requests.Response:
    payload = {"model": "Tiny-1", "messages": [{"role": "user", "content": "hi"}], **body}
    payload.setdefault("max_tokens", 20)
    auth = {"Authorization": f"Bearer {key or f.key}"}
    return requests.post(f.url + "/v1/chat/completions", json=payload, headers=auth, timeout=30)


def eventually(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


def events(text: str) -> list[Any]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def test_a_stream_infer_breaks_off_is_billed_for_what_reached_the_client(faulty: Faulty) -> None:
    faulty.regional.mode = "cut"
    r = chat(faulty, stream=True)
    assert r.status_code == 200
    sent = events(r.text)
    assert [e["choices"][0]["delta"]["content"] for e in sent[:2]] == ["Par", "is"]
    assert sent[-1]["error"]["message"] == "the inference stream was cut"
    assert all("usage" not in e for e in sent)  # the client asked for none
    # 11 prompt tokens at 0.5 and 2 completion tokens at 1 credit: 7.5, rounded up.
    eventually(lambda: faulty.balance()["open_holds"] == 0)
    assert faulty.balance()["spent"] == 8
    [settle] = faulty.ops("settle")
    assert settle["op"]["args"]["usage"]["completion_tokens"] == 2


def leave_mid_stream(f: Faulty) -> str:
    """Open a stream on the regional cluster, read its first token and hang up; the hold id."""
    f.regional.mode = "hold"
    payload = {"model": "Tiny-1", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    auth = {"Authorization": f"Bearer {f.key}"}
    with requests.post(
        f.url + "/v1/chat/completions", json=payload, headers=auth, stream=True, timeout=30
    ) as r:
        assert r.status_code == 200
        hold_id = r.headers[wire.HOLD_ID]
        next(r.iter_lines())  # the first token reached the client
    return hold_id


def outbox_states(f: Faulty) -> list[str]:
    with contextlib.closing(sqlite3.connect(f.outbox / FILE_NAME)) as db:
        return [row[0] for row in db.execute("SELECT state FROM outbox")]


def test_a_stream_the_client_leaves_as_infer_dies_is_billed_for_what_reached_it(
    faulty: Faulty, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owed, "STAND_IN_DELAY_S", 1.0)
    leave_mid_stream(faulty)  # this infer never meters: it died with the stream
    faulty.regional.released.set()  # its next token shows the ingress the client is gone
    eventually(lambda: outbox_states(faulty) == ["pending"])  # owed, not due: infer's may come
    eventually(lambda: faulty.balance()["open_holds"] == 0)
    # Both tokens were handed to the client's connection: the second is how the ingress found
    # it closed (what a closed socket takes in before it errors cannot be known either).
    [settle] = faulty.ops("settle")
    assert settle["op"]["args"]["usage"]["completion_tokens"] == 2
    assert faulty.balance()["spent"] == 8  # 11 x 0.5 + 2 x 1 = 7.5, rounded up


def test_the_stand_in_yields_to_infers_own_metering(
    faulty: Faulty, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owed, "STAND_IN_DELAY_S", 1.0)
    leave_mid_stream(faulty)
    faulty.regional.released.set()
    eventually(lambda: outbox_states(faulty) == ["pending"])
    capability = faulty.regional.calls[-1]["headers"][wire.CAPABILITY.title()]
    faulty.regional._settle(capability)  # infer noticed the client leave and metered its 5 tokens
    eventually(lambda: outbox_states(faulty) == ["delivered"])  # answered with nothing
    [settle] = faulty.ops("settle")
    assert settle["op"]["args"]["usage"]["completion_tokens"] == 5
    assert (faulty.balance()["spent"], faulty.balance()["open_holds"]) == (11, 0)


@pytest.mark.parametrize(
    ("options", "per_chunk", "usage_chunk"),
    [
        (None, False, False),
        ({"include_usage": True}, False, True),
        ({"continuous_usage_stats": True}, True, False),
        ({"include_usage": True, "continuous_usage_stats": True}, True, True),
    ],
)
def test_usage_reaches_the_client_only_as_it_asked(
    faulty: Faulty, options: dict[str, bool] | None, per_chunk: bool, usage_chunk: bool
) -> None:
    extra: dict[str, Any] = {"stream_options": options} if options else {}
    r = chat(faulty, stream=True, **extra)
    sent = events(r.text)
    forwarded = faulty.regional.calls[-1]["body"]["stream_options"]
    assert forwarded == {"include_usage": True, "continuous_usage_stats": True}
    content = [e for e in sent if e["choices"]]
    assert [e["choices"][0]["delta"]["content"] for e in content] == ["Par", "is", "!"]
    assert all(("usage" in e) == per_chunk for e in content)
    assert any(not e["choices"] for e in sent) == usage_chunk
    assert r.text.rstrip().endswith("data: [DONE]")


def test_a_whole_answer_cut_half_way_fails_over_and_costs_nothing_there(faulty: Faulty) -> None:
    faulty.regional.mode = "cut"
    r = chat(faulty)
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-tier"] == "edge"
    [void] = faulty.ops("refund")
    assert void["result"]["voided"] is True
    assert faulty.balance()["open_holds"] == 1  # the edge's, settled by its infer later


def test_an_abandoned_attempt_that_settled_anyway_is_refunded_and_the_fallback_charged(
    faulty: Faulty,
) -> None:
    faulty.regional.mode = "settle-then-503"  # it settled its hold, then the ingress gave up
    r = chat(faulty)
    assert r.status_code == 200
    assert r.headers["x-tollgate-tier"] == "edge"
    balance = faulty.balance()
    assert balance["spent"] == 11 and balance["refunded"] == 11  # captured, then returned
    assert balance["open_holds"] == 1
    [refund] = faulty.ops("refund")
    assert refund["result"]["voided"] is False and refund["result"]["refunded"] == 11


def test_no_failover_while_a_failed_attempts_void_is_owed_then_it_is_delivered(
    faulty: Faulty,
) -> None:
    faulty.regional.mode = "500"
    faulty.refund.down = True
    r = chat(faulty)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "ledger_unavailable"
    assert faulty.edge.calls == []  # no second hold while the first may still be captured
    assert faulty.balance()["open_holds"] == 1
    faulty.refund.down = False
    eventually(lambda: faulty.balance()["open_holds"] == 0)
    assert faulty.balance()["held"] == 0 and faulty.balance()["spent"] == 0


def test_an_authorize_whose_answer_was_lost_is_found_again_and_voided(faulty: Faulty) -> None:
    faulty.authorize.slow_s = 2.0  # the ledger holds, the answer comes after the 1 s timeout
    r = chat(faulty)
    assert r.status_code == 503
    assert faulty.regional.calls == [] and faulty.edge.calls == []
    faulty.authorize.slow_s = 0.0
    eventually(lambda: faulty.balance()["open_holds"] == 0)
    [authorize] = faulty.ops("authorize")  # sent again under its id: the same hold, once
    [void] = faulty.ops("refund")
    assert void["op"]["args"]["hold_id"] == authorize["result"]["hold_id"]
    assert faulty.balance()["available"] == CREDITS


def test_concurrent_failovers_each_capture_once(faulty: Faulty) -> None:
    faulty.regional.mode = "settle-then-503"
    answers: list[int] = []

    def one() -> None:
        answers.append(chat(faulty).status_code)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [200] * 8
    balance = faulty.balance()
    assert balance["spent"] == balance["refunded"] == 8 * 11
    assert balance["open_holds"] == 8  # the edge holds, one per request


def test_an_unknown_plan_is_refused_not_unrestricted(faulty: Faulty) -> None:
    faulty.ledger.open_account("lost")
    faulty.ledger.update_meta("lost", {"plan": "retired-plan"})
    faulty.ledger.execute("lost", "grant", {"amount": CREDITS})
    key = ApiKeys(faulty.store).issue("lost")["key"]
    r = chat(faulty, key=key)
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == "unknown_plan" and "retired-plan" in error["message"]
    models = requests.get(
        faulty.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert models.status_code == 403
    assert faulty.regional.calls == [] and faulty.edge.calls == []
    assert faulty.ledger.balance("lost")["held"] == 0
