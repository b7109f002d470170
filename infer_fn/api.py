"""The OpenAI-compatible HTTP surface: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

A request is fully validated — body, model, context window — before its response starts, so every
bad input gets its own status and leaves the engine as it was. Each admitted request ends exactly
once, in `_Outcome.finish`, called by the server when it closes the response: the stream was
exhausted, the client went away, or the engine failed. That single place releases the engine slot
and records the request's metrics. Its billing event is owed earlier, before the response's last
bytes (`_Outcome.bill`), or there at the latest (a client gone mid-stream).

A stream asked for `stream_options.continuous_usage_stats` (vLLM's extension; the ingress always
asks) carries the usage so far on every chunk, so whoever relays it knows what reached the client
even if this function dies mid-stream."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from flask import Blueprint, Response, after_this_request, jsonify, request

from events import wire
from events.openai import (
    PATHS,
    ChatRequest,
    CompletionRequest,
    ContextExceeded,
    Endpoint,
    OpenAIRequest,
)
from functions import jsonbody
from functions.errors import FunctionError
from functions.validation import validate
from infer_fn import errors, metrics
from infer_fn.admission import QueueFull
from infer_fn.capability import AttemptGuard, Vouched, bounded
from infer_fn.config import InferConfig
from infer_fn.engines.base import Engine, EngineError, Generation, InvalidRequest, SamplingParams
from infer_fn.lifecycle import EngineHost, Lease
from infer_fn.metering import EventSink, Meter
from infer_fn.responses import SSE_DONE, Envelope, models_list, sse

log = logging.getLogger(__name__)

RequestT = TypeVar("RequestT", bound=OpenAIRequest)
Start = Callable[[Engine, SamplingParams], Generation]
BLUEPRINT = "openai"


def build_blueprint(
    host: EngineHost,
    emitter: EventSink,
    config: InferConfig,
    guard: AttemptGuard,
    owing_full: Callable[[], bool] = lambda: False,
) -> Blueprint:
    """``guard``: checks each attempt's capability; ``owing_full``: the metering outbox is full,
    so billed work is refused (503)."""
    api = _Api(host, emitter, config, guard, owing_full)
    blueprint = Blueprint(BLUEPRINT, __name__)
    blueprint.add_url_rule(PATHS["chat"], view_func=api.chat, methods=["POST"])
    blueprint.add_url_rule(PATHS["completions"], view_func=api.completions, methods=["POST"])
    blueprint.add_url_rule("/v1/models", view_func=api.models, methods=["GET"])
    return blueprint


def count_refusal(error: FunctionError) -> None:
    """The runtime's error hook: every request the OpenAI surface refused, by outcome. An engine
    failure of an admitted request is counted when it is metered, not here."""
    if request.blueprint != BLUEPRINT or error.code == "engine_failed":
        return
    fallback = "failed" if error.status >= 500 else "invalid"
    outcome = {429: "rejected", 503: "unavailable"}.get(error.status, fallback)
    metrics.REQUESTS.labels(request.path, outcome).inc()


class _Api:
    def __init__(
        self,
        host: EngineHost,
        emitter: EventSink,
        config: InferConfig,
        guard: AttemptGuard,
        owing_full: Callable[[], bool],
    ) -> None:
        self._host = host
        self._emitter = emitter
        self._config = config
        self._guard = guard
        self._owing_full = owing_full
        self._started = int(time.time())

    def models(self) -> Response:
        return jsonify(models_list(self._host.engine.models(), self._started))

    def chat(self) -> Response:
        arrived = time.perf_counter()
        req = self._parse(ChatRequest)
        messages = [m.for_template() for m in req.messages]
        stream = bool(req.stream)
        return self._serve("chat", req, arrived, lambda e, p: e.chat(messages, p, stream=stream))

    def completions(self) -> Response:
        arrived = time.perf_counter()
        req = self._parse(CompletionRequest)
        prompt = req.text
        stream = bool(req.stream)
        return self._serve(
            "completions", req, arrived, lambda e, p: e.complete(prompt, p, stream=stream)
        )

    def _parse(self, model: type[RequestT]) -> RequestT:
        limit = self._config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise errors.too_large(limit)
        # A chunked body has no Content-Length: read at most one byte past the limit.
        raw = request.stream.read(limit + 1)
        if len(raw) > limit:
            raise errors.too_large(limit)
        body = jsonbody.loads(raw, "Request body")
        if not isinstance(body, dict):
            raise errors.bad_request("Request body must be a JSON object.", code="invalid_json")
        # The ingress validated the same body with the same model before it priced it.
        return validate(model, body, "request")

    def _serve(
        self,
        endpoint: Endpoint,
        req: ChatRequest | CompletionRequest,
        arrived: float,
        start: Start,
    ) -> Response:
        vouched = self._guard.admit(
            request.headers.get(wire.CAPABILITY), req.model, req.requested_max_tokens
        )
        params = _sampling(req)
        engine = self._host.engine
        if req.model not in engine.models():
            raise errors.model_not_found(req.model)
        if engine.context_window is not None:
            try:
                req.check_max_tokens(engine.context_window)
            except ContextExceeded as exc:
                raise errors.bad_request(str(exc), code=exc.code, param=exc.param) from exc
        if self._owing_full():
            raise errors.unavailable(
                "This function's metering outbox is full (its events are not being delivered); "
                "it takes no billed work until they are."
            )
        try:
            lease = self._host.acquire()
        except QueueFull as exc:
            raise errors.queue_full(str(exc), self._config.retry_after_seconds) from exc
        except EngineError as exc:
            raise errors.unavailable(f"The engine could not be loaded: {exc}") from exc
        envelope = Envelope.new(endpoint, req.model)
        meter = Meter(envelope.id, req.model, request.path, vouched, arrived=arrived)
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
        unbounded = req.requested_max_tokens is None
        outcome = _Outcome(gen, lease, meter, self._emitter, vouched, cut_at_tokens=unbounded)
        headers = {wire.COLD_START_MS: str(_ms(lease.cold_start_seconds))}
        if req.stream:
            response = Response(
                _stream(envelope, outcome, req.include_usage, req.continuous_usage),
                mimetype="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
            response.call_on_close(outcome.finish)
            return response
        return _whole(envelope, outcome, headers, started)


class _Outcome:
    """How an admitted request ended: `bill` owes its event once (before the response's last
    bytes); `finish` runs once, after the response is closed."""

    def __init__(
        self,
        gen: Generation,
        lease: Lease,
        meter: Meter,
        sink: EventSink,
        vouched: Vouched,
        *,
        cut_at_tokens: bool,
    ) -> None:
        self.gen = gen
        # What generation may run for: the bounds and the deadline of the attempt's capability.
        self.pieces = bounded(gen, vouched, cut_at_tokens=cut_at_tokens)
        self.lease = lease
        self.meter = meter
        self.sink = sink
        # Until the stream says otherwise, a response closed early lost its client.
        self.status = "disconnected"
        self.error: tuple[str, str] | None = None
        self._done = threading.Lock()
        self._finished = False

    def fail(self, exc: BaseException) -> None:
        log.error("engine failed mid-generation: %s", exc)
        self.status = "failed"
        self.error = ("engine_error", str(exc) or type(exc).__name__)

    def bill(self) -> None:
        self.meter.bill(self.gen, self.sink, error=self.error)

    def finish(self) -> None:
        with self._done:
            if self._finished:
                return
            self._finished = True
        # Stops a generation still running (the client left): only produced tokens count.
        self.gen.close()
        self.bill()
        self.lease.release()
        self.meter.finish(self.gen, outcome=self.status)


def _stream(
    envelope: Envelope, outcome: _Outcome, include_usage: bool, continuous: bool
) -> Iterator[bytes]:
    gen = outcome.gen

    def so_far() -> tuple[int, int] | None:
        return (gen.prompt_tokens, gen.completion_tokens) if continuous else None

    try:
        if envelope.endpoint == "chat":
            yield envelope.chunk(None, first=True, usage=so_far())
        for piece in outcome.pieces:
            outcome.meter.mark_text()
            yield envelope.chunk(piece, usage=so_far())
        outcome.status = "ok"
        outcome.bill()  # owed before the client can see the stream end
        yield envelope.chunk(None, gen.finish_reason or "stop", usage=so_far())
        if include_usage:
            yield envelope.usage_chunk(gen.prompt_tokens, gen.completion_tokens)
        yield SSE_DONE
    except GeneratorExit:
        raise
    except Exception as exc:
        # Headers are long gone: the error travels as a final SSE event, as OpenAI's do.
        outcome.fail(exc)
        outcome.bill()
        yield sse(errors.engine_failed(f"The engine failed mid-stream: {exc}").body())


def _whole(
    envelope: Envelope, outcome: _Outcome, headers: dict[str, str], started: float
) -> Response:
    after_this_request(_finish_after(outcome.finish))
    gen = outcome.gen
    pieces: list[str] = []
    try:
        for piece in outcome.pieces:
            outcome.meter.mark_text()
            pieces.append(piece)
    except Exception as exc:
        outcome.fail(exc)
        outcome.bill()
        raise errors.engine_failed() from exc
    outcome.status = "ok"
    outcome.bill()  # owed before the response leaves
    body = envelope.full(
        "".join(pieces), gen.finish_reason or "stop", gen.prompt_tokens, gen.completion_tokens
    )
    response = jsonify(body)
    response.headers.update(headers)
    response.headers[wire.ENGINE_MS] = str(_ms(gen.engine_seconds))
    response.headers.update(_first_token_headers(outcome.meter, started))
    return response


def _first_token_headers(meter: Meter, started: float) -> dict[str, str]:
    """When the first token came, from arrival (queue and load included) and from the engine
    starting on the request (prefill): what the router learns prefill from and the ingress
    accounts a whole response's time to first token by."""
    first = meter.first_text
    if first is None:
        return {}
    return {
        wire.TTFT_MS: str(_ms(first - meter.arrived)),
        wire.PREFILL_MS: str(_ms(first - started)),
    }


def _finish_after(finish: Callable[[], None]) -> Callable[[Response], Response]:
    """Run `finish` when the server closes the response (error responses included)."""

    def hook(response: Response) -> Response:
        response.call_on_close(finish)
        return response

    return hook


def _sampling(req: OpenAIRequest) -> SamplingParams:
    return SamplingParams(
        # No limit asked: until the model stops or the window is full, as OpenAI's API does
        # (the ingress always asks: it prices DEFAULT_MAX_TOKENS when the caller names none);
        # `bounded` stops it at the bound its capability was priced for in any case.
        max_tokens=req.requested_max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=req.stops(),
        seed=req.seed,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
    )


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else round(seconds * 1000)
