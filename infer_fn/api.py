"""The OpenAI-compatible HTTP surface: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

A request is fully validated — body, model, context window — before its response starts, so every
bad input gets its own status and leaves the engine as it was. Each admitted request ends exactly
once, in `_Outcome.finish`, called by the server when it closes the response: the stream was
exhausted, the client went away, or the engine failed. That single place releases the engine slot
and meters what was produced."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from flask import Blueprint, Response, after_this_request, jsonify, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from functions.errors import FunctionError
from infer_fn import errors, metrics
from infer_fn.admission import QueueFull
from infer_fn.config import InferConfig
from infer_fn.engines.base import Engine, EngineError, Generation, InvalidRequest, SamplingParams
from infer_fn.lifecycle import EngineHost, Lease
from infer_fn.metering import BadHold, EventSink, Hold, Meter
from infer_fn.responses import SSE_DONE, Envelope, Kind, models_list, sse
from infer_fn.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger(__name__)

COLD_START_HEADER = "x-tollgate-cold-start-ms"
# Engine time of a whole (non-streamed) response: what per-second plans are charged for, so the
# ingress can tell the caller the charge before settlement runs.
ENGINE_MS_HEADER = "x-tollgate-engine-ms"
RequestT = TypeVar("RequestT", bound=BaseModel)
Start = Callable[[Engine, SamplingParams], Generation]


def build_blueprint(host: EngineHost, emitter: EventSink, config: InferConfig) -> Blueprint:
    api = _Api(host, emitter, config)
    blueprint = Blueprint("openai", __name__)
    blueprint.add_url_rule("/v1/chat/completions", view_func=api.chat, methods=["POST"])
    blueprint.add_url_rule("/v1/completions", view_func=api.completions, methods=["POST"])
    blueprint.add_url_rule("/v1/models", view_func=api.models, methods=["GET"])
    blueprint.register_error_handler(FunctionError, _error_response)
    blueprint.register_error_handler(HTTPException, _http_error_response)
    blueprint.register_error_handler(Exception, _unexpected_response)
    return blueprint


class _Api:
    def __init__(self, host: EngineHost, emitter: EventSink, config: InferConfig) -> None:
        self._host = host
        self._emitter = emitter
        self._config = config
        self._started = int(time.time())

    def models(self) -> Response:
        return jsonify(models_list(self._host.engine.models(), self._started))

    def chat(self) -> Response:
        arrived = time.perf_counter()
        req = self._parse(ChatCompletionRequest)
        messages = [m.for_template() for m in req.messages]
        stream = bool(req.stream)
        return self._serve(
            "chat", req, req.params(), arrived, lambda e, p: e.chat(messages, p, stream=stream)
        )

    def completions(self) -> Response:
        arrived = time.perf_counter()
        req = self._parse(CompletionRequest)
        prompt = req.text()
        stream = bool(req.stream)
        return self._serve(
            "completion",
            req,
            req.params(),
            arrived,
            lambda e, p: e.complete(prompt, p, stream=stream),
        )

    def _parse(self, model: type[RequestT]) -> RequestT:
        limit = self._config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise errors.too_large(limit)
        # A chunked body has no Content-Length: read at most one byte past the limit.
        raw = request.stream.read(limit + 1)
        if len(raw) > limit:
            raise errors.too_large(limit)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise errors.bad_request(
                f"Request body is not valid JSON: {exc}", code="invalid_json"
            ) from exc
        if not isinstance(body, dict):
            raise errors.bad_request("Request body must be a JSON object.", code="invalid_json")
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(part) for part in first["loc"]) or None
            raise errors.bad_request(f"{param}: {first['msg']}", param=param) from exc

    def _serve(
        self,
        kind: Kind,
        req: ChatCompletionRequest | CompletionRequest,
        params: SamplingParams,
        arrived: float,
        start: Start,
    ) -> Response:
        engine = self._host.engine
        if req.model not in engine.models():
            raise errors.model_not_found(req.model)
        window = engine.context_window
        if window is not None and params.max_tokens is not None and params.max_tokens >= window:
            raise errors.bad_request(
                f"max_tokens is {params.max_tokens}, but this model's context window is {window}.",
                code="context_length_exceeded",
                param="max_tokens",
            )
        try:
            headers = {name.lower(): value for name, value in request.headers.items()}
            hold = Hold.from_headers(headers, tier=self._config.tier, cluster=self._config.cluster)
        except BadHold as exc:
            raise errors.bad_request(str(exc), code="invalid_hold") from exc
        try:
            lease = self._host.acquire()
        except QueueFull as exc:
            raise errors.queue_full(str(exc), self._config.retry_after_seconds) from exc
        except EngineError as exc:
            raise errors.unavailable(f"The engine could not be loaded: {exc}") from exc
        envelope = Envelope.new(kind, req.model)
        meter = Meter(envelope.id, req.model, request.path, hold, arrived=arrived)
        started = time.perf_counter()
        try:
            gen = start(engine, params)
        except InvalidRequest as exc:
            lease.release()
            raise errors.bad_request(exc.message, code=exc.code, param=exc.param) from exc
        except Exception as exc:
            lease.release()
            log.exception("engine failed to start a generation")
            raise errors.unavailable(f"The engine failed: {exc}") from exc
        # Tokenizing and validating the prompt (or reaching the upstream) is engine time too.
        gen.engine_seconds += time.perf_counter() - started
        outcome = _Outcome(gen, lease, meter, self._emitter)
        headers = {COLD_START_HEADER: str(_ms(lease.cold_start_seconds))}
        if req.stream:
            response = Response(
                _stream(envelope, outcome, req.include_usage),
                mimetype="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
            response.call_on_close(outcome.finish)
            return response
        return _whole(envelope, outcome, headers)


class _Outcome:
    """How an admitted request ended; `finish` runs once, after the response is closed."""

    def __init__(self, gen: Generation, lease: Lease, meter: Meter, emitter: EventSink) -> None:
        self.gen = gen
        self.lease = lease
        self.meter = meter
        self.emitter = emitter
        # Until the stream says otherwise, a response closed early lost its client.
        self.status = "disconnected"
        self.error: tuple[str, str] | None = None
        self._done = threading.Lock()
        self._finished = False

    def fail(self, exc: BaseException) -> None:
        log.error("engine failed mid-generation: %s", exc)
        self.status = "failed"
        self.error = ("engine_error", str(exc) or type(exc).__name__)

    def finish(self) -> None:
        with self._done:
            if self._finished:
                return
            self._finished = True
        # Stops a generation still running (the client left): only produced tokens count.
        self.gen.close()
        self.lease.release()
        self.meter.finish(self.gen, self.emitter, outcome=self.status, error=self.error)


def _stream(envelope: Envelope, outcome: _Outcome, include_usage: bool) -> Iterator[bytes]:
    gen = outcome.gen
    try:
        if envelope.kind == "chat":
            yield envelope.chunk(None, first=True)
        for piece in gen:
            outcome.meter.mark_text()
            yield envelope.chunk(piece)
        yield envelope.chunk(None, gen.finish_reason or "stop")
        if include_usage:
            yield envelope.usage_chunk(gen.prompt_tokens, gen.completion_tokens)
        yield SSE_DONE
        outcome.status = "ok"
    except GeneratorExit:
        raise
    except Exception as exc:
        # Headers are long gone: the error travels as a final SSE event, as OpenAI's do.
        outcome.fail(exc)
        yield sse(errors.engine_failed(f"The engine failed mid-stream: {exc}").body())


def _whole(envelope: Envelope, outcome: _Outcome, headers: dict[str, str]) -> Response:
    after_this_request(_finish_after(outcome.finish))
    gen = outcome.gen
    pieces: list[str] = []
    try:
        for piece in gen:
            outcome.meter.mark_text()
            pieces.append(piece)
    except Exception as exc:
        outcome.fail(exc)
        raise errors.engine_failed(f"The engine failed: {exc}") from exc
    outcome.status = "ok"
    body = envelope.full(
        "".join(pieces), gen.finish_reason or "stop", gen.prompt_tokens, gen.completion_tokens
    )
    response = jsonify(body)
    response.headers.update(headers)
    response.headers[ENGINE_MS_HEADER] = str(_ms(gen.engine_seconds))
    return response


def _finish_after(finish: Callable[[], None]) -> Callable[[Response], Response]:
    """Run `finish` when the server closes the response (error responses included)."""

    def hook(response: Response) -> Response:
        response.call_on_close(finish)
        return response

    return hook


def _error_response(exc: FunctionError) -> tuple[Response, int, dict[str, str]]:
    # An engine failure of an admitted request is counted when it is metered, not here.
    if exc.code != "engine_failed":
        fallback = "failed" if exc.status >= 500 else "invalid"
        outcome = {429: "rejected", 503: "unavailable"}.get(exc.status, fallback)
        metrics.REQUESTS.labels(request.path, outcome).inc()
    return jsonify(exc.body()), exc.status, exc.headers


def _http_error_response(exc: HTTPException) -> tuple[Response, int, dict[str, str]]:
    """Errors raised by Flask/werkzeug themselves (413 from MAX_CONTENT_LENGTH, 405...)."""
    status = exc.code or 500
    code = "request_too_large" if status == 413 else (exc.name or "error").lower().replace(" ", "_")
    error_type = errors.INVALID if status < 500 else "server_error"
    message = exc.description or exc.name
    return _error_response(FunctionError(message, status=status, error_type=error_type, code=code))


def _unexpected_response(exc: Exception) -> tuple[Response, int, dict[str, str]]:
    log.exception("unhandled error in the OpenAI surface")
    error = FunctionError(f"internal error: {exc}", code="internal")
    return _error_response(error)


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else round(seconds * 1000)
