"""A remote cluster's public ingress (the gateway) in front of a real infer app: it passes only
attempts a capability for its cluster vouches for, streams the answer through, and passes the
prober's health and load reads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import requests

from events import wire
from functions.app import create_app as create_function_app
from infer_fn.app import create_app as infer_app
from infer_fn.config import InferConfig
from router_fn.gateway import gateway_blueprint
from tests.http_server import serving
from tests.infer.conftest import NOBODY
from tests.infer.fakes import ScriptedEngine
from tests.trust import CapabilityKeys

HERE = "edge-lyon-5g-1"
CHAT = {"model": "Tiny-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
def gateway(cap_keys: CapabilityKeys) -> Iterator[tuple[str, ScriptedEngine]]:
    engine = ScriptedEngine([f"w{i}" for i in range(10)], name="Tiny-1")
    config = InferConfig(model_name="Tiny-1", idle_seconds=0, cluster=HERE)
    infer = infer_app(config, senders=NOBODY, capability_keys=cap_keys.verify, engine=engine)
    with ExitStack() as stack:
        infer_url = stack.enter_context(serving(infer))
        blueprint = gateway_blueprint(HERE, {"tiny": infer_url}, cap_keys.verify)
        app = create_function_app("gateway", senders=NOBODY, blueprints=[blueprint])
        yield stack.enter_context(serving(app)), engine


def test_only_vouched_attempts_pass_and_answers_stream_through(
    gateway: tuple[str, ScriptedEngine], cap_keys: CapabilityKeys
) -> None:
    url, engine = gateway
    path = url + "/infer/tiny/v1/chat/completions"

    def post(capability: str | None, **body: object) -> requests.Response:
        headers = {wire.CAPABILITY: capability} if capability else {}
        return requests.post(path, json={**CHAT, **body}, headers=headers, timeout=30)

    assert post(None).status_code == 401
    assert post(cap_keys.capability(model="Tiny-1", cluster="cloud-frankfurt-1")).status_code == 401
    assert (
        post(cap_keys.capability(model="Tiny-1", deadline_s=-60, cluster=HERE)).status_code == 401
    )
    assert engine.generations == []  # nothing reached infer's engine
    vouched = cap_keys.capability(model="Tiny-1", cluster=HERE, max_tokens=3)
    answer = post(vouched, stream=True)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert "w0" in answer.text and answer.text.rstrip().endswith("data: [DONE]")
    assert post(vouched).status_code == 409  # infer itself serves an attempt once
    unknown = requests.post(url + "/infer/huge/v1/chat/completions", json=CHAT, timeout=10)
    assert unknown.status_code == 404


def test_the_probers_reads_pass_through(gateway: tuple[str, ScriptedEngine]) -> None:
    url, _ = gateway
    assert requests.get(url + "/infer/tiny/readyz", timeout=10).json()["status"] == "ready"
    assert (
        "tollgate_infer_queue_depth" in requests.get(url + "/infer/tiny/metrics", timeout=10).text
    )
