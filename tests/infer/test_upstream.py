"""The openai-upstream engine against a real OpenAI-compatible server process
(`python -m llama_cpp.server` on the same GGUF), and against a vLLM-shaped server for what only
vLLM does (usage on every chunk, its Prometheus load metrics)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import flask
import llama_cpp
import openai
import pytest
import requests

from events.types import INFERENCE_COMPLETED
from infer_fn.app import engine_host
from infer_fn.config import EngineKind, InferConfig
from tests.infer.conftest import (
    FRANCE_MESSAGES,
    MODEL,
    Server,
    Sink,
    create_app,
    free_port,
    own_chat,
)

HOLD = {"x-tollgate-hold-id": "hold-u", "x-tollgate-account-id": "acct-u"}


@pytest.fixture(scope="module")
def llama_server(model_path: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/v1/models", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("llama_cpp.server did not start")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def upstream_api(
    serve: type[Server], llama_server: str, sink: Sink
) -> Iterator[tuple[openai.OpenAI, flask.Flask]]:
    config = InferConfig(
        engine=EngineKind.OPENAI_UPSTREAM,
        model_name=MODEL,
        upstream_url=llama_server,
        concurrency=4,
        idle_seconds=0,
        cluster="gpu-1",
        tier="regional",
    )
    app = create_app(config)
    server = serve(app)
    yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0), app


@pytest.mark.model
def test_paris_through_the_upstream_with_exact_usage(
    upstream_api: tuple[openai.OpenAI, flask.Flask], reference: llama_cpp.Llama, sink: Sink
) -> None:
    api, app = upstream_api
    reply = api.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=FRANCE_MESSAGES,
        temperature=0,
        max_tokens=32,
        extra_headers=HOLD,
    )
    assert int(reply.headers["x-tollgate-cold-start-ms"]) > 0  # waited for the upstream
    answer = reply.parse()
    assert "Paris" in (answer.choices[0].message.content or "")
    own = own_chat(reference, 32)
    assert answer.usage is not None
    assert answer.usage.model_dump(exclude_none=True) == own["usage"]
    [event] = sink.wait_for(1)
    assert event["type"] == INFERENCE_COMPLETED
    assert event["source"] == "/tollgate/infer/regional/gpu-1"
    assert engine_host(app).engine.count_tokens("The capital of France is Paris.") == 7
    assert event.data["usage"] == own["usage"]


@pytest.mark.model
def test_streamed_from_an_upstream_without_usage_falls_back_to_its_tokenizer(
    upstream_api: tuple[openai.OpenAI, flask.Flask], llama_server: str, sink: Sink
) -> None:
    """llama.cpp's server ignores stream_options; the count must still be the server's own."""
    api, _ = upstream_api
    prompt = "The capital of France is"
    chunks = list(
        api.completions.create(
            model=MODEL,
            prompt=prompt,
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=HOLD,
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    own = requests.post(
        f"{llama_server}/v1/completions",
        json={"prompt": prompt, "temperature": 0, "max_tokens": 8},
        timeout=60,
    ).json()
    assert text == own["choices"][0]["text"]
    [event] = sink.wait_for(1)
    assert event.data["usage"] == own["usage"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude_none=True) == own["usage"]

    chat = list(
        api.chat.completions.create(
            model=MODEL,
            messages=FRANCE_MESSAGES,
            temperature=0,
            max_tokens=32,
            stream=True,
        )
    )
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in chat if c.choices)


@pytest.mark.model
def test_upstream_rejections_are_relayed_and_it_still_serves(
    upstream_api: tuple[openai.OpenAI, flask.Flask],
) -> None:
    api, _ = upstream_api
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Paris " * 3000}]
        )
    assert refused.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="other", messages=FRANCE_MESSAGES)
    reply = api.chat.completions.create(model=MODEL, messages=FRANCE_MESSAGES, temperature=0)
    assert "Paris" in (reply.choices[0].message.content or "")


# vLLM's /metrics as v0.33.0 exposes its load gauges (vllm/v1/metrics/loggers.py): one sample per
# engine, here two data-parallel engines; the KV-cache gauge has its current name only.
METRICS_V0_33 = (
    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
    'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0\n'
    'vllm:num_requests_waiting{engine="1",model_name="m"} 2.0\n'
    "# TYPE vllm:num_requests_waiting_by_reason gauge\n"
    'vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 1.0\n'
    'vllm:num_requests_waiting_by_reason{engine="1",model_name="m",reason="capacity"} 2.0\n'
    "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42\n'
    'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.17\n'
    "# TYPE vllm:prefix_cache_queries counter\n"
    'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 120.0\n'
)
# The same load as v0.6.6 (the release the template pinned before) exposes it.
METRICS_V0_6_6 = (
    "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{model_name="m"} 3.0\n'
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{model_name="m"} 5.0\n'
    "# TYPE vllm:gpu_cache_usage_perc gauge\n"
    'vllm:gpu_cache_usage_perc{model_name="m"} 0.42\n'
)


class FakeVLLM:
    """vLLM's wire behaviour for what llama.cpp's server lacks, as v0.33.0 has it: with
    `stream_options` {include_usage, continuous_usage_stats} every chunk carries the usage so far
    (from the first, role-only chunk on), then a usage-only chunk ends the stream; and its
    Prometheus load metrics."""

    def __init__(self, tokens: int, token_seconds: float = 0.0, metrics: str = METRICS_V0_33):
        self.bodies: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    payload = {"data": [{"id": "m", "max_model_len": 4096}]}
                    self._send(json.dumps(payload).encode(), "application/json")
                else:
                    self._send(metrics.encode(), "text/plain")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.bodies.append(body)
                if not body.get("stream"):
                    text = "".join(f"t{i} " for i in range(tokens))
                    whole = {
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "length",
                                "message": {"role": "assistant", "content": text},
                            }
                        ],
                        "usage": _usage(tokens),
                    }
                    self._send(json.dumps(whole).encode(), "application/json")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                options = body.get("stream_options") or {}
                include = bool(options.get("include_usage"))
                continuous = include and bool(options.get("continuous_usage_stats"))

                def send(choices: list[dict[str, Any]], usage: dict[str, int] | None) -> None:
                    chunk = {"object": "chat.completion.chunk", "choices": choices, "usage": usage}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()

                try:
                    role = {"index": 0, "delta": {"role": "assistant", "content": ""}}
                    send([{**role, "finish_reason": None}], _usage(0) if continuous else None)
                    for i in range(tokens):
                        time.sleep(token_seconds)
                        choice = {
                            "index": 0,
                            "delta": {"content": f"t{i} "},
                            "finish_reason": "length" if i == tokens - 1 else None,
                        }
                        send([choice], _usage(i + 1) if continuous else None)
                    if include:
                        send([], _usage(tokens))
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, data: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _usage(completion: int) -> dict[str, int]:
    return {"prompt_tokens": 11, "completion_tokens": completion, "total_tokens": 11 + completion}


def _vllm_app(serve: type[Server], vllm: FakeVLLM) -> Server:
    config = InferConfig(
        engine=EngineKind.OPENAI_UPSTREAM,
        model_name="big",
        upstream_url=vllm.url,
        concurrency=8,
        idle_seconds=0,
    )
    return serve(create_app(config))


def test_continuous_usage_is_exact_even_when_the_client_leaves(
    serve: type[Server], sink: Sink
) -> None:
    vllm = FakeVLLM(tokens=200, token_seconds=0.02)
    server = _vllm_app(serve, vllm)
    body = {"model": "big", "messages": FRANCE_MESSAGES, "stream": True}
    with requests.post(
        f"{server.url}/v1/chat/completions", json=body, headers=HOLD, stream=True, timeout=30
    ) as reply:
        lines = reply.iter_lines(chunk_size=None)
        seen = 0
        while seen < 5:
            seen += b'"content":"t' in next(lines)
    [event] = sink.wait_for(1)
    assert vllm.bodies[0]["stream_options"] == {
        "include_usage": True,
        "continuous_usage_stats": True,
    }
    assert vllm.bodies[0]["model"] == "m"
    usage = event.data["usage"]
    assert usage["prompt_tokens"] == 11
    # Metered from the last usage seen before the client left, not the 200 the upstream had queued.
    assert 5 <= usage["completion_tokens"] < 200
    assert usage["total_tokens"] == 11 + usage["completion_tokens"]
    vllm.close()


def test_streamed_usage_from_vllm_is_exact_to_the_end(serve: type[Server], sink: Sink) -> None:
    vllm = FakeVLLM(tokens=20)
    server = _vllm_app(serve, vllm)
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
    chunks = list(
        api.chat.completions.create(
            model="big",
            messages=FRANCE_MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=HOLD,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"t{i} " for i in range(20))
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude_none=True) == _usage(20)
    [event] = sink.wait_for(1)
    assert event.data["usage"] == _usage(20)
    vllm.close()


@pytest.mark.parametrize(
    "exposition", [METRICS_V0_33, METRICS_V0_6_6], ids=["vllm-0.33.0", "vllm-0.6.6"]
)
def test_vllm_load_metrics_are_mapped_to_ours(serve: type[Server], exposition: str) -> None:
    vllm = FakeVLLM(tokens=2, metrics=exposition)
    server = _vllm_app(serve, vllm)
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
    reply = api.chat.completions.create(model="big", messages=FRANCE_MESSAGES)
    assert reply.choices[0].message.content == "t0 t1 "
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("tollgate_infer_") and "{" not in line
    }
    assert values["tollgate_infer_queue_depth"] == 3
    assert values["tollgate_infer_running"] == 5
    assert values["tollgate_infer_kv_cache_usage_ratio"] == pytest.approx(0.42)
    assert values["tollgate_infer_loaded"] == 1
    vllm.close()


def test_max_tokens_beyond_the_upstream_window_is_400(serve: type[Server]) -> None:
    vllm = FakeVLLM(tokens=1)
    server = _vllm_app(serve, vllm)
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
    api.chat.completions.create(model="big", messages=FRANCE_MESSAGES)
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model="big", messages=FRANCE_MESSAGES, max_tokens=5000)
    vllm.close()


def test_unreachable_upstream_is_503(serve: type[Server]) -> None:
    config = InferConfig(
        engine=EngineKind.OPENAI_UPSTREAM,
        model_name="big",
        upstream_url=f"http://127.0.0.1:{free_port()}",
        load_timeout_seconds=0.5,
        idle_seconds=0,
    )
    server = serve(create_app(config))
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
    with pytest.raises(openai.InternalServerError) as failed:
        api.chat.completions.create(model="big", messages=FRANCE_MESSAGES)
    assert failed.value.status_code == 503
