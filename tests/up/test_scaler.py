"""The local scaler with real infer replicas (``tollgate serve infer`` on the real model), started
and retired through the real supervisor and a real CloudEvents sink standing in for the broker: a
replica scaled down goes only once its metering is delivered; an outbox a stopped replica left
owing is picked up again; a crashed replica restarts on its own back-off while the other serves;
a replica that cannot start fails the waiting request. (Scaling from zero and back on the whole
platform: tests/e2e/test_capacity.py.)"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from cloudevents.v1.http import from_http
from flask import Flask, Response, request

from events import wire
from events.types import INFERENCE_COMPLETED, INFERENCE_USAGE
from functions.outbox import Outbox, Outcome, Verdict, owed
from infra.local.activator import ActivatorServer
from infra.local.platform import InferService, free_port, plan, write_json
from infra.local.scaler import TICK_S, Scaler
from infra.local.supervisor import BackOff, Restarts, Supervisor
from infra.template.load import load_template
from router_fn.probe import parse_metrics
from tests.http_server import serving
from tests.trust import CapabilityKeys, capability_keys
from tests.up.test_up import ROOT

pytestmark = [pytest.mark.model, pytest.mark.slow]

MODEL = "SmolLM2-135M-Instruct"
CLUSTER = "regional-paris-1"


@dataclass
class Broker:
    """Stands in for the broker: takes CloudEvents (202), or refuses them (503) while told to;
    records the hold of each (of each report of a usage batch)."""

    refusing: threading.Event = field(default_factory=threading.Event)
    events: list[tuple[str, str]] = field(default_factory=list)  # (type, hold id)

    def app(self) -> Flask:
        app = Flask("broker")

        @app.post("/")
        def take() -> Response:
            if self.refusing.is_set():
                return Response("busy", status=503)
            event = from_http(dict(request.headers), request.get_data())
            if event["type"] == INFERENCE_USAGE:  # each report, as settle takes them
                reports = (event.get_data() or {})["reports"]
                self.events.extend((INFERENCE_COMPLETED, r["data"]["hold_id"]) for r in reports)
            else:
                self.events.append((event["type"], (event.get_data() or {})["hold_id"]))
            return Response(status=202)

        return app


@dataclass
class Setup:
    scaler: Scaler
    url: str
    keys: CapabilityKeys
    broker: Broker
    service: InferService


def regional(tmp_path: Path, broker_url: str, min_scale: int = 0, **env: str) -> InferService:
    """The template's regional infer service (home: it reports to the broker), with Knative's
    shortest stable window (6 s), a 1 s scale-to-zero grace and no scale-down delay, so a test
    sees it scale back to zero."""
    template = load_template(ROOT / "template.yaml")
    platform = plan(
        template,
        ROOT / "template.yaml",
        tmp_path,
        ingress_port=free_port(),
        broker_url=broker_url,
        issuer_url="http://127.0.0.1:9",
        admin_token="t",
    )
    write_json(platform.trust_file, platform.trust.to_json())
    write_json(platform.endpoints_file, platform.endpoints)
    service = next(s for s in platform.services if s.tier == "regional")
    for index in range(1, service.scaling.max_scale + 1):  # the issuer's files, as it writes them
        tokens = tmp_path / "tokens" / service.replica_name(index)
        tokens.mkdir(parents=True)
        (tokens / "sink").write_text("replica-token", encoding="utf-8")
    scaling = dataclasses.replace(
        service.scaling,
        stable_window_s=6.0,
        scale_to_zero_grace_s=1.0,
        scale_down_delay_s=0.0,
        min_scale=min_scale,
    )
    fast = {"TOLLGATE_OUTBOX_MAX_BACKOFF_SECONDS": "0.5", **env}
    return dataclasses.replace(service, scaling=scaling, env={**service.env, **fast})


@contextmanager
def running(tmp_path: Path, min_scale: int = 0, **env: str) -> Iterator[Setup]:
    broker = Broker()
    with serving(broker.app()) as broker_url:
        service = regional(tmp_path, broker_url, min_scale, **env)
        keys = capability_keys(tmp_path / "keys")
        supervisor = Supervisor(tmp_path / "logs")
        restarts = Restarts(BackOff())
        scaler = Scaler(supervisor, [service], restarts)
        server = ActivatorServer(scaler.activators()[0], service.port)
        stop = threading.Event()

        def watch() -> None:  # what tollgate up's main loop does (infra/local/up.py _watch)
            scaler.start()
            while not stop.is_set():
                scaler.wake.wait(TICK_S)
                scaler.wake.clear()
                for dead in supervisor.dead(waiting=restarts.waiting):
                    restarts.crashed(dead)
                for restart in restarts.due():
                    supervisor.restart(restart.child)
                scaler.tick()

        server.start()
        # The thread that starts children lives as long as they do (they die with it).
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield Setup(scaler, server.url, keys, broker, service)
        finally:
            stop.set()
            watcher.join(10)
            scaler.stop()
            supervisor.stop()
            server.stop()


def chat(setup: Setup, hold: str = "acme:1") -> requests.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
    capability = setup.keys.capability(hold, "acme", model=MODEL, cluster=CLUSTER, tier="regional")
    return requests.post(
        setup.url + "/v1/chat/completions",
        json=body,
        headers={wire.CAPABILITY: capability},
        timeout=120,
    )


def names(setup: Setup) -> list[str]:
    return [c.spec.name for c in setup.scaler.supervisor.children]


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_replica_scaled_down_goes_only_once_its_metering_is_delivered(tmp_path: Path) -> None:
    with running(tmp_path) as setup:
        time.sleep(1)
        assert names(setup) == []  # nothing runs before a request
        setup.broker.refusing.set()  # the broker is down: the replica's outbox keeps the event
        assert chat(setup, "acme:7").status_code == 200  # from zero
        assert names(setup) == ["infer-regional-1"]
        sample = parse_metrics(requests.get(setup.url + "/metrics", timeout=5).text)
        assert sample.replicas == 1 and sample.cold_start_ms is not None
        outbox = setup.service.outbox_dir(1)
        assert owed(outbox) == 1
        activator = setup.scaler.activators()[0]
        # Idle: scale to zero is wanted, the replica drains (no requests) but stays to deliver.
        wait_until(lambda: any(r.draining for r in activator.replicas()))
        time.sleep(3)
        assert names(setup) == ["infer-regional-1"] and owed(outbox) == 1
        assert setup.broker.events == []
        setup.broker.refusing.clear()
        wait_until(lambda: names(setup) == [], 30)
        assert owed(outbox) == 0
        assert parse_metrics(requests.get(setup.url + "/metrics", timeout=5).text).replicas == 0
        assert _delivered(setup) == [("inference.completed", "acme:7")]  # once, not lost


def test_an_outbox_a_stopped_replica_left_owing_is_picked_up_again(tmp_path: Path) -> None:
    # What a replica killed with the platform left: replica 3's outbox owes one event.
    broker_down = Outbox(
        tmp_path / "outbox" / "infer-regional-3",
        {"sink": lambda _: Outcome(Verdict.RETRY, "down")},
        name="infer",
    )
    broker_down.put(
        "io.tollgate.inference.completed.v1", "/left", {"hold_id": "acme:3"}, id="acme:3"
    )
    broker_down.close()
    with running(tmp_path) as setup:
        # Started drained at once (it takes no requests), delivers, and is retired.
        wait_until(lambda: ("inference.completed", "acme:3") in _delivered(setup), 60)
        wait_until(lambda: names(setup) == [], 30)
        assert owed(setup.service.outbox_dir(3)) == 0
        assert _delivered(setup) == [("inference.completed", "acme:3")]


def test_a_crashed_replica_restarts_on_its_own_back_off_while_the_other_serves(
    tmp_path: Path,
) -> None:
    with running(tmp_path, min_scale=2) as setup:
        activator = setup.scaler.activators()[0]
        wait_until(lambda: sum(r.ready for r in activator.replicas()) == 2)
        victim = setup.scaler.supervisor.find("infer-regional-1")
        assert victim is not None
        victim.process.kill()
        victim.process.wait(timeout=30)  # crashed: its port refuses connections
        answers = [chat(setup, f"acme:{n}") for n in range(3)]  # meanwhile: replica 2 serves
        assert [a.status_code for a in answers] == [200, 200, 200]
        # The supervisor restarted it (same name, identity and outbox), and it serves again.
        wait_until(lambda: sum(r.ready for r in activator.replicas()) == 2, 60)
        again = setup.scaler.supervisor.find("infer-regional-1")
        assert again is not None and again.process.pid != victim.process.pid
        assert setup.scaler.restarts.waiting == {}
        wait_until(lambda: len(setup.broker.events) == 3, 30)
        assert sorted(h for _, h in _delivered(setup)) == ["acme:0", "acme:1", "acme:2"]


def test_a_replica_that_cannot_start_fails_the_waiting_request(tmp_path: Path) -> None:
    with running(tmp_path, TOLLGATE_ENGINE="no-such-engine") as setup:
        r = chat(setup)
        assert r.status_code == 503, r.text
        message = r.json()["error"]["message"]
        assert "cannot start: infer-regional-1 exited with status" in message
        assert requests.get(setup.url + "/readyz", timeout=5).status_code == 503


def _delivered(setup: Setup) -> list[tuple[str, str]]:
    """(short type, hold id) of what the broker took."""
    return [(kind.split(".", 2)[2].removesuffix(".v1"), h) for kind, h in setup.broker.events]
