"""Infer serves only what the ingress vouched for: a capability for this cluster, this model,
at most its tokens, before its deadline, once; and generation stops at its bounds. Real keys,
the real app on a real HTTP server, no stand-in for the check."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from events import wire
from infer_fn.app import create_app
from infer_fn.config import InferConfig
from tests.infer.conftest import NOBODY, Server, Sink
from tests.infer.fakes import ScriptedEngine
from tests.trust import CapabilityKeys, capability_keys

WORDS = [f"w{i}" for i in range(40)]
CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "two words"}]}


def _server(
    serve: type[Server], config: InferConfig, keys: CapabilityKeys, engine: ScriptedEngine
) -> Server:
    return serve(create_app(config, senders=NOBODY, capability_keys=keys.verify, engine=engine))


def _post(server: Server, capability: str | None, **body: object) -> requests.Response:
    headers = {wire.CAPABILITY: capability} if capability else {}
    return requests.post(
        f"{server.url}/v1/chat/completions", json={**CHAT, **body}, headers=headers, timeout=30
    )


def test_every_attempt_infer_was_not_vouched_for_is_refused_before_the_engine(
    serve: type[Server], config: InferConfig, cap_keys: CapabilityKeys, tmp_path: Path, sink: Sink
) -> None:
    engine = ScriptedEngine(WORDS)
    server = _server(serve, config, cap_keys, engine)
    stranger = capability_keys(tmp_path / "stranger")
    refused = {
        "no capability": (_post(server, None), 401),
        "forged": (_post(server, stranger.capability()), 401),
        "garbage": (_post(server, "not.a.capability"), 401),
        "another cluster": (_post(server, cap_keys.capability(cluster="edge-other")), 401),
        "past its deadline": (_post(server, cap_keys.capability(deadline_s=-30)), 401),
        "another model": (_post(server, cap_keys.capability(model="other")), 403),
        "above its bound": (_post(server, cap_keys.capability(max_tokens=4), max_tokens=5), 400),
    }
    for what, (answer, status) in refused.items():
        assert answer.status_code == status, (what, answer.text)
        assert answer.json()["error"]["message"], what
    assert engine.generations == []  # nothing reached the engine
    time.sleep(0.2)
    assert sink.events == []  # nothing was metered


def test_a_capability_serves_one_attempt(
    serve: type[Server], config: InferConfig, cap_keys: CapabilityKeys, sink: Sink
) -> None:
    engine = ScriptedEngine(WORDS[:3])
    server = _server(serve, config, cap_keys, engine)
    capability = cap_keys.capability("acme:9", "acme")
    assert _post(server, capability).status_code == 200
    replayed = _post(server, capability)
    assert replayed.status_code == 409 and replayed.json()["error"]["code"] == "attempt_replayed"
    assert len(engine.generations) == 1
    [event] = sink.wait_for(1)
    assert (event.data["hold_id"], event.data["account_id"]) == ("acme:9", "acme")


def test_generation_stops_at_the_tokens_it_was_priced_for(
    serve: type[Server], config: InferConfig, cap_keys: CapabilityKeys, sink: Sink
) -> None:
    server = _server(serve, config, cap_keys, ScriptedEngine(WORDS))
    answer = _post(server, cap_keys.capability(max_tokens=3))  # the request names no limit
    assert answer.status_code == 200
    assert answer.json()["usage"]["completion_tokens"] == 3
    assert answer.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("bound", ["deadline", "engine time"])
def test_generation_stops_at_the_deadline_and_the_engine_time_bound(
    serve: type[Server], config: InferConfig, cap_keys: CapabilityKeys, sink: Sink, bound: str
) -> None:
    engine = ScriptedEngine(WORDS, token_seconds=0.1)  # 4 s for every word
    server = _server(serve, config, cap_keys, engine)
    if bound == "deadline":
        capability = cap_keys.capability(deadline_s=1.5)
    else:
        capability = cap_keys.capability(engine_ms=500)
    started = time.monotonic()
    answer = _post(server, capability, stream=True)
    text = answer.text
    assert answer.status_code == 200 and text.rstrip().endswith("data: [DONE]")
    assert time.monotonic() - started < 3.5
    [event] = sink.wait_for(1)
    produced = event.data["usage"]["completion_tokens"]
    assert 1 <= produced < len(WORDS)  # cut, and what was produced is metered
