"""The ingress: the OpenAI-compatible HTTP API applications call.

Per request: resolve the API key; route (router_fn/policy.py); price the worst case at the chosen
tier's rate and authorize a hold for it (a CloudEvent to the authorize function); call that
cluster's infer function, streaming straight through. An attempt that fails before the first
byte reaches the client is refunded at once and the next feasible cluster is tried. Settlement is
asynchronous: the infer function emits ``inference.completed`` (or ``failed``) with the metered
usage, and the settle/refund functions consume it."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import requests
from flask import Blueprint, Response, jsonify, request

from events import wire
from events.ledger import HoldAuthorized
from events.openai import (
    MODELS,
    PATHS,
    ChatRequest,
    CompletionRequest,
    ContextExceeded,
    Endpoint,
)
from events.quote import Quote, Usage
from functions.accounts import read_profile
from functions.apikeys import ApiKeys
from functions.auth.keys import SigningKey
from functions.errors import (
    BadRequest,
    Forbidden,
    FunctionError,
    NotFound,
    Unauthorized,
    Unavailable,
)
from functions.http import bearer_token
from functions.store import Store
from functions.validation import validate
from router_fn import metrics
from router_fn.capabilities import mint
from router_fn.hints import parse_hints
from router_fn.ledger_client import LedgerClient
from router_fn.policy import Candidate, Decision, NoRoute, RouteRequest, decide, reason_header
from router_fn.tierstate import TierStates
from router_fn.topology import ModelSpec, PlanSpec, Topology
from router_fn.ttl_cache import TTLCache

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 300.0  # a cold start loads the model before the first byte
# Engine time a hold is priced for (per-second plans) and an attempt may run.
ENGINE_BOUND_MS = int(READ_TIMEOUT_S * 1000)
HOLD_TTL_S = 900  # longer than any request may run; the sweep returns forgotten holds
STREAM_CUT = (
    b'data: {"error": {"message": "the inference stream was cut", "type": "server_error"}}\n\n'
)
AUTH_CACHE_S = 5.0  # a revoked key stops working within this long


@dataclass(frozen=True)
class Caller:
    account_id: str
    plan: PlanSpec | None


@dataclass(frozen=True)
class Attempt:
    candidate: Candidate
    hold: HoldAuthorized
    quote: Quote
    upstream: requests.Response
    chunks: Iterator[bytes]  # the body's one iterator (a second iter_content would start empty)
    first: bytes  # its first chunk, read before answering (so failover stays possible)


class Ingress:
    def __init__(
        self,
        topology: Topology,
        store: Store,
        ledger: LedgerClient,
        states: TierStates,
        signing_key: SigningKey,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.topology = topology
        self.store = store
        self.keys = ApiKeys(store)
        self.ledger = ledger
        self.states = states
        self.signing_key = signing_key
        self.sleep = sleep
        self._callers: TTLCache[str, Caller] = TTLCache(AUTH_CACHE_S)
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy lookups from the environment per request
        # One pool per host: 2 cores serve few concurrent upstreams; keep them alive.
        adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=64)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    # -- who is calling -------------------------------------------------------------------------

    def caller(self) -> Caller:
        key = bearer_token()
        if key is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <your Tollgate key>'")
        return self._callers.get(key, lambda: self._resolve(key))

    def _resolve(self, key: str) -> Caller:
        account_id = self.keys.resolve(key)
        profile = read_profile(self.store, account_id) or {}
        plan_name = profile.get("plan")
        plan = self.topology.plans.get(plan_name) if isinstance(plan_name, str) else None
        return Caller(account_id, plan)

    def allowed_models(self, caller: Caller) -> list[ModelSpec]:
        hosted = {m for c in self.topology.clusters for m in c.infer_urls}
        return [
            spec
            for name, spec in sorted(self.topology.models.items())
            if name in hosted and (caller.plan is None or _plan_allows_model(caller.plan, spec))
        ]

    # -- one request ----------------------------------------------------------------------------

    def handle(self, endpoint: Endpoint) -> Response:
        started = time.perf_counter()
        caller = self.caller()
        body, parsed = _read_request(endpoint)
        model = self._served_model(caller, parsed.model)
        route = _route_request(model, parsed)
        forward = {**body, "model": model.served_name, "max_tokens": route.max_tokens}
        forward.pop("max_completion_tokens", None)
        request_id = uuid.uuid4().hex
        attempt, decision = self._attempt(endpoint, caller, route, forward, request_id, started)
        metrics.REQUESTS.labels(attempt.candidate.tier, "ok").inc()
        headers = self._answer_headers(attempt, decision, request_id)
        return _streamed(attempt, headers) if parsed.stream else _whole(attempt, headers)

    def _served_model(self, caller: Caller, name: str) -> ModelSpec:
        model = self.topology.model(name)
        if model is None:
            raise NotFound(
                f"the model {name!r} does not exist; GET /v1/models lists yours",
                param="model",
                code="model_not_found",
            )
        if caller.plan is not None and not _plan_allows_model(caller.plan, model):
            raise Forbidden(
                f"your plan {caller.plan.name} does not include {model.served_name}",
                param="model",
                code="model_not_allowed",
            )
        return model

    def _answer_headers(
        self, attempt: Attempt, decision: Decision, request_id: str
    ) -> dict[str, str]:
        headers = {
            wire.TIER: attempt.candidate.tier,
            wire.CLUSTER: attempt.candidate.cluster,
            wire.HOLD_ID: attempt.hold.hold_id,
            wire.ROUTE_REASON: reason_header(decision),
            wire.REQUEST_ID: request_id,
        }
        cluster = self.topology.cluster(attempt.candidate.cluster)
        if cluster.emulated:
            headers[wire.EMULATED_RTT_MS] = str(cluster.rtt_ms)
        cold = attempt.upstream.headers.get(wire.COLD_START_MS)
        if cold is not None:
            headers[wire.COLD_START_MS] = cold
        return headers

    def _attempt(
        self,
        endpoint: Endpoint,
        caller: Caller,
        route: RouteRequest,
        forward: dict[str, Any],
        request_id: str,
        started: float,
    ) -> tuple[Attempt, Decision]:
        """Route, hold and call; an attempt that fails before its first byte is refunded and
        the next feasible cluster tried."""
        excluded: frozenset[str] = frozenset()
        failures: list[str] = []
        while True:
            decision = self._decide(replace(route, exclude=excluded), caller, failures)
            candidate = decision.chosen
            hold, quote = self._authorize(route, caller, candidate, request_id)
            metrics.OVERHEAD.observe(time.perf_counter() - started)
            try:
                return self._call(endpoint, candidate, hold, quote, caller, forward), decision
            except _AttemptFailed as failure:
                failures.append(f"{candidate.cluster}: {failure}")
                self._refund(hold, route.model, candidate, str(failure), failure.capability)
                if failure.final is not None:
                    raise failure.final from None
                excluded = excluded | {candidate.cluster}
                metrics.FAILOVERS.labels(candidate.tier).inc()

    def _decide(self, route: RouteRequest, caller: Caller, failures: list[str]) -> Decision:
        try:
            return decide(route, self.topology, self.states.snapshot(), caller.plan)
        except NoRoute as exc:
            metrics.REQUESTS.labels("none", "no_route").inc()
            raise Unavailable(
                f"no tier can serve this request: {'; '.join([*failures, str(exc)])}",
                code="no_feasible_tier",
                rejected=exc.rejected,
            ) from exc

    def _authorize(
        self, route: RouteRequest, caller: Caller, candidate: Candidate, request_id: str
    ) -> tuple[HoldAuthorized, Quote]:
        """A hold for the request's worst case at the chosen tier's price."""
        quote = self.topology.quote(
            route.model.name,
            candidate.tier,
            per_engine_second=bool(caller.plan and caller.plan.per_engine_second),
        )
        assert quote is not None, "the policy only picks priced clusters"
        amount = quote.worst_case(route.prompt_tokens, route.max_tokens or 0, ENGINE_BOUND_MS)
        hold = self.ledger.authorize(
            f"{request_id}#{candidate.cluster}",
            caller.account_id,
            amount,
            ttl_seconds=HOLD_TTL_S,
            tier=candidate.tier,
            model=route.model.name,
            quote=quote,
        )
        return hold, quote

    def _call(
        self,
        endpoint: Endpoint,
        candidate: Candidate,
        hold: HoldAuthorized,
        quote: Quote,
        caller: Caller,
        forward: dict[str, Any],
    ) -> Attempt:
        cluster = self.topology.cluster(candidate.cluster)
        if cluster.emulated:
            self.sleep(cluster.rtt_ms / 1000)  # `tollgate up`: the tier's network RTT, emulated
        capability = mint(
            self.signing_key,
            hold,
            model=str(forward["model"]),
            cluster=candidate.cluster,
            tier=candidate.tier,
            max_tokens=int(forward["max_tokens"]),
            engine_ms=ENGINE_BOUND_MS,
            attempt=hold.hold_id,
        )
        try:
            upstream = self._session.post(
                candidate.url.rstrip("/") + PATHS[endpoint],
                json=forward,
                headers={wire.CAPABILITY: capability},
                stream=True,
                timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            )
        except requests.RequestException as exc:
            raise _AttemptFailed(f"unreachable ({exc.__class__.__name__})", capability) from exc
        if upstream.status_code >= 500 or upstream.status_code == 429:
            text = upstream.text[:300]
            upstream.close()
            raise _AttemptFailed(f"answered {upstream.status_code}: {text}", capability)
        if upstream.status_code >= 400:
            # The request itself is wrong (e.g. longer than the context): no tier would take it.
            error = _upstream_error(upstream)
            raise _AttemptFailed(error.message, capability, final=error)
        chunks = upstream.iter_content(chunk_size=None)
        try:
            first = next(chunks, b"")
        except requests.RequestException as exc:
            upstream.close()
            raise _AttemptFailed(
                f"failed before the first byte ({exc.__class__.__name__})", capability
            ) from exc
        return Attempt(candidate, hold, quote, upstream, chunks, first)

    def _refund(
        self,
        hold: HoldAuthorized,
        model: ModelSpec,
        candidate: Candidate,
        error: str,
        capability: str,
    ) -> None:
        try:
            self.ledger.refund_failed(
                hold.hold_id,
                hold.account_id,
                model.name,
                candidate.tier,
                candidate.cluster,
                error,
                capability,
            )
        except FunctionError as exc:
            # Already voided by the infer function's own failed event, or the ledger is down:
            # either way the hold cannot be spent twice, and the sweep returns it at its TTL.
            log.warning("refund of %s after a failed attempt: %s", hold.hold_id, exc.message)

    # -- the blueprint --------------------------------------------------------------------------

    def blueprint(self) -> Blueprint:
        bp = Blueprint("ingress", __name__)

        @bp.post(PATHS["chat"])
        def chat() -> Response:
            return self.handle("chat")

        @bp.post(PATHS["completions"])
        def completions() -> Response:
            return self.handle("completions")

        @bp.get("/v1/models")
        def models() -> Response:
            caller = self.caller()
            data = [
                {"id": m.served_name, "object": "model", "created": 0, "owned_by": "tollgate"}
                for m in self.allowed_models(caller)
            ]
            return jsonify(object="list", data=data)

        return bp


class _AttemptFailed(Exception):
    """An attempt that produced no output. ``final`` set: answer it, do not fail over.
    ``capability``: the attempt's, which its refund carries."""

    def __init__(self, reason: str, capability: str, final: FunctionError | None = None) -> None:
        super().__init__(reason)
        self.capability = capability
        self.final = final


def _read_request(endpoint: Endpoint) -> tuple[dict[str, Any], ChatRequest | CompletionRequest]:
    """The body as sent (it is forwarded) and as validated by the model infer validates with."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    return body, validate(MODELS[endpoint], body, "request")


def _route_request(model: ModelSpec, parsed: ChatRequest | CompletionRequest) -> RouteRequest:
    try:
        hints = parse_hints(dict(request.headers))
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    try:
        max_tokens = parsed.completion_limit(model.context_length)
    except ContextExceeded as exc:  # as infer would answer, before anything is held
        raise BadRequest(str(exc), code=exc.code, param=exc.param) from exc
    return RouteRequest(
        model=model,
        latency_budget_ms=hints.latency_budget_ms,
        residency=hints.residency,
        tier=hints.tier,
        prompt_tokens=parsed.prompt_tokens_bound(),
        max_tokens=max_tokens,
    )


def _streamed(attempt: Attempt, headers: dict[str, str]) -> Response:
    return Response(
        _relay(attempt),
        status=200,
        mimetype="text/event-stream",
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _whole(attempt: Attempt, headers: dict[str, str]) -> Response:
    payload = attempt.first + b"".join(attempt.chunks)
    attempt.upstream.close()
    headers.update(_charges(attempt, payload))
    return Response(payload, status=200, mimetype="application/json", headers=headers)


def _relay(attempt: Attempt) -> Iterator[bytes]:
    """Stream the upstream's bytes through; closing (client gone) closes the upstream, so the
    infer function stops generating and meters only what it produced."""
    try:
        if attempt.first:
            yield attempt.first
        yield from attempt.chunks
    except requests.RequestException as exc:
        log.warning("upstream %s broke mid-stream: %s", attempt.candidate.cluster, exc)
        # The infer function died mid-stream: it can emit no event, so the hold returns to the
        # account at its TTL (the sweep). Tell the client in the stream's own error form.
        yield STREAM_CUT
    finally:
        attempt.upstream.close()


def _charges(attempt: Attempt, payload: bytes) -> dict[str, str]:
    """What settlement will capture for a whole response, priced by the hold's own quote."""
    try:
        usage = Usage.model_validate(json.loads(payload)["usage"])
    except (KeyError, TypeError, ValueError):
        return {}
    engine_ms = int(attempt.upstream.headers.get(wire.ENGINE_MS, "0") or 0)
    charged = min(attempt.quote.charge(usage, engine_ms), attempt.hold.amount)
    headers = {wire.CREDITS_CHARGED: str(charged)}
    if attempt.hold.available is not None:
        left = attempt.hold.available + attempt.hold.amount - charged
        headers[wire.CREDITS_LEFT] = str(left)
    return headers


def _upstream_error(upstream: requests.Response) -> FunctionError:
    try:
        error = upstream.json()["error"]
        message, code, param = str(error["message"]), error.get("code"), error.get("param")
    except (ValueError, KeyError, TypeError):
        message, code, param = upstream.text[:300], None, None
    finally:
        upstream.close()
    return BadRequest(message, code=code, param=param, status=upstream.status_code)


def _plan_allows_model(plan: PlanSpec, model: ModelSpec) -> bool:
    if plan.models and model.name not in plan.models:
        return False
    return plan.max_parameters is None or model.parameters <= plan.max_parameters
