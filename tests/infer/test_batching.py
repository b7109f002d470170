"""The llama.cpp engine serving concurrent requests as one batch of sequences, on the real model.

Every answer is compared with llama-cpp-python's own API on the same file, request by request:
batching must not change a token (greedy or seeded), nor a count. Nothing here asserts a timing:
waits are for states (a sequence running, an event delivered), bounded only to fail rather than
hang."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import llama_cpp
import openai
import pytest
import requests
from openai.types.chat import ChatCompletionMessageParam

from events.types import INFERENCE_COMPLETED, INFERENCE_FAILED
from infer_fn.config import InferConfig
from infer_fn.engines.base import EngineError, SamplingParams
from infer_fn.engines.llamacpp import LlamaCppEngine
from tests.infer.conftest import FRANCE_FOR_LLAMA, FRANCE_MESSAGES, MODEL, Server, Sink, create_app

pytestmark = pytest.mark.model

# Completion prompts SmolLM2 continues for at least 400 tokens at temperature 0 (checked against
# llama-cpp-python's own API): their streams stay open for as long as a test needs them.
ENDLESS = (
    "Once upon a time, in a small village,",
    "The history of the Roman Empire",
    "Chapter 1. The storm",
    "Dear diary, today",
)
# Longer than one step's prompt budget (64 tokens), so it is read in chunks beside the others.
LONG_QUESTION = "Here is a list of fruits: " + ", ".join(["apple", "pear", "plum"] * 12) + "."
LONG_MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": LONG_QUESTION + " Which fruit comes first?"}
]


def _hold(name: str) -> dict[str, str]:
    return {"x-tollgate-hold-id": f"hold-{name}", "x-tollgate-account-id": "acct-batch"}


def _fresh(reference: llama_cpp.Llama) -> llama_cpp.Llama:
    # The reference reuses the cached prefix of its previous prompt and then evaluates only the
    # rest, which can change its logits; every reference answer starts from an empty cache.
    reset = cast(Callable[[], None], reference.reset)  # unannotated in llama-cpp-python
    reset()
    return reference


def _own_chat(
    reference: llama_cpp.Llama, messages: list[Any], max_tokens: int, **sampling: Any
) -> dict[str, Any]:
    reply = _fresh(reference).create_chat_completion(
        messages=messages, max_tokens=max_tokens, **{"temperature": 0, **sampling}
    )
    assert isinstance(reply, dict)
    return dict(reply)


def _own_completion(
    reference: llama_cpp.Llama, prompt: str, max_tokens: int, **sampling: Any
) -> dict[str, Any]:
    reply = _fresh(reference).create_completion(
        prompt, max_tokens=max_tokens, **{"temperature": 0, **sampling}
    )
    assert isinstance(reply, dict)
    return dict(reply)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


@pytest.fixture
def batching(
    serve: type[Server], model_config: InferConfig, llama_engine: LlamaCppEngine, sink: Sink
) -> Iterator[tuple[Server, openai.OpenAI]]:
    assert model_config.concurrency == llama_engine.sequences == 4
    server = serve(create_app(model_config, engine=llama_engine))
    yield server, openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)


def test_concurrent_requests_each_get_their_own_exact_answer_and_usage(
    batching: tuple[Server, openai.OpenAI], reference: llama_cpp.Llama, sink: Sink
) -> None:
    _, api = batching
    start = threading.Barrier(4)

    def streamed_chat() -> tuple[str, dict[str, int]]:
        start.wait()
        chunks = list(
            api.chat.completions.create(
                model=MODEL,
                messages=FRANCE_MESSAGES,
                temperature=0,
                max_tokens=32,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=_hold("stream"),
            )
        )
        usage = chunks[-1].usage
        assert usage is not None
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, usage.model_dump(exclude_none=True)

    def whole_chat() -> tuple[str, dict[str, int]]:
        start.wait()
        reply = api.chat.completions.create(
            model=MODEL,
            messages=LONG_MESSAGES,
            temperature=0,
            max_tokens=24,
            extra_headers=_hold("whole"),
        )
        assert reply.usage is not None
        return reply.choices[0].message.content or "", reply.usage.model_dump(exclude_none=True)

    def completion(prompt: str, name: str) -> Callable[[], tuple[str, dict[str, int]]]:
        def run() -> tuple[str, dict[str, int]]:
            start.wait()
            reply = api.completions.create(
                model=MODEL, prompt=prompt, temperature=0, max_tokens=40, extra_headers=_hold(name)
            )
            assert reply.usage is not None
            return reply.choices[0].text, reply.usage.model_dump(exclude_none=True)

        return run

    jobs = {
        "stream": streamed_chat,
        "whole": whole_chat,
        "village": completion(ENDLESS[0], "village"),
        "rome": completion(ENDLESS[1], "rome"),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        got = {name: future.result(timeout=300) for name, future in futures.items()}

    own = {
        "stream": _own_chat(reference, FRANCE_FOR_LLAMA, 32),
        "whole": _own_chat(reference, LONG_MESSAGES, 24),
        "village": _own_completion(reference, ENDLESS[0], 40),
        "rome": _own_completion(reference, ENDLESS[1], 40),
    }
    for name, (text, usage) in got.items():
        choice = own[name]["choices"][0]
        assert text == (choice["message"]["content"] if "message" in choice else choice["text"])
        assert usage == own[name]["usage"], name
    assert "Paris" in got["stream"][0]
    # Each request is metered on its own, exactly as answered.
    events = {e.data["hold_id"]: e for e in sink.wait_for(4)}
    assert {e["type"] for e in events.values()} == {INFERENCE_COMPLETED}
    for name, (_, usage) in got.items():
        assert events[f"hold-{name}"].data["usage"] == usage


def test_open_streams_run_together_and_a_disconnect_frees_its_sequence(
    batching: tuple[Server, openai.OpenAI],
    llama_engine: LlamaCppEngine,
    reference: llama_cpp.Llama,
    sink: Sink,
) -> None:
    server, api = batching
    streams: list[requests.Response] = []
    lines: list[Iterator[bytes]] = []
    try:
        for i, prompt in enumerate(ENDLESS):
            body = {
                "model": MODEL,
                "prompt": prompt,
                "max_tokens": 400,
                "temperature": 0,
                "stream": True,
            }
            reply = requests.post(
                f"{server.url}/v1/completions",
                json=body,
                headers=_hold(f"open-{i}"),
                stream=True,
                timeout=120,
            )
            streams.append(reply)
            lines.append(reply.iter_lines(chunk_size=None))
        # Each stream has produced text: all four sequences are in the loop at once.
        for stream_lines in lines:
            while b'"text":"' not in next(stream_lines):
                pass
        assert llama_engine.load_signals().running == 4

        streams[0].close()
        [event] = sink.wait_for(1)
        assert event["type"] == INFERENCE_COMPLETED
        assert event.data["hold_id"] == "hold-open-0"
        assert 1 <= event.data["usage"]["completion_tokens"] < 400
        _wait_for(lambda: llama_engine.load_signals().running == 3, "the sequence was freed")

        # The freed sequence serves a new request while the three others are still open.
        answer = api.chat.completions.create(
            model=MODEL, messages=FRANCE_MESSAGES, temperature=0, max_tokens=32
        )
        own = _own_chat(reference, FRANCE_FOR_LLAMA, 32)
        assert answer.choices[0].message.content == own["choices"][0]["message"]["content"]
        assert llama_engine.load_signals().running == 3
    finally:
        for stream in streams:
            stream.close()
    events = sink.wait_for(5)  # the four streams and the request served beside them
    opened = sorted(e.data["hold_id"] for e in events if e.data["hold_id"].startswith("hold-"))
    assert opened == [f"hold-open-{i}" for i in range(4)]
    _wait_for(lambda: llama_engine.load_signals().running == 0, "every sequence was freed")
    assert llama_engine.load_signals().kv_cache_usage == 0


def test_stop_sequences_limits_and_seeds_hold_per_sequence(
    llama_engine: LlamaCppEngine, reference: llama_cpp.Llama
) -> None:
    requests_ = {
        "stop": (
            "The capital of France is",
            SamplingParams(max_tokens=16, temperature=0, stop=(".",)),
        ),
        "limit": (ENDLESS[2], SamplingParams(max_tokens=5, temperature=0)),
        "seed-1": (
            "The capital of France is",
            SamplingParams(max_tokens=12, seed=1, temperature=0.9),
        ),
        "seed-2": (
            "The capital of France is",
            SamplingParams(max_tokens=12, seed=2, temperature=0.9),
        ),
    }
    start = threading.Barrier(len(requests_))

    def run(prompt: str, params: SamplingParams) -> tuple[str, str | None, int]:
        start.wait()
        gen = llama_engine.complete(prompt, params)
        text = "".join(gen)
        return text, gen.finish_reason, gen.completion_tokens

    with ThreadPoolExecutor(len(requests_)) as pool:
        futures = {name: pool.submit(run, *job) for name, job in requests_.items()}
        got = {name: future.result(timeout=300) for name, future in futures.items()}

    assert got["stop"][:2] == (" Paris", "stop")
    assert got["limit"][1:] == ("length", 5)
    for seed in (1, 2):
        own = _own_completion(
            reference,
            "The capital of France is",
            12,
            seed=seed,
            top_k=40,
            min_p=0.05,
            repeat_penalty=1.0,
            temperature=0.9,
            top_p=1.0,
        )
        text, reason, tokens = got[f"seed-{seed}"]
        assert (text, reason, tokens) == (
            own["choices"][0]["text"],
            own["choices"][0]["finish_reason"],
            own["usage"]["completion_tokens"],
        )
    assert got["seed-1"][0] != got["seed-2"][0]


def test_a_request_cancelled_while_waiting_never_runs(model_config: InferConfig) -> None:
    engine = LlamaCppEngine(
        model_config.resolved_model_path(), MODEL, n_ctx=512, threads=None, sequences=1
    )
    engine.load()
    try:
        running = engine.complete(ENDLESS[3], SamplingParams(max_tokens=200, temperature=0))
        pieces = iter(running)
        next(pieces)
        queued = engine.complete(ENDLESS[0], SamplingParams(max_tokens=200, temperature=0))
        assert engine.load_signals().waiting == 1
        queued.close()
        _wait_for(lambda: engine.load_signals().waiting == 0, "the queued request was dropped")
        assert queued.completion_tokens == 0
        assert list(queued) == []
        rest = "".join(pieces)
        assert running.finish_reason == "length" and running.completion_tokens == 200
        assert rest
    finally:
        engine.unload()


def test_a_failing_decode_fails_every_sequence_in_flight_and_the_engine_goes_on(
    serve: type[Server],
    model_config: InferConfig,
    reference: llama_cpp.Llama,
    sink: Sink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = LlamaCppEngine(
        model_config.resolved_model_path(), MODEL, n_ctx=1024, threads=None, sequences=4
    )
    server = serve(create_app(model_config, engine=engine))
    decode = llama_cpp.llama_decode
    armed = threading.Event()

    def failing_once(ctx: Any, batch: Any) -> int:
        if armed.is_set():
            armed.clear()
            return -1  # what llama.cpp answers for a batch it cannot take
        return int(decode(ctx, batch))

    monkeypatch.setattr(llama_cpp, "llama_decode", failing_once)
    streams = []
    for i in range(3):
        body = {
            "model": MODEL,
            "prompt": ENDLESS[i],
            "max_tokens": 400,
            "temperature": 0,
            "stream": True,
        }
        streams.append(
            requests.post(
                f"{server.url}/v1/completions",
                json=body,
                headers=_hold(f"fail-{i}"),
                stream=True,
                timeout=120,
            )
        )
    try:
        lines = [stream.iter_lines(chunk_size=None) for stream in streams]
        for stream_lines in lines:
            while b'"text":"' not in next(stream_lines):
                pass
        armed.set()
        for stream_lines in lines:
            tail = b"\n".join(stream_lines)
            assert b'"code":"engine_failed"' in tail
            assert b"[DONE]" not in tail
    finally:
        for stream in streams:
            stream.close()
    events = sink.wait_for(3)
    assert {e["type"] for e in events} == {INFERENCE_FAILED}
    for event in events:
        assert event.data["usage"]["completion_tokens"] >= 1
        assert "llama_decode failed" in event.data["error"]["message"]
    # The loop made a fresh context: the same engine answers the next requests exactly.
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
    reply = api.chat.completions.create(
        model=MODEL, messages=FRANCE_MESSAGES, temperature=0, max_tokens=32
    )
    own = _own_chat(reference, FRANCE_FOR_LLAMA, 32)
    assert reply.choices[0].message.content == own["choices"][0]["message"]["content"]
    assert reply.usage is not None and reply.usage.model_dump(exclude_none=True) == own["usage"]
    engine.unload()


def test_a_broken_engine_is_unavailable_then_loaded_again(
    model_config: InferConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed step whose context cannot be remade leaves the engine unloaded, not wedged."""
    engine = LlamaCppEngine(
        model_config.resolved_model_path(), MODEL, n_ctx=256, threads=None, sequences=2
    )
    engine.load()
    monkeypatch.setattr(llama_cpp, "llama_decode", lambda ctx, batch: -1)
    monkeypatch.setattr(llama_cpp, "llama_init_from_model", lambda model, params: None)
    gen = engine.complete(ENDLESS[0], SamplingParams(max_tokens=8, temperature=0))
    with pytest.raises(EngineError):
        list(gen)
    _wait_for(lambda: not engine.loaded, "the engine reads as unloaded")
    with pytest.raises(EngineError):
        engine.complete(ENDLESS[0], SamplingParams(max_tokens=8, temperature=0))
    monkeypatch.undo()
    engine.load()
    gen = engine.complete("The capital of France is", SamplingParams(max_tokens=3, temperature=0))
    assert "Paris" in "".join(gen)
    engine.unload()
