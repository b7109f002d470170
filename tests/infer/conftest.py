"""Fixtures of the inference tests: a real HTTP server per app, a real CloudEvents sink, and the
real model loaded once per session."""

from __future__ import annotations

import io
import json
import socket
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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

from events import wire
from events.ledger import InferenceUsage
from events.openai import PATHS
from events.types import INFERENCE_COMPLETED, INFERENCE_USAGE
from functions.auth.oidc import Discovery, TokenVerifier
from functions.auth.policy import SenderPolicy
from functions.auth.senders import Senders
from functions.auth.tokens import SINK, TOKEN_DIR_ENV
from infer_fn.app import create_app as real_create_app
from infer_fn.config import InferConfig
from infer_fn.engines.base import Engine
from infer_fn.engines.llamacpp import LlamaCppEngine
from infer_fn.metering import EventSink
from infer_fn.model_file import default_model_path
from tests.trust import capability_keys

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
    """A CloudEvents sink (as K_SINK) recording what it receives, parsed by the SDK. A batch of
    usage reports is validated against its contract and recorded as the single
    ``inference.completed`` events it carries (as settle takes them); ``batches`` keeps it."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self.batches: list[CloudEvent] = []
        self._arrived = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                event = from_http(dict(self.headers.items()), body)
                with sink._arrived:
                    if event["type"] == INFERENCE_USAGE:
                        sink.batches.append(event)
                        sink.events.extend(reported(event))
                    else:
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


def reported(batch: CloudEvent) -> list[CloudEvent]:
    """The ``inference.completed`` events an ``inference.usage`` batch carries."""
    usage = InferenceUsage.model_validate(batch.data)
    return [
        CloudEvent(
            {"type": INFERENCE_COMPLETED, "source": batch["source"], "id": report.id},
            report.data.model_dump(mode="json"),
        )
        for report in usage.reports
    ]


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Sink]:
    """The sink as K_SINK, and this workload's token for it (what the sink checks is the
    broker's business: tests/up)."""
    sink = Sink()
    monkeypatch.setenv("K_SINK", sink.url)
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / SINK).write_text("infer-token-for-the-sink", encoding="utf-8")
    monkeypatch.setenv(TOKEN_DIR_ENV, str(tokens))
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


# -- the ingress's half, for tests of infer on its own ------------------------------------------

TEST_KEYS = capability_keys(Path(tempfile.mkdtemp(prefix="infer-test-keys-")))
# A test names the hold a request is billed to with these (the ingress's side of the contract
# lives in the capability; tests of infer alone say which hold they want it minted for).
HOLD_ID, ACCOUNT_ID, TIER, CLUSTER = (
    "HTTP_X_TOLLGATE_HOLD_ID",
    "HTTP_X_TOLLGATE_ACCOUNT_ID",
    "HTTP_X_TOLLGATE_TIER",
    "HTTP_X_TOLLGATE_CLUSTER",
)
_VOUCHED_PATHS = {PATHS["chat"], PATHS["completions"]}
_UNASKED_BOUND = 4096


class IngressHalf:
    """Stands in for the ingress in front of infer: every inference request without a
    capability gets one minted for it (real keys, checked for real by infer), for the model and
    ``max_tokens`` it asks and the hold its test names. Tests of the capability check itself use
    ``infer_fn.app.create_app`` directly."""

    def __init__(self, app: Any, cluster: str, tier: str) -> None:
        self.app = app
        self.cluster = cluster
        self.tier = tier

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") in _VOUCHED_PATHS and CAPABILITY_ENV not in environ:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(raw)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):  # infer refuses such a body itself
                body = {}
            body = body if isinstance(body, dict) else {}
            asked = body.get("max_tokens") or body.get("max_completion_tokens")
            bound = asked if isinstance(asked, int) and asked > 0 else _UNASKED_BOUND
            environ[CAPABILITY_ENV] = TEST_KEYS.capability(
                environ.get(HOLD_ID, "acct-test:1"),
                environ.get(ACCOUNT_ID, "acct-test"),
                model=str(body.get("model") or "unnamed"),
                cluster=environ.get(CLUSTER, self.cluster),
                tier=environ.get(TIER, self.tier),
                max_tokens=max(bound, 1),
            )
        return self.app(environ, start_response)


CAPABILITY_ENV = "HTTP_" + wire.CAPABILITY.upper().replace("-", "_")
NOBODY = Senders(TokenVerifier(Discovery("http://127.0.0.1:9"), "infer"), SenderPolicy("infer"))


def create_app(
    config: InferConfig | None = None,
    *,
    engine: Engine | None = None,
    emitter: EventSink | None = None,
) -> flask.Flask:
    """infer_fn.app.create_app behind the ingress's half (infer takes no events: its POST / is
    not exercised here)."""
    app = real_create_app(
        config, senders=NOBODY, capability_keys=TEST_KEYS.verify, engine=engine, emitter=emitter
    )
    own = config if config is not None else InferConfig.from_env()
    app.wsgi_app = IngressHalf(app.wsgi_app, own.cluster, own.tier)  # type: ignore[method-assign]
    return app
