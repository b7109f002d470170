"""The OpenAI surface, scale to zero, admission and metering, over a scripted engine whose every
token is known — through the real app on a real HTTP server, with the official client."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import openai
import pytest
import requests
from openai.types.chat import ChatCompletionMessageParam

from infer_fn.app import engine_host
from infer_fn.config import InferConfig
from tests.infer.conftest import Server, create_app
from tests.infer.fakes import ScriptedEngine

WORDS = [f"w{i}" for i in range(40)]
SAY: list[ChatCompletionMessageParam] = [{"role": "user", "content": "say the words"}]
CHAT = {"model": "scripted", "messages": SAY}


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(serve: type[Server], config: InferConfig) -> None:
    server = serve(create_app(config, engine=ScriptedEngine(WORDS)))
    assert [m.id for m in client(server).models.list()] == ["scripted"]


def test_chat_and_completions_through_the_openai_client(
    serve: type[Server], config: InferConfig
) -> None:
    server = serve(create_app(config, engine=ScriptedEngine(WORDS[:5])))
    api = client(server)
    chat = api.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "a b c"}], max_tokens=10
    )
    assert chat.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (3, 5)

    stream = api.chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": "a b c"}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3

    completion = api.completions.create(model="scripted", prompt="x y", max_tokens=2)
    assert completion.choices[0].text == "w0 w1"
    assert completion.usage is not None and completion.usage.total_tokens == 4
    streamed = api.completions.create(model="scripted", prompt="x y", max_tokens=2, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "w0 w1"


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        ({**CHAT, "model": "gpt-9"}, {}, 404, "model_not_found"),
        ({**CHAT, "max_tokens": 0}, {}, 400, None),
        ({**CHAT, "max_tokens": 64}, {}, 400, "context_length_exceeded"),
        (
            {**CHAT, "messages": [{"role": "user", "content": "w " * 70}]},
            {},
            400,
            "context_length_exceeded",
        ),
        (b"{not json", {}, 400, "invalid_json"),
        ([1, 2], {}, 400, "invalid_json"),
        ({"model": "scripted"}, {}, 400, None),
        ({**CHAT, "messages": []}, {}, 400, None),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, {}, 400, None),
        ({**CHAT, "n": 2}, {}, 400, None),
        ({**CHAT, "temperature": 7}, {}, 400, None),
        ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, {}, 400, None),
        (
            {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]},
            {},
            413,
            "request_too_large",
        ),
    ],
)
def test_bad_input_gets_its_status_and_the_engine_still_serves(
    serve: type[Server],
    config: InferConfig,
    body: Any,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    config = config.model_copy(update={"max_body_bytes": 4096})
    server = serve(create_app(config, engine=ScriptedEngine(WORDS)))
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = requests.post(
        f"{server.url}/v1/chat/completions",
        data=data,
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    ok = requests.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert ok.status_code == 200
    assert ok.json()["choices"][0]["message"]["content"].startswith("w0 w1")


def test_chunked_body_over_the_limit_is_413(serve: type[Server], config: InferConfig) -> None:
    config = config.model_copy(update={"max_body_bytes": 1024})
    server = serve(create_app(config, engine=ScriptedEngine(WORDS)))
    chunks = iter([b'{"model": "scripted", "messages": [', b" " * 2048, b"]}"])
    reply = requests.post(f"{server.url}/v1/chat/completions", data=chunks, timeout=10)
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"


def test_full_queue_answers_429_with_retry_after(serve: type[Server], config: InferConfig) -> None:
    config = config.model_copy(update={"concurrency": 1, "queue_size": 1, "retry_after_seconds": 3})
    engine = ScriptedEngine(WORDS[:10], token_seconds=0.1)
    app = create_app(config, engine=engine)
    host = engine_host(app)
    server = serve(app, config.server_threads)
    busy = [
        threading.Thread(
            target=requests.post,
            args=(f"{server.url}/v1/chat/completions",),
            kwargs={"json": CHAT, "timeout": 30},
        )
        for _ in range(2)
    ]
    busy[0].start()
    _wait(lambda: host.admission.running == 1)
    busy[1].start()
    _wait(lambda: host.admission.waiting == 1)
    with pytest.raises(openai.RateLimitError) as refused:
        client(server).chat.completions.create(model="scripted", messages=SAY)
    assert refused.value.response.headers["Retry-After"] == "3"
    assert refused.value.code == "queue_full"
    for thread in busy:
        thread.join()
    assert (
        client(server)
        .chat.completions.create(model="scripted", messages=SAY)
        .choices[0]
        .message.content
    )


def _wait(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
