"""The ingress and infer agree on what an OpenAI request may be: the same bodies are served or
refused at both ends, and a body infer would refuse is refused at the ingress before any hold.

Real parts: the ledger function on sqlite, the infer function (over a scripted engine) and the
ingress, each on its own HTTP server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from events import wire
from events.openai import PATHS, Endpoint
from events.quote import Quote
from functions.apikeys import ApiKeys
from functions.config import Settings
from functions.store import Store
from infer_fn.app import create_app as infer_app
from infer_fn.config import InferConfig
from ledger_fn.app import create_app as ledger_app
from ledger_fn.ledger import Ledger
from router_fn.ingress_app import create_app as ingress_app
from router_fn.tierstate import TierStates
from router_fn.topology import ClusterSpec, ModelSpec, Topology
from tests.http_server import serving
from tests.infer.fakes import ScriptedEngine
from tests.ledger.helpers import senders
from tests.router.test_ingress import ledger_client
from tests.trust import CapabilityKeys, TestIssuer

MODEL = ModelSpec("tiny", "Tiny-1", 135_000_000, 4096)
QUOTE = Quote(price_book="t1", input_per_million=1_000_000, output_per_million=1_000_000)
WORDS = [f"w{i}" for i in range(8)]
HI = [{"role": "user", "content": "hi"}]

SERVED: list[tuple[Endpoint, dict[str, Any]]] = [
    ("chat", {"messages": HI}),
    ("chat", {"messages": HI, "max_completion_tokens": 4, "user": "u-1", "logprobs": None}),
    ("chat", {"messages": [{"role": "developer", "content": [{"type": "text", "text": "x"}]}]}),
    ("completions", {"prompt": "a b", "max_tokens": 4}),
    ("completions", {"prompt": ["a b"], "stop": ["w3"]}),
]
REFUSED: list[tuple[Endpoint, dict[str, Any]]] = [
    ("completions", {"prompt": [1, 2, 3]}),
    ("completions", {"prompt": [[1, 2], [3]]}),
    ("completions", {"prompt": ["a", "b"]}),
    ("completions", {"prompt": "a", "max_tokens": "8"}),
    ("chat", {"messages": HI, "max_tokens": 1.5}),
    ("chat", {"messages": HI, "max_tokens": 0}),
    ("chat", {"messages": HI, "n": 2}),
    ("chat", {"messages": HI, "temperature": 7}),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
    ("chat", {"messages": []}),
    ("chat", {"messages": HI, "max_tokens": 4096}),  # the whole context: no room for the prompt
    ("completions", {"prompt": "a", "max_completion_tokens": 10**6}),
]


@dataclass
class Ends:
    ingress: str
    infer: str
    key: str
    ledger: Ledger
    keys: CapabilityKeys

    def via_ingress(self, endpoint: Endpoint, body: dict[str, Any]) -> requests.Response:
        auth = {"Authorization": f"Bearer {self.key}"}
        return requests.post(self.ingress + PATHS[endpoint], json=body, headers=auth, timeout=30)

    def to_infer(self, endpoint: Endpoint, body: dict[str, Any]) -> requests.Response:
        """Straight to infer, with a capability as the ingress would mint for the body."""
        asked = body.get("max_tokens") or body.get("max_completion_tokens")
        bound = asked if isinstance(asked, int) and not isinstance(asked, bool) else 64
        capability = self.keys.capability(model="Tiny-1", cluster="edge-a", max_tokens=bound)
        headers = {wire.CAPABILITY: capability}
        return requests.post(self.infer + PATHS[endpoint], json=body, headers=headers, timeout=30)


@pytest.fixture
def ends(
    sqlite_store: Store,
    monkeypatch: pytest.MonkeyPatch,
    issuer: TestIssuer,
    cap_keys: CapabilityKeys,
    tmp_path: Path,
) -> Iterator[Ends]:
    monkeypatch.delenv("K_SINK", raising=False)  # infer meters into nothing here
    ledger = Ledger(sqlite_store)
    ledger.open_account("acme")
    ledger.execute("acme", "grant", {"amount": 1_000_000})
    key = ApiKeys(sqlite_store).issue("acme")["key"]
    settings = Settings(store_url="unused", admin_token="adm", sink=None, port=0)
    config = InferConfig(model_name="Tiny-1", idle_seconds=0, tier="edge", cluster="edge-a")
    the_ledger = ledger_app(
        "ledger", senders=senders(issuer), settings=settings, store=sqlite_store, ledger=ledger
    )
    with ExitStack() as stack:
        ledger_url = stack.enter_context(serving(the_ledger))
        engine = ScriptedEngine(WORDS, name="Tiny-1", context_window=MODEL.context_length)
        infer = infer_app(
            config, senders=senders(issuer), capability_keys=cap_keys.verify, engine=engine
        )
        infer_url = stack.enter_context(serving(infer))
        cluster = ClusterSpec("edge-a", "edge", "FR", 8, 13 * 10**9, {"tiny": infer_url})
        topology = Topology((cluster,), {"tiny": MODEL}, {("tiny", "edge"): QUOTE}, {})
        app = ingress_app(
            topology,
            sqlite_store,
            ledger_client(ledger_url, issuer, tmp_path),
            senders=senders(issuer),
            signing_key=cap_keys.signing,
            states=TierStates(sqlite_store),
        )
        yield Ends(stack.enter_context(serving(app)), infer_url, key, ledger, cap_keys)


@pytest.mark.parametrize(("endpoint", "body"), SERVED)
def test_what_infer_serves_the_ingress_serves(
    ends: Ends, endpoint: Endpoint, body: dict[str, Any]
) -> None:
    body = {"model": "Tiny-1", **body}
    direct = ends.to_infer(endpoint, body)
    assert direct.status_code == 200, direct.text
    through = ends.via_ingress(endpoint, body)
    assert through.status_code == 200, through.text
    assert ends.ledger.balance("acme")["open_holds"] == 1  # held, awaiting settlement


@pytest.mark.parametrize(("endpoint", "body"), REFUSED)
def test_what_infer_refuses_the_ingress_refuses_before_any_hold(
    ends: Ends, endpoint: Endpoint, body: dict[str, Any]
) -> None:
    body = {"model": "Tiny-1", **body}
    direct = ends.to_infer(endpoint, body)
    assert direct.status_code == 400, direct.text
    journal = ends.ledger.journal("acme")
    through = ends.via_ingress(endpoint, body)
    assert through.status_code == 400, through.text
    error = through.json()["error"]
    assert error["type"] == direct.json()["error"]["type"] == "invalid_request_error"
    assert error["message"] == direct.json()["error"]["message"]
    assert ends.ledger.journal("acme") == journal  # no hold authorized, none refunded


def test_a_token_id_prompt_is_told_to_send_text(ends: Ends) -> None:
    reply = ends.via_ingress("completions", {"model": "Tiny-1", "prompt": [9, 8, 7]})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "prompt"
    assert "token-id prompts are not served: send the prompt as text" in error["message"]
