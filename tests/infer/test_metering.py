"""Metering: exact usage reaches a real CloudEvents sink after the response — on success, on a
client that disconnects mid-stream and on an engine that fails mid-stream."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
from openai.types.chat import ChatCompletionMessageParam

from events.capability import verify
from events.ledger import InferenceCompleted, InferenceFailed
from events.types import INFERENCE_COMPLETED, INFERENCE_FAILED
from infer_fn.config import InferConfig
from tests.infer.conftest import TEST_KEYS, Server, Sink, create_app
from tests.infer.fakes import FaultyEngine, ScriptedEngine

WORDS = [f"w{i}" for i in range(40)]
HOLD = {
    "x-tollgate-hold-id": "hold-7",
    "x-tollgate-account-id": "acct-7",
    "x-tollgate-tier": "regional",
    "x-tollgate-cluster": "test-1",
}
TWO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "two words"}]
CHAT = {"model": "scripted", "messages": TWO}


def _ints(value: object) -> Iterator[object]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _ints(item)
    elif not isinstance(value, str):
        yield value


def test_completed_event_carries_exact_usage_and_integer_timings(
    serve: type[Server], config: InferConfig, sink: Sink
) -> None:
    server = serve(create_app(config, engine=ScriptedEngine(WORDS[:6], token_seconds=0.01)))
    reply = requests.post(
        f"{server.url}/v1/chat/completions", json=CHAT, headers=HOLD, timeout=10
    ).json()
    [event] = sink.wait_for(1)
    assert event["type"] == INFERENCE_COMPLETED
    assert event["id"] == reply["id"]
    assert event["source"] == "/tollgate/infer/regional/test-1"
    data = event.data
    assert isinstance(data, dict)
    assert {k: data[k] for k in ("hold_id", "account_id", "model", "tier", "cluster")} == {
        "hold_id": "hold-7",
        "account_id": "acct-7",
        "model": "scripted",
        "tier": "regional",
        "cluster": "test-1",
    }
    assert (
        data["usage"]
        == reply["usage"]
        == {
            "prompt_tokens": 2,
            "completion_tokens": 6,
            "total_tokens": 8,
        }
    )
    timings = data["timings"]
    assert set(timings) == {"ttft_ms", "total_ms", "engine_ms"}
    assert 0 < timings["ttft_ms"] <= timings["total_ms"]
    assert 60 <= timings["engine_ms"] <= timings["total_ms"]
    assert data["stand_in"] is False  # infer's own metering, never the ingress's stand-in
    numbers = {k: v for k, v in data.items() if k != "stand_in"}
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in _ints(numbers))
    InferenceCompleted.model_validate(data)  # the catalogue's model, as settle reads it


def test_streamed_request_is_metered_like_its_usage_chunk(
    serve: type[Server], config: InferConfig, sink: Sink
) -> None:
    server = serve(create_app(config, engine=ScriptedEngine(WORDS)))
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
    chunks = list(
        api.chat.completions.create(
            model="scripted",
            messages=TWO,
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=HOLD,
        )
    )
    usage = chunks[-1].usage
    assert usage is not None
    [event] = sink.wait_for(1)
    assert event["type"] == INFERENCE_COMPLETED
    assert event.data["usage"] == usage.model_dump(exclude_none=True)
    assert event.data["usage"]["completion_tokens"] == 7


def test_the_event_carries_the_attempts_capability(
    serve: type[Server], config: InferConfig, sink: Sink
) -> None:
    server = serve(create_app(config, engine=ScriptedEngine(WORDS[:2])))
    assert requests.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=HOLD, timeout=10)
    [event] = sink.wait_for(1)
    capability = verify(event.data["capability"], TEST_KEYS.verify.get(), audience="test-1")
    assert (capability.hold_id, capability.account_id) == ("hold-7", "acct-7")


def test_client_disconnect_stops_generation_and_meters_produced_tokens(
    serve: type[Server], config: InferConfig, sink: Sink
) -> None:
    engine = ScriptedEngine(WORDS, token_seconds=0.05)
    server = serve(create_app(config, engine=engine))
    port = int(server.url.rsplit(":", 1)[1])
    body = b'{"model": "scripted", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
    head = "".join(f"{k}: {v}\r\n" for k, v in HOLD.items())
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/json\r\n"
            + head.encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b'"content":"') < 4:  # the role chunk and three words
            received += conn.recv(4096)
    # The client is gone: generation must stop long before the 40 words (2 s) are produced.
    assert engine.closed.wait(5)
    [event] = sink.wait_for(1)
    produced = engine.generations[-1].completion_tokens
    assert 3 <= produced < len(WORDS)
    assert event["type"] == INFERENCE_COMPLETED
    assert event.data["usage"]["completion_tokens"] == produced
    assert event.data["usage"]["prompt_tokens"] == 1


def test_engine_failure_mid_stream_ends_with_an_error_event_and_meters_what_was_produced(
    serve: type[Server], config: InferConfig, sink: Sink
) -> None:
    server = serve(create_app(config, engine=FaultyEngine(ScriptedEngine(WORDS), fail_after=3)))
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
    pieces: list[str] = []
    with pytest.raises(openai.APIError, match="injected fault"):
        for chunk in api.chat.completions.create(
            model="scripted",
            messages=TWO,
            stream=True,
            extra_headers=HOLD,
        ):
            pieces.extend(c.delta.content for c in chunk.choices if c.delta.content)
    assert pieces == ["w0", " w1", " w2"]
    [event] = sink.wait_for(1)
    assert event["type"] == INFERENCE_FAILED
    assert event.data["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert event.data["error"]["type"] == "engine_error"
    InferenceFailed.model_validate(event.data)
    assert "injected fault" in event.data["error"]["message"]
    # The engine serves the next request.
    assert (
        requests.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=10).status_code == 500
    )


def test_engine_failure_without_stream_is_500_and_metered(
    serve: type[Server], config: InferConfig, sink: Sink
) -> None:
    inner = ScriptedEngine(WORDS)
    server = serve(create_app(config, engine=FaultyEngine(inner, fail_after=2)))
    reply = requests.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=HOLD, timeout=10)
    assert reply.status_code == 500
    assert reply.json()["error"]["code"] == "engine_failed"
    [event] = sink.wait_for(1)
    assert event["type"] == INFERENCE_FAILED
    assert event.data["usage"]["completion_tokens"] == 2


def test_the_event_is_owed_on_disk_before_the_stream_ends(
    serve: type[Server], config: InferConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The broker is unreachable: the client still gets its whole stream, and by the time it
    reads the end, the event waits in the outbox for a successor if this process dies now."""
    monkeypatch.setenv("K_SINK", "http://127.0.0.1:9/")
    monkeypatch.setenv("TOLLGATE_OUTBOX_DIR", str(tmp_path / "owed"))
    server = serve(create_app(config, engine=ScriptedEngine(WORDS[:4])))
    body = {**CHAT, "stream": True}
    reply = requests.post(f"{server.url}/v1/chat/completions", json=body, headers=HOLD, timeout=10)
    assert reply.text.rstrip().endswith("data: [DONE]")
    with sqlite3.connect(tmp_path / "owed" / "outbox.db") as db:
        rows = db.execute("SELECT type, state, data FROM outbox").fetchall()
    assert [(t, s) for t, s, _ in rows] == [(INFERENCE_COMPLETED, "pending")]
    assert json.loads(rows[0][2])["usage"]["completion_tokens"] == 4


def test_continuous_usage_rides_on_every_chunk_when_asked(
    serve: type[Server], config: InferConfig, sink: Sink
) -> None:
    server = serve(create_app(config, engine=ScriptedEngine(WORDS[:3])))
    body = {
        **CHAT,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    reply = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=10)
    chunks = [
        json.loads(line[len("data: ") :])
        for line in reply.text.splitlines()
        if line.startswith("data: {")
    ]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3, 3, 3]
    assert all(c["usage"]["prompt_tokens"] == 2 for c in chunks)
    plain = requests.post(
        f"{server.url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10
    )
    assert '"usage"' not in plain.text


def test_a_full_outbox_refuses_billed_work_and_is_not_ready(
    serve: type[Server], config: InferConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("K_SINK", "http://127.0.0.1:9/")  # nothing gets delivered
    monkeypatch.setenv("TOLLGATE_OUTBOX_DIR", str(tmp_path / "small"))
    monkeypatch.setenv("TOLLGATE_OUTBOX_MAX_PENDING", "2")
    engine = ScriptedEngine(WORDS[:2])
    server = serve(create_app(config, engine=engine))
    url = f"{server.url}/v1/chat/completions"
    for _ in range(2):
        assert requests.post(url, json=CHAT, headers=HOLD, timeout=10).status_code == 200
    refused = requests.post(url, json=CHAT, headers=HOLD, timeout=10)
    assert refused.status_code == 503
    assert "outbox is full" in refused.json()["error"]["message"]
    assert len(engine.generations) == 2  # the engine never ran it
    assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 503
    # Every attempt is billed (its capability names a hold): none is served until it drains.
    assert requests.post(url, json=CHAT, timeout=10).status_code == 503
