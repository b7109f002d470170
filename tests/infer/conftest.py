"""Fixtures of the inference tests: a real HTTP server per app, a real CloudEvents sink, and the
real model loaded once per session."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import flask
import llama_cpp
import pytest
from cloudevents.v1.http import CloudEvent, from_http
from llama_cpp.llama_types import (
    ChatCompletionRequestMessage,
    CreateChatCompletionResponse,
    CreateCompletionResponse,
)
from openai.types.chat import ChatCompletionMessageParam
from waitress.server import create_server

from infer_fn.config import InferConfig
from infer_fn.engines.llamacpp import LlamaCppEngine
from infer_fn.model_file import default_model_path

MODEL = "SmolLM2-135M-Instruct"
# A question SmolLM2-135M answers right at temperature 0 (the bare question makes it ramble).
FRANCE = "What is the capital of France? Answer in one word."
FRANCE_MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": FRANCE}]
# The same, typed for llama-cpp-python's own API (the reference count).
FRANCE_FOR_LLAMA: list[ChatCompletionRequestMessage] = [{"role": "user", "content": FRANCE}]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """A flask app on waitress (the production WSGI server) on a free port of 127.0.0.1."""

    def __init__(self, app: flask.Flask, threads: int = 8) -> None:
        self._server = create_server(app, host="127.0.0.1", port=0, threads=threads)
        self.url = f"http://127.0.0.1:{self._server.effective_port}"
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        server = self._server
        # Workers first, so none touches a channel after it is closed.
        server.task_dispatcher.shutdown()

        def stop() -> None:
            for dispatcher in list(server._map.values()):
                dispatcher.close()

        # Close every socket from inside waitress's own loop (closing them from this thread
        # races its select); the loop ends once its map is empty.
        try:
            server.trigger.pull_trigger(stop)
        except OSError:  # the loop is already gone with its trigger: nothing left to wake
            return
        self._thread.join(timeout=5)


class Sink:
    """A CloudEvents sink (as K_SINK) recording what it receives, parsed by the SDK."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self._arrived = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                event = from_http(dict(self.headers.items()), body)
                with sink._arrived:
                    sink.events.append(event)
                    sink._arrived.notify_all()
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[CloudEvent]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.events) >= count, timeout):
                raise AssertionError(f"{len(self.events)} events arrived, expected {count}")
            return list(self.events)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sink]:
    sink = Sink()
    monkeypatch.setenv("K_SINK", sink.url)
    yield sink
    sink.close()


@pytest.fixture
def serve() -> Iterator[type[Server]]:
    servers: list[Server] = []

    class Tracked(Server):
        def __init__(self, app: flask.Flask, threads: int = 8) -> None:
            super().__init__(app, threads)
            servers.append(self)

    yield Tracked
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture
def config() -> InferConfig:
    """No idle reaper unless a test asks for one: the session's model must stay loaded."""
    return InferConfig(model_name="scripted", idle_seconds=0, tier="edge", cluster="test-1")


@pytest.fixture(scope="session")
def llama_engine(model_path: Path) -> Iterator[LlamaCppEngine]:
    """The real model, loaded once for the session's model tests."""
    engine = LlamaCppEngine(model_path, MODEL, n_ctx=2048, threads=None, sequences=4)
    engine.load()
    yield engine
    engine.unload()


@pytest.fixture(scope="session")
def reference(model_path: Path) -> Iterator[llama_cpp.Llama]:
    """llama-cpp-python's own high-level API on the same file: the count usage must equal."""
    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=2048, verbose=False)
    yield llm
    llm.close()


@pytest.fixture
def model_config() -> InferConfig:
    return InferConfig(model_name=MODEL, idle_seconds=0, tier="edge", cluster="test-1")


def own_chat(llm: llama_cpp.Llama, max_tokens: int) -> CreateChatCompletionResponse:
    """llama-cpp-python's own answer and count for the France question at temperature 0."""
    reply = llm.create_chat_completion(
        messages=FRANCE_FOR_LLAMA, temperature=0, max_tokens=max_tokens
    )
    assert isinstance(reply, dict)
    return reply


def own_completion(llm: llama_cpp.Llama, prompt: str, max_tokens: int) -> CreateCompletionResponse:
    reply = llm.create_completion(prompt, temperature=0, max_tokens=max_tokens)
    assert isinstance(reply, dict)
    return reply
