"""The inference function: the OpenAI surface over one engine, on the shared function runtime."""

from __future__ import annotations

import flask

from events.types import INFERENCE_COMPLETED
from functions.app import create_app as create_function_app
from functions.auth.keys import VerifyKeys
from functions.auth.senders import Senders
from functions.emit import Emitter
from functions.outbox import SINK, Outbox, OutboxSettings, batched_sink_route
from functions.server import THREADS_CONFIG
from infer_fn.admission import Admission
from infer_fn.api import build_blueprint, count_refusal
from infer_fn.capability import AttemptGuard
from infer_fn.config import EngineKind, InferConfig
from infer_fn.engines import build_engine
from infer_fn.engines.base import Engine
from infer_fn.lifecycle import EngineHost
from infer_fn.metering import METERING_LINGER_S, USAGE_BATCHING, EventSink
from infer_fn.metrics import bind_load_gauges
from infer_fn.warmup import warmup_blueprint

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
    """`engine` and `emitter` default to what the config and `K_SINK` say (metering events owed
    through the durable outbox, `TOLLGATE_OUTBOX_*`); tests inject theirs.
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

    sink = emitter or metering_sink()
    outbox = sink if isinstance(sink, Outbox) else None

    def owing_full() -> bool:
        return outbox is not None and outbox.full

    def ready() -> None:
        # Ready means able to serve, not loaded: a scale-to-zero function loads on demand.
        if config.engine is EngineKind.LLAMACPP and not config.resolved_model_path().is_file():
            raise RuntimeError(f"model file {config.resolved_model_path()} is missing")
        if owing_full():
            raise RuntimeError("the metering outbox is full: its events are not being delivered")

    guard = AttemptGuard(capability_keys, config.capability_audiences)
    app = create_function_app(
        NAME,
        senders=senders,
        blueprints=[
            build_blueprint(host, sink, config, guard, owing_full),
            warmup_blueprint(host, config.model_name),
        ],
        ready=ready,
        max_body_bytes=config.max_body_bytes,
        on_error=count_refusal,
    )
    app.extensions[EXTENSION] = host
    app.config[THREADS_CONFIG] = config.server_threads
    return app


def metering_sink() -> EventSink:
    """Where metering events go: owed through the durable outbox to K_SINK, `inference.completed`
    in batches of what is due; with no K_SINK nobody takes them, so they are not emitted (a lone
    function run by hand)."""
    emitter = Emitter.from_env()
    if emitter.sink is None:
        return emitter
    route = batched_sink_route(emitter, {INFERENCE_COMPLETED: USAGE_BATCHING})
    settings = OutboxSettings.from_env(NAME, linger_s=METERING_LINGER_S)
    return settings.open(NAME, {SINK: route})


def engine_host(app: flask.Flask) -> EngineHost:
    host = app.extensions[EXTENSION]
    assert isinstance(host, EngineHost)
    return host
