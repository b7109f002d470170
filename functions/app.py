"""The Flask app factory every function runs on: CloudEvents on POST /, health, readiness, metrics.

A handler takes the received event and returns a Reply (sent back as a binary-mode CloudEvent
with HTTP 200, which a Knative Trigger forwards to the Broker) or None (HTTP 204).

``POST /`` first checks who sent it, as Knative Eventing's receivers do: no valid bearer token
for this function's audience is 401, a sender the function's event policies do not allow to send
this event is 403; either way before the event is parsed further or anything is done."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from functions.auth.senders import Senders
from functions.cloudevent import Incoming, Reply, make_event, parse_http, to_binary
from functions.errors import INVALID_REQUEST, FunctionError, NotFound, Unavailable
from functions.jsonbody import CheckedJSON
from functions.metrics import EVENT_SECONDS, EVENTS, event_type_label
from functions.store import StoreUnavailable

log = logging.getLogger(__name__)

Handler = Callable[[Incoming], Reply | None]
ErrorHook = Callable[[FunctionError], None]
MAX_EVENT_BYTES = 1 << 20
# Knative's PingSource cannot set the event type: scheduled commands arrive as pings that name
# their Tollgate type in this extension (see template.yaml's eventing.sources).
PING_TYPE = "dev.knative.sources.ping"
PING_TYPE_EXTENSION = "tollgatetype"


def create_app(
    name: str,
    *,
    senders: Senders,
    handlers: Mapping[str, Handler] | None = None,
    blueprints: Sequence[Any] = (),
    ready: Callable[[], None] | None = None,
    fallback: Handler | None = None,
    max_body_bytes: int = MAX_EVENT_BYTES,
    on_error: ErrorHook | None = None,
) -> Flask:
    """A function's HTTP app. ``senders`` checks who sends events to ``POST /``; ``ready``
    raises when the function cannot serve (e.g. store down);
    ``fallback`` takes every event type no handler names (a dead-letter sink does); ``on_error``
    sees every error the app answers."""
    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.json = CheckedJSON(app)  # request bodies: too deep or lone surrogates are a 400
    app.json.sort_keys = False
    routes = dict(handlers or {})
    source = f"/tollgate/{name}"

    for blueprint in blueprints:
        app.register_blueprint(blueprint)

    @app.post("/")
    def receive() -> Response | tuple[Response, int]:
        headers = dict(request.headers)
        sender = senders.authenticate(headers)
        incoming = parse_http(headers, request.get_data())
        senders.authorize(sender, incoming.attributes())
        scheduled = incoming.extensions.get(PING_TYPE_EXTENSION)
        if incoming.type == PING_TYPE and isinstance(scheduled, str):
            incoming = replace(incoming, type=scheduled)
        handler = routes.get(incoming.type, fallback)
        if handler is None:
            raise NotFound(
                f"function {name} does not handle {incoming.type}; it handles: "
                + (", ".join(sorted(routes)) or "no events"),
            )
        started = time.perf_counter()
        status = "5xx"
        try:
            reply = handler(incoming)
            status = "2xx"
        except FunctionError as exc:
            status = f"{exc.status // 100}xx"
            raise
        finally:
            label = event_type_label(incoming.type, routes)
            EVENTS.labels(name, label, status).inc()
            EVENT_SECONDS.labels(name, label).observe(time.perf_counter() - started)
        if reply is None:
            return Response(status=204)
        message = to_binary(
            make_event(
                reply.type, source, reply.data, subject=reply.subject, caused_by=incoming.key
            )
        )
        return Response(message.body, status=200, headers=message.headers)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok", function=name)

    @app.get("/readyz")
    def readyz() -> Response | tuple[Response, int]:
        if ready is not None:
            try:
                ready()
            except Exception as exc:  # any failure means "do not send traffic here"
                return jsonify(status="unavailable", function=name, reason=str(exc)), 503
        return jsonify(status="ready", function=name)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)

    register_error_handlers(app, on_error)
    return app


def register_error_handlers(app: Flask, on_error: ErrorHook | None = None) -> None:
    """Every error answers in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
    with its status, so the official client raises its matching exception. A failure nobody
    raised on purpose is a 500 whose message names an error id; what failed stays in the log
    under that id. ``on_error`` sees every error answered (a function's own metrics)."""

    def answer(error: FunctionError) -> tuple[Response, int, dict[str, str]]:
        if on_error is not None:
            on_error(error)
        return jsonify(error.body()), error.status, error.headers

    @app.errorhandler(FunctionError)
    def function_error(exc: FunctionError) -> tuple[Response, int, dict[str, str]]:
        return answer(exc)

    @app.errorhandler(StoreUnavailable)
    def store_down(exc: StoreUnavailable) -> tuple[Response, int, dict[str, str]]:
        log.warning("store unavailable: %s", exc)
        return answer(Unavailable("the store is unavailable; retry later"))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int, dict[str, str]]:
        """Errors werkzeug raises itself: 404 no such route, 405, 413 over the body limit."""
        status = exc.code or 500
        code = "request_too_large" if status == 413 else (exc.name or "error").lower()
        error = FunctionError(
            exc.description or exc.name,
            status=status,
            error_type=INVALID_REQUEST if status < 500 else None,
            code=code.replace(" ", "_"),
        )
        return answer(error)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int, dict[str, str]]:
        error_id = uuid.uuid4().hex
        log.exception("unhandled error %s in %s %s", error_id, request.method, request.path)
        return answer(
            FunctionError(f"internal error in {app.name}; its log has the details: {error_id}")
        )
