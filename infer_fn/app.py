"""The inference function: the OpenAI surface over one engine, on the shared function runtime."""

from __future__ import annotations

import flask

from functions.app import create_app as create_function_app
from functions.auth.keys import VerifyKeys
from functions.auth.senders import Senders
from functions.emit import Emitter
from functions.server import THREADS_CONFIG
from infer_fn.admission import Admission
from infer_fn.api import build_blueprint, count_refusal
from infer_fn.capability import AttemptGuard
from infer_fn.config import EngineKind, InferConfig
from infer_fn.engines import build_engine
from infer_fn.engines.base import Engine
from infer_fn.lifecycle import EngineHost
from infer_fn.metering import EventSink
from infer_fn.metrics import bind_load_gauges

NAME = "infer"
# Where tests, the bench and the CLI find the engine host of an app.
EXTENSION = "tollgate_infer"


def create_app(
    config: InferConfig | None = None,
    *,
    senders: Senders,
    capability_keys: VerifyKeys,
    engine: Engine | None = None,
    emitter: EventSink | None = None,
) -> flask.Flask:
    """`engine` and `emitter` default to what the config and `K_SINK` say; tests inject theirs.
    ``capability_keys``: the public keys of the ingress's capabilities (infer serves nothing
    without one); ``senders``: who may POST events (nobody: infer takes none)."""
    config = config or InferConfig.from_env()
    engine = engine or build_engine(config)
    admission = Admission(config.concurrency, config.queue_size, config.queue_timeout_seconds)
    host = EngineHost(engine, admission, idle_seconds=config.idle_seconds)
    # One inference function per process (one per pod): the load gauges describe this app.
    bind_load_gauges(
        queued=lambda: admission.waiting,
        running=lambda: admission.running,
        loaded=lambda: engine.loaded,
        signals=engine.load_signals,
    )

    def ready() -> None:
        # Ready means able to serve, not loaded: a scale-to-zero function loads on demand.
        if config.engine is EngineKind.LLAMACPP and not config.resolved_model_path().is_file():
            raise RuntimeError(f"model file {config.resolved_model_path()} is missing")

    guard = AttemptGuard(capability_keys, config.capability_audiences)
    app = create_function_app(
        NAME,
        senders=senders,
        blueprints=[build_blueprint(host, emitter or Emitter.from_env(), config, guard)],
        ready=ready,
        max_body_bytes=config.max_body_bytes,
        on_error=count_refusal,
    )
    app.extensions[EXTENSION] = host
    app.config[THREADS_CONFIG] = config.server_threads
    return app


def engine_host(app: flask.Flask) -> EngineHost:
    host = app.extensions[EXTENSION]
    assert isinstance(host, EngineHost)
    return host
