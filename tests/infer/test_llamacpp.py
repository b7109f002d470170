"""The real SmolLM2 model on CPU, served by infer_fn over HTTP and called with the official client.

Usage must equal llama-cpp-python's own count for the same request (its high-level API on the
same file) and the model's tokenization of the answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import openai
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from events import wire
from events.openai import ChatRequest, CompletionRequest
from events.types import INFERENCE_COMPLETED, INFERENCE_FAILED
from functions.auth.keys import KEYS_ENV
from functions.auth.policy import Trust
from functions.auth.senders import AUDIENCE_ENV, DISCOVERY_ENV, TRUST_ENV
from functions.auth.tokens import SINK, TOKEN_DIR_ENV
from infer_fn.config import InferConfig
from infer_fn.engines.base import InvalidRequest, SamplingParams
from infer_fn.engines.llamacpp import LlamaCppEngine
from tests.infer.conftest import (
    FRANCE_MESSAGES,
    MODEL,
    TEST_KEYS,
    Server,
    Sink,
    create_app,
    free_port,
    own_chat,
    own_completion,
)
from tests.infer.fakes import FaultyEngine
from tests.trust import TestIssuer

pytestmark = pytest.mark.model

HOLD = {"x-tollgate-hold-id": "hold-p", "x-tollgate-account-id": "acct-p"}


@pytest.fixture
def api(
    serve: type[Server], model_config: InferConfig, llama_engine: LlamaCppEngine, sink: Sink
) -> Iterator[openai.OpenAI]:
    server = serve(create_app(model_config, engine=llama_engine))
    yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)


def test_paris_without_streaming(
    api: openai.OpenAI, reference: llama_cpp.Llama, llama_engine: LlamaCppEngine
) -> None:
    reply = api.chat.completions.create(
        model=MODEL,
        messages=FRANCE_MESSAGES,
        temperature=0,
        max_tokens=32,
    )
    text = reply.choices[0].message.content or ""
    assert "Paris" in text
    own = own_chat(reference, 32)
    assert own["choices"][0]["message"]["content"] == text
    assert reply.usage is not None
    assert reply.usage.model_dump(exclude_none=True) == own["usage"]
    # The answer re-tokenized by the model is exactly the metered completion.
    assert reply.usage.completion_tokens == llama_engine.count_tokens(text)


def test_paris_streaming_with_usage(
    api: openai.OpenAI, reference: llama_cpp.Llama, sink: Sink
) -> None:
    chunks = list(
        api.chat.completions.create(
            model=MODEL,
            messages=FRANCE_MESSAGES,
            temperature=0,
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=HOLD,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    usage = chunks[-1].usage
    assert usage is not None
    own = own_chat(reference, 32)
    assert usage.model_dump(exclude_none=True) == own["usage"]
    [event] = sink.wait_for(1)
    assert event["type"] == INFERENCE_COMPLETED
    assert event.data["usage"] == own["usage"]


def test_completions_endpoint(api: openai.OpenAI, reference: llama_cpp.Llama) -> None:
    prompt = "The capital of France is"
    reply = api.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=8)
    assert "Paris" in reply.choices[0].text
    own = own_completion(reference, prompt, 8)
    assert reply.choices[0].text == own["choices"][0]["text"]
    assert reply.usage is not None
    assert reply.usage.model_dump(exclude_none=True) == own["usage"]


def test_stop_sequences_are_honoured(api: openai.OpenAI) -> None:
    reply = api.completions.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=16, stop=["."]
    )
    assert reply.choices[0].text == " Paris"
    assert reply.choices[0].finish_reason == "stop"


def test_prompt_over_the_context_window_is_400_and_the_model_still_answers(
    api: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Paris " * 3000}]
        )
    assert refused.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model=MODEL, messages=FRANCE_MESSAGES, max_tokens=2030)
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="gpt-4o", messages=FRANCE_MESSAGES)
    reply = api.chat.completions.create(model=MODEL, messages=FRANCE_MESSAGES, temperature=0)
    assert "Paris" in (reply.choices[0].message.content or "")


def test_disconnect_stops_the_real_model(
    serve: type[Server], model_config: InferConfig, llama_engine: LlamaCppEngine, sink: Sink
) -> None:
    server = serve(create_app(model_config, engine=llama_engine))
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 400,
        "stream": True,
        "temperature": 0,
    }
    with requests.post(
        f"{server.url}/v1/chat/completions", json=body, headers=HOLD, stream=True, timeout=60
    ) as reply:
        lines = reply.iter_lines(chunk_size=None)
        seen = 0
        while seen < 5:
            seen += b'"content":"' in next(lines)
    [event] = sink.wait_for(1, timeout=30)
    assert event["type"] == INFERENCE_COMPLETED
    assert 4 <= event.data["usage"]["completion_tokens"] < 400


def test_engine_failure_mid_stream_on_the_real_model(
    serve: type[Server], model_config: InferConfig, llama_engine: LlamaCppEngine, sink: Sink
) -> None:
    server = serve(create_app(model_config, engine=FaultyEngine(llama_engine, fail_after=3)))
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in api.chat.completions.create(
            model=MODEL,
            messages=FRANCE_MESSAGES,
            stream=True,
            extra_headers=HOLD,
        ):
            pass
    [event] = sink.wait_for(1)
    assert event["type"] == INFERENCE_FAILED
    assert event.data["usage"]["completion_tokens"] >= 3
    # The lock was released: the same engine answers right after.
    healthy = serve(create_app(model_config, engine=llama_engine))
    reply = requests.post(
        f"{healthy.url}/v1/chat/completions",
        json={"model": MODEL, "messages": FRANCE_MESSAGES, "temperature": 0},
        timeout=60,
    )
    assert "Paris" in reply.json()["choices"][0]["message"]["content"]


def test_cold_start_warm_and_idle_unload_of_the_real_model(
    serve: type[Server], model_config: InferConfig
) -> None:
    engine = LlamaCppEngine(model_config.resolved_model_path(), MODEL, n_ctx=512, threads=None)
    config = model_config.model_copy(update={"idle_seconds": 1.0})
    server = serve(create_app(config, engine=engine))
    body = {"model": MODEL, "messages": FRANCE_MESSAGES, "temperature": 0, "max_tokens": 12}
    first = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    second = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert int(first.headers["x-tollgate-cold-start-ms"]) > 0
    assert second.headers["x-tollgate-cold-start-ms"] == "0"
    assert int(second.headers["x-tollgate-engine-ms"]) > 0  # real generation took engine time
    assert first.json()["choices"] == second.json()["choices"]
    end = time.monotonic() + 10
    while engine.loaded and time.monotonic() < end:
        time.sleep(0.1)
    assert not engine.loaded


def test_configured_from_the_environment_and_served_like_on_knative(
    sink: Sink, issuer: TestIssuer, tmp_path: Path
) -> None:
    """`tollgate serve infer` reads its config from env and runs on the runtime's `serve`
    (waitress), with its identity, its token for the sink and the capability keys."""
    port = free_port()
    (tmp_path / "own-tokens").mkdir()
    (tmp_path / "own-tokens" / SINK).write_text(issuer.token("infer-smol", "sink"), "utf-8")
    (tmp_path / "trust.json").write_text(json.dumps(Trust({}).to_json()), encoding="utf-8")
    env = {
        **os.environ,
        "PORT": str(port),
        "K_SINK": sink.url,
        "TOLLGATE_TIER": "edge",
        "TOLLGATE_CLUSTER": "edge-lyon-3",
        "TOLLGATE_N_CTX": "1024",
        DISCOVERY_ENV: issuer.url,
        AUDIENCE_ENV: "serving.knative.dev/service/tollgate/infer-smol",
        TRUST_ENV: str(tmp_path / "trust.json"),
        TOKEN_DIR_ENV: str(tmp_path / "own-tokens"),
        KEYS_ENV: str(TEST_KEYS.directory),
    }
    code = (
        "from functions.server import serve; from infra.serve import build_app; "
        "serve(build_app('infer'))"
    )
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/readyz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
            assert process.poll() is None and time.monotonic() < deadline
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
        stream = api.chat.completions.create(
            model=MODEL,
            messages=FRANCE_MESSAGES,
            temperature=0,
            stream=True,
            extra_headers={
                wire.CAPABILITY: TEST_KEYS.capability(
                    "a-env:1", "a-env", model=MODEL, cluster="edge-lyon-3", max_tokens=64
                )
            },
        )
        assert "Paris" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        [event] = sink.wait_for(1)
        assert event["source"] == "/tollgate/infer/edge/edge-lyon-3"
        assert event.data["usage"]["prompt_tokens"] == 42
    finally:
        process.terminate()
        process.wait(timeout=30)


BOUND_CHATS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": ""}],
    [{"role": "assistant", "content": None}, {"role": "tool", "content": ""}],
    [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]}],
    [{"role": "user", "content": "<|im_start|>system<|im_end|>" * 8}],
    [{"role": "user", "content": "Grüße, 東京 🚀 " * 40}],
    [{"role": "user", "content": ""}] * 40,
]


@pytest.mark.parametrize("messages", BOUND_CHATS)
def test_the_quoted_prompt_bound_holds_for_the_real_chat_template(
    llama_engine: LlamaCppEngine, messages: list[dict[str, Any]]
) -> None:
    """The ingress quotes a prompt it has not tokenized: its bound must cover what the model's
    template and tokenizer make of it, default system prompt included."""
    request = ChatRequest.model_validate({"model": MODEL, "messages": messages})
    rendered = [m.for_template() for m in request.messages]
    gen = llama_engine.chat(rendered, SamplingParams(max_tokens=1))
    gen.close()
    assert 0 < gen.prompt_tokens <= request.prompt_tokens_bound()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=6), st.text(min_size=1, max_size=400))
def test_the_prompt_bound_holds_for_any_text(
    llama_engine: LlamaCppEngine, texts: list[str], prompt: str
) -> None:
    chat = ChatRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": t} for t in texts]}
    )
    gen = llama_engine.chat([m.for_template() for m in chat.messages], SamplingParams(max_tokens=1))
    gen.close()
    assert gen.prompt_tokens <= chat.prompt_tokens_bound()
    completion = CompletionRequest.model_validate({"model": MODEL, "prompt": prompt})
    try:
        gen = llama_engine.complete(completion.text, SamplingParams(max_tokens=1))
    except InvalidRequest:  # nothing the tokenizer keeps (control characters): refused, unrun
        return
    gen.close()
    assert gen.prompt_tokens <= completion.prompt_tokens_bound()
