"""The local activator over real HTTP: requests forwarded untouched to ready replicas (servers
answering as infer does, canned so each case can be chosen), at most containerConcurrency each,
buffered while none can take them, refused when the buffer is full; the load it reports is what
the router's prober parses."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from flask import Flask, Response, request

from events import wire
from infra.local.activator import Activator, ActivatorServer, ActivatorSpec
from infra.local.platform import free_port
from router_fn.probe import parse_metrics
from tests.http_server import serving


@dataclass
class Replica:
    """A stand-in infer replica: records what it got; ``gate`` holds streams open."""

    name: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    cold_start_ms: str | None = None

    def app(self) -> Flask:
        app = Flask(self.name)

        @app.route("/v1/<path:rest>", methods=["GET", "POST"])
        def anything(rest: str) -> Response:
            self.calls.append(
                {
                    "path": request.full_path,
                    "headers": dict(request.headers),
                    "body": request.get_data(),
                }
            )
            if request.args.get("stream"):
                return Response(self._stream(), mimetype="text/event-stream")
            headers = {wire.COLD_START_MS: self.cold_start_ms} if self.cold_start_ms else {}
            body = json.dumps({"served_by": self.name})
            return Response(body, status=201, mimetype="application/json", headers=headers)

        return app

    def _stream(self) -> Iterator[str]:
        yield "data: first\n\n"
        self.gate.wait(10)
        yield "data: [DONE]\n\n"


@dataclass
class Setup:
    activator: Activator
    url: str
    replicas: dict[str, tuple[Replica, str]]
    pokes: list[float]

    def add(self, name: str, *, ready: bool = True) -> Replica:
        replica, url = self.replicas[name]
        self.activator.add(name, url)
        self.activator.set_ready(name, ready)
        return replica


def spec(**overrides: Any) -> ActivatorSpec:
    base = {
        "cluster": "edge-a",
        "model": "small",
        "concurrency": 1,
        "max_replicas": 2,
        "buffer_size": 2,
        "buffer_timeout_s": 5.0,
        "retry_after_s": 2,
    }
    return ActivatorSpec(**{**base, **overrides})


@pytest.fixture
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    overrides = getattr(request, "param", {})
    pokes: list[float] = []
    activator = Activator(spec(**overrides), lambda: pokes.append(time.monotonic()))
    server = ActivatorServer(activator, 0)
    server.start()
    with ExitStack() as stack:
        replicas = {}
        for name in ("r1", "r2"):
            replica = Replica(name)
            replicas[name] = (replica, stack.enter_context(serving(replica.app())))
        yield Setup(activator, server.url, replicas, pokes)
        for replica, _ in replicas.values():
            replica.gate.set()
        server.stop()


def post(url: str, path: str = "/v1/chat/completions", **kwargs: Any) -> requests.Response:
    return requests.post(url + path, **{"timeout": 10, **kwargs})


def load(setup: Setup) -> Any:
    return parse_metrics(requests.get(setup.url + "/metrics", timeout=5).text)


def in_background(call: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


def test_requests_and_answers_pass_through_untouched(setup: Setup) -> None:
    replica = setup.add("r1")
    headers = {"Authorization": "Bearer capability-token", "x-tollgate-hold-id": "acme:7"}
    r = post(setup.url, "/v1/chat/completions?trace=1", data=b'{"model": "x"}', headers=headers)
    assert r.status_code == 201 and r.json() == {"served_by": "r1"}
    call = replica.calls[0]
    assert call["path"] == "/v1/chat/completions?trace=1" and call["body"] == b'{"model": "x"}'
    assert call["headers"]["Authorization"] == "Bearer capability-token"
    assert call["headers"]["X-Tollgate-Hold-Id"] == "acme:7"
    assert requests.get(setup.url + "/v1/models", timeout=5).json() == {"served_by": "r1"}


def test_a_stream_arrives_as_it_is_produced_and_its_end_frees_the_slot(setup: Setup) -> None:
    replica = setup.add("r1")
    r = requests.post(
        setup.url + "/v1/chat/completions?stream=1", stream=True, timeout=10, data=b"{}"
    )
    chunks = r.iter_content(chunk_size=None)
    assert next(chunks) == b"data: first\n\n"  # while the replica still holds the rest
    assert load(setup).running == 1
    replica.gate.set()
    assert b"".join(chunks) == b"data: [DONE]\n\n"
    deadline = time.monotonic() + 5
    while load(setup).running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert load(setup).running == 0


def test_a_client_gone_mid_stream_frees_the_slot(setup: Setup) -> None:
    setup.add("r1")
    r = requests.post(
        setup.url + "/v1/chat/completions?stream=1", stream=True, timeout=10, data=b"{}"
    )
    next(r.iter_content(chunk_size=None))
    r.close()  # the client goes away; the replica is still generating
    setup.replicas["r1"][0].gate.set()
    deadline = time.monotonic() + 5
    while load(setup).running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert load(setup).running == 0
    assert post(setup.url, data=b"{}").status_code == 201  # its slot serves the next one


def test_requests_wait_while_no_replica_is_ready_and_the_scaler_is_poked(setup: Setup) -> None:
    thread, answers = in_background(lambda: post(setup.url, data=b"{}"))
    deadline = time.monotonic() + 5
    while not setup.pokes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert setup.pokes, "a waiting request pokes the scaler"
    sample = load(setup)
    assert (sample.queue_depth, sample.running, sample.replicas, sample.warm) == (1, 0, 0, False)
    assert requests.get(setup.url + "/readyz", timeout=5).status_code == 200  # it accepts
    setup.add("r2")  # a replica became ready
    thread.join(5)
    assert answers[0].status_code == 201 and answers[0].json() == {"served_by": "r2"}
    assert load(setup).queue_depth == 0


def test_one_replica_takes_at_most_its_concurrency_and_the_least_busy_serves(
    setup: Setup,
) -> None:
    setup.add("r1")
    setup.add("r2")
    streams = [
        requests.post(setup.url + "/v1/x?stream=1", stream=True, timeout=10, data=b"{}")
        for _ in range(2)
    ]
    for s in streams:
        next(s.iter_content(chunk_size=None))
    assert [len(setup.replicas[n][0].calls) for n in ("r1", "r2")] == [1, 1]
    thread, answers = in_background(lambda: post(setup.url, data=b"{}"))
    time.sleep(0.3)
    assert load(setup).queue_depth == 1 and not answers  # both busy (concurrency 1)
    setup.replicas["r1"][0].gate.set()
    for s in streams:
        s.close()
    thread.join(5)
    assert answers[0].status_code == 201


def test_a_full_buffer_is_429_with_retry_after_in_openai_shape(setup: Setup) -> None:
    waiting = [in_background(lambda: post(setup.url, data=b"{}")) for _ in range(2)]
    deadline = time.monotonic() + 5
    while load(setup).queue_depth < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    r = post(setup.url, data=b"{}")
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    error = r.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
    assert "2 requests waiting" in error["message"]
    setup.add("r1")
    for thread, answers in waiting:
        thread.join(5)
        assert answers[0].status_code == 201


@pytest.mark.parametrize("setup", [{"buffer_timeout_s": 0.3}], indirect=True)
def test_a_request_nobody_takes_in_time_is_503(setup: Setup) -> None:
    r = post(setup.url, data=b"{}")
    assert r.status_code == 503
    assert (
        "no replica of infer small on edge-a took the request within 0.3 s"
        in (r.json()["error"]["message"])
    )


def test_replicas_that_cannot_start_fail_waiting_requests_and_readiness(setup: Setup) -> None:
    thread, answers = in_background(lambda: post(setup.url, data=b"{}"))
    time.sleep(0.2)
    setup.activator.fail("infer-edge-a-small-1 exited with status 1")
    thread.join(5)
    assert answers[0].status_code == 503
    assert "cannot start: infer-edge-a-small-1 exited" in answers[0].json()["error"]["message"]
    assert requests.get(setup.url + "/readyz", timeout=5).status_code == 503
    setup.add("r1")  # one came up after all
    assert requests.get(setup.url + "/readyz", timeout=5).status_code == 200


def test_a_draining_replica_takes_no_new_requests(setup: Setup) -> None:
    setup.add("r1")
    setup.add("r2")
    setup.activator.drain("r1")
    for _ in range(3):
        assert post(setup.url, data=b"{}").json() == {"served_by": "r2"}


def test_cold_starts_and_replicas_are_reported_as_the_prober_reads_them(setup: Setup) -> None:
    replica = setup.add("r1")
    replica.cold_start_ms = "400"  # its engine loaded for this request
    post(setup.url, data=b"{}")
    sample = load(setup)
    assert sample.replicas == 1 and sample.cold_start_ms is not None
    assert sample.cold_start_ms >= 400  # the process start plus the load
    first = sample.cold_start_ms
    replica.cold_start_ms = "0"  # infer's answer when the engine was loaded already
    for _ in range(3):
        post(setup.url, data=b"{}")
    assert load(setup).cold_start_ms == first  # not a cold start
    setup.activator.report("r1", loaded=True, tokens_per_second=42.0)
    sample = load(setup)
    assert sample.warm and sample.tokens_per_second == 42.0


def test_in_flight_time_is_integrated_for_the_autoscaler() -> None:
    now = [100.0]
    activator = Activator(spec(), lambda: None, clock=lambda: now[0])
    assert activator.request_seconds() == 0.0
    server = ActivatorServer(activator, 0)
    server.start()
    try:
        thread, answers = in_background(lambda: post(server.url, data=b"{}"))
        deadline = time.monotonic() + 5
        while activator.waiting() != (1, 0) and time.monotonic() < deadline:
            time.sleep(0.02)
        now[0] += 2.0  # one request in flight for two seconds
        assert activator.request_seconds() == pytest.approx(2.0)
        now[0] += 10.0  # past its buffer timeout: it gives up
        thread.join(5)
        assert answers[0].status_code == 503
        assert activator.request_seconds() == pytest.approx(12.0)
    finally:
        server.stop()


def test_a_replica_refusing_connections_is_passed_over_and_no_longer_ready(setup: Setup) -> None:
    setup.activator.add("r0", f"http://127.0.0.1:{free_port()}")  # crashed: nothing listens
    setup.activator.set_ready("r0", True)
    setup.add("r2")
    for _ in range(3):
        r = post(setup.url, data=b"{}")
        assert r.status_code == 201 and r.json() == {"served_by": "r2"}
    assert [r.ready for r in setup.activator.replicas() if r.name == "r0"] == [False]
    assert load(setup).replicas == 1
