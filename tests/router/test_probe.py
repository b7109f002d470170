"""The prober against real HTTP servers: health after K failures, load from /metrics, timeouts,
unreachable and garbled endpoints, and the background runner."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from functions.store import Store
from router_fn.probe import BackgroundProber, Prober, parse_metrics, start_probing
from router_fn.tierstate import TierStates
from router_fn.topology import ClusterSpec, Topology
from tests.clock import Clock
from tests.router.helpers import topology


def metrics_text(queue: int = 0, running: int = 0, loaded: bool = True, cold: float = 0) -> str:
    """An exposition with the infer function's metric names and types."""
    registry = CollectorRegistry()
    Gauge("tollgate_infer_queue_depth", "q", registry=registry).set(queue)
    Gauge("tollgate_infer_running", "r", registry=registry).set(running)
    Gauge("tollgate_infer_loaded", "l", registry=registry).set(1 if loaded else 0)
    Gauge("tollgate_infer_tokens_per_second", "t", registry=registry).set(42.5)
    Counter("tollgate_infer_tokens", "k", ["kind"], registry=registry).labels("prompt").inc(9)
    histogram = Histogram("tollgate_infer_cold_start_seconds", "c", registry=registry)
    if cold:
        histogram.observe(cold)
        histogram.observe(cold * 3)
    return generate_latest(registry).decode()


@dataclass
class Behaviour:
    ready: int = 200
    metrics: str = field(default_factory=metrics_text)
    delay_s: float = 0.0


class InferStub:
    """A threaded HTTP server answering /<endpoint>/readyz and /<endpoint>/metrics."""

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name, _, what = self.path.strip("/").partition("/")
                b = stub.behaviours.get(name)
                if b is None:
                    self.send_error(404)
                    return
                time.sleep(b.delay_s)
                status, body = (
                    (b.ready, '{"status":"ready"}')
                    if what == "readyz"
                    else (
                        200,
                        b.metrics,
                    )
                )
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[InferStub]:
    server = InferStub()
    yield server
    server.close()


def stub_topology(stub: InferStub, *names: str) -> Topology:
    """One cluster per name, its "small" infer function served by the stub."""
    for name in names:
        stub.behaviours[name] = Behaviour()
    return topology(
        ClusterSpec(name, "edge", "FR", 8, None, {"small": f"{stub.url}/{name}"}) for name in names
    )


def test_parse_metrics_reads_the_load_gauges_and_mean_cold_start() -> None:
    sample = parse_metrics(metrics_text(queue=3, running=2, loaded=False, cold=1.5))
    assert (sample.queue_depth, sample.running, sample.warm) == (3, 2, False)
    assert sample.cold_start_ms == 3000  # mean of 1.5 s and 4.5 s
    assert sample.tokens_per_second == 42.5
    assert parse_metrics(metrics_text()).cold_start_ms is None


def test_parse_metrics_matches_the_infer_functions_names() -> None:
    from prometheus_client import REGISTRY

    import infer_fn.metrics  # noqa: F401  (registers the real gauges)

    sample = parse_metrics(generate_latest(REGISTRY).decode())
    assert sample.queue_depth >= 0


def test_parse_metrics_refuses_a_foreign_exposition() -> None:
    with pytest.raises(ValueError, match="tollgate_infer_loaded"):
        parse_metrics("# TYPE up gauge\nup 1\n")


def test_a_healthy_endpoint_reports_health_and_load(stub: InferStub, sqlite_store: Store) -> None:
    topo = stub_topology(stub, "edge-a")
    stub.behaviours["edge-a"].metrics = metrics_text(queue=4, running=1, loaded=True, cold=0.5)
    states = TierStates(sqlite_store, Clock())
    prober = Prober(topo, states)
    try:
        [result] = prober.run_once()
    finally:
        prober.close()
    assert result.ok
    endpoint = states.snapshot()["edge-a"].endpoint("small")
    assert endpoint.health is not None and endpoint.health.healthy
    assert endpoint.load is not None
    assert (endpoint.load.queue_depth, endpoint.load.warm, endpoint.load.cold_start_ms) == (
        4,
        True,
        1000,
    )


def test_unhealthy_after_k_consecutive_failures_healthy_after_one_success(
    stub: InferStub, sqlite_store: Store
) -> None:
    topo = stub_topology(stub, "edge-a", "edge-b")
    stub.behaviours["edge-a"].ready = 503
    clock = Clock()
    states = TierStates(sqlite_store, clock, cache_s=0)
    prober = Prober(topo, states, failures_to_unhealthy=2)
    try:
        prober.run_once()
        assert "edge-a" not in states.snapshot()  # one failure is noise: nothing written
        prober.run_once()
        health = states.snapshot()["edge-a"].endpoint("small").health
        assert health is not None and not health.healthy
        assert health.detail == "2 probes failed, last: readyz 503"
        assert states.snapshot()["edge-b"].endpoint("small").health is not None
        stub.behaviours["edge-a"].ready = 200
        prober.run_once()
        health = states.snapshot()["edge-a"].endpoint("small").health
        assert health is not None and health.healthy
    finally:
        prober.close()


@pytest.mark.parametrize(
    ("breakage", "detail"),
    [
        ("slow", "no answer within 0.2 s"),
        ("garbled", "bad metrics: metrics lack"),
        ("unreachable", "unreachable: ConnectionError"),
    ],
)
def test_failures_are_bounded_and_named(
    stub: InferStub, sqlite_store: Store, breakage: str, detail: str
) -> None:
    topo = stub_topology(stub, "edge-a")
    if breakage == "slow":
        stub.behaviours["edge-a"].delay_s = 1.0
    elif breakage == "garbled":
        stub.behaviours["edge-a"].metrics = "# TYPE up gauge\nup 1\n"
    else:
        stub.close()
    states = TierStates(sqlite_store, Clock(), cache_s=0)
    prober = Prober(topo, states, timeout_s=0.2, failures_to_unhealthy=1)
    started = time.monotonic()
    try:
        [result] = prober.run_once()
    finally:
        prober.close()
    assert time.monotonic() - started < 1.0
    assert not result.ok and result.detail.startswith(detail)
    health = states.snapshot()["edge-a"].endpoint("small").health
    assert health is not None and not health.healthy


def test_the_background_runner_keeps_state_fresh_and_stops(
    stub: InferStub, sqlite_store: Store
) -> None:
    topo = stub_topology(stub, "edge-a")
    states = TierStates(sqlite_store, cache_s=0)
    runner: BackgroundProber = start_probing(topo, states, interval_s=0.05)
    try:
        deadline = time.monotonic() + 5
        while "edge-a" not in states.snapshot() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert states.snapshot()["edge-a"].endpoint("small").load is not None
    finally:
        runner.stop()
    assert not runner._thread.is_alive()
