"""Scale to zero: cold start on the first request, warm after, unload when idle; load metrics."""

from __future__ import annotations

import time

import requests

from infer_fn.config import InferConfig
from tests.infer.conftest import Server, create_app
from tests.infer.fakes import ScriptedEngine

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}


def _metric(server: Server, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed")


def test_cold_start_then_warm(serve: type[Server], config: InferConfig) -> None:
    engine = ScriptedEngine(["a", "b"], load_seconds=0.2)
    server = serve(create_app(config, engine=engine))
    assert not engine.loaded and _metric(server, "tollgate_infer_loaded") == 0
    cold_starts = _metric(server, "tollgate_infer_cold_starts_total")

    first = requests.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=10)
    second = requests.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=10)

    assert int(first.headers["x-tollgate-cold-start-ms"]) >= 200
    assert second.headers["x-tollgate-cold-start-ms"] == "0"
    assert engine.loads == 1
    assert _metric(server, "tollgate_infer_loaded") == 1
    assert _metric(server, "tollgate_infer_cold_starts_total") == cold_starts + 1


def test_unloads_after_idle_and_loads_again(serve: type[Server], config: InferConfig) -> None:
    engine = ScriptedEngine(["a"], load_seconds=0.05)
    server = serve(create_app(config.model_copy(update={"idle_seconds": 0.3}), engine=engine))
    requests.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert engine.loaded
    deadline = time.monotonic() + 5
    while engine.loaded and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.loaded and engine.unloads == 1
    assert _metric(server, "tollgate_infer_loaded") == 0

    again = requests.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert again.ok and int(again.headers["x-tollgate-cold-start-ms"]) >= 50
    assert engine.loads == 2


def test_never_unloads_under_a_running_stream(serve: type[Server], config: InferConfig) -> None:
    engine = ScriptedEngine([f"w{i}" for i in range(10)], token_seconds=0.1)
    server = serve(create_app(config.model_copy(update={"idle_seconds": 0.05}), engine=engine))
    loaded_throughout = True
    with requests.post(
        f"{server.url}/v1/chat/completions", json={**CHAT, "stream": True}, stream=True, timeout=10
    ) as reply:
        for line in reply.iter_lines(chunk_size=None):
            loaded_throughout &= engine.loaded or line == b"data: [DONE]"
    assert loaded_throughout and engine.unloads <= 1
    assert len(engine.generations) == 1 and engine.generations[0].completion_tokens == 10


def test_stream_is_sent_as_it_is_generated(serve: type[Server], config: InferConfig) -> None:
    """waitress must not buffer SSE: the first word arrives long before the last is made."""
    engine = ScriptedEngine([f"w{i}" for i in range(10)], token_seconds=0.15)
    server = serve(create_app(config, engine=engine))
    started = time.perf_counter()
    arrivals: list[float] = []
    with requests.post(
        f"{server.url}/v1/chat/completions", json={**CHAT, "stream": True}, stream=True, timeout=10
    ) as reply:
        for line in reply.iter_lines(chunk_size=None):
            if b'"content":"' in line and b'"content":""' not in line:
                arrivals.append(time.perf_counter() - started)
    assert len(arrivals) == 10
    assert arrivals[0] < 0.6 < 1.3 < arrivals[-1]


def test_load_gauges_are_exposed_with_stable_names(
    serve: type[Server], config: InferConfig
) -> None:
    server = serve(create_app(config, engine=ScriptedEngine(["a"])))
    requests.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=10)
    for name in (
        "tollgate_infer_queue_depth",
        "tollgate_infer_running",
        "tollgate_infer_loaded",
        "tollgate_infer_kv_cache_usage_ratio",
        "tollgate_infer_tokens_per_second",
        "tollgate_infer_cold_starts_total",
        "tollgate_infer_ttft_seconds_count",
        "tollgate_infer_tokens_total",
        "tollgate_infer_requests_total",
    ):
        _metric(server, name)
    assert _metric(server, "tollgate_infer_queue_depth") == 0
    assert _metric(server, "tollgate_infer_running") == 0
