"""The ingress: the OpenAI-compatible HTTP API applications call.

Per request: resolve the API key; route (router_fn/policy.py); price the worst case at the chosen
tier's rate and reserve it from the account's credit lease at that price (router_fn/lease.py, in
memory) or, without one or at low balance, authorize a hold for it (a CloudEvent to the authorize
function); call that
cluster's infer function, streaming straight through. An attempt that fails before the first
byte reaches the client is refunded at once and the next feasible cluster is tried. Settlement is
asynchronous: the infer function emits ``inference.completed`` (or ``failed``) with the metered
usage, and the settle/refund functions consume it."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import urllib3
from flask import Blueprint, Response, jsonify, request

from events import wire
from events.activity import RouteDecisionRecord, clip
from events.ledger import HoldAuthorize, HoldAuthorized, LeaseRequest
from events.openai import (
    MODELS,
    PATHS,
    ChatRequest,
    CompletionRequest,
    ContextExceeded,
    Endpoint,
)
from events.quote import Quote, Usage
from events.ratelimits import RateLimits
from functions.accounts import read_profile, roaming_countries
from functions.apikeys import ApiKey, ApiKeys
from functions.auth.keys import SigningKey
from functions.errors import (
    BadRequest,
    Forbidden,
    FunctionError,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from functions.http import bearer_token
from functions.recent import RecentLog
from functions.store import Store
from functions.validation import validate
from router_fn import metrics
from router_fn.capabilities import mint
from router_fn.hints import parse_hints
from router_fn.inflight import InFlightRequests, Sent
from router_fn.latency import LatencyPromise, Served
from router_fn.lease import Basis, Leases
from router_fn.ledger_client import LedgerClient
from router_fn.owed import Owed, Relayed
from router_fn.policy import (
    ALL_FULL,
    AllFull,
    Candidate,
    Decision,
    NoRoute,
    RouteRequest,
    decide,
    reason_header,
)
from router_fn.ratelimit import RateLimiter, limits_for
from router_fn.relay import StreamRelay
from router_fn.tierstate import TierStates
from router_fn.topology import ModelSpec, PlanSpec, Topology
from router_fn.ttft import FirstToken
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
# Every stream asks infer for its usage as it goes (stripped from what the client did not ask).
USAGE_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}


@dataclass(frozen=True)
class Caller:
    account_id: str
    plan: PlanSpec | None
    # Where the account's roaming devices allow processing (None: none roams).
    roaming: frozenset[str] | None = None
    unknown_plan: str | None = None  # the account names a plan this platform does not have
    key_id: str = ""
    rate_limits: RateLimits | None = None  # its key's: the plan's, with the key's override


def caller_of(
    topology: Topology, plan_name: object, countries: frozenset[str] | None, key: ApiKey
) -> Caller:
    """The caller a key, its account's profile (its plan's name) and roaming countries make."""
    plan = topology.plans.get(plan_name) if isinstance(plan_name, str) else None
    if plan_name is not None and plan is None:
        return Caller(key.account_id, None, unknown_plan=str(plan_name)[:256])
    allowed = None if countries is None else topology.roaming_jurisdictions(countries)
    limits = limits_for(plan.rate_limits if plan else None, key.rate_limits)
    # No plan: credits alone decide (and the key's own limits, if it has any).
    return Caller(key.account_id, plan, allowed, key_id=key.key_id, rate_limits=limits)


@dataclass(frozen=True)
class Credit:
    """What an attempt is billed to: a hold of its own, or a request (``lease``) of a lease
    (``hold``: the lease's, its ``amount`` this request's bound)."""

    hold: HoldAuthorized
    quote: Quote
    lease: LeaseRequest | None = None

    @property
    def attempt(self) -> str:
        """The capability's attempt id: the lease request, or the hold's own id."""
        return self.hold.hold_id if self.lease is None else self.lease.request


@dataclass(frozen=True)
class Attempt:
    candidate: Candidate
    credit: Credit
    upstream: urllib3.BaseHTTPResponse
    chunks: Iterator[bytes]  # the body's one iterator (a second stream() would start empty)
    first: bytes  # its first chunk (a whole response: all of it), read before answering
    started: float  # time.monotonic() when infer was called
    capability: str  # what infer was called with; the ingress's own metering carries it too
    sent: Sent  # counted in this ingress's in-flight requests until the response ends

    @property
    def hold(self) -> HoldAuthorized:
        return self.credit.hold

    @property
    def quote(self) -> Quote:
        return self.credit.quote

    def close(self) -> None:
        _finish(self.upstream)
        self.sent.end()


class Ingress:
    def __init__(
        self,
        topology: Topology,
        store: Store,
        ledger: LedgerClient,
        states: TierStates,
        owed: Owed,
        signing_key: SigningKey,
        *,
        hold_ttl_s: int = HOLD_TTL_S,
        sleep: Callable[[float], None] = time.sleep,
        latency: LatencyPromise | None = None,
        clock: Callable[[], float] = time.time,
        decisions: RecentLog | None = None,
        leases: Leases | None = None,
        callers: Callable[[str], Caller] | None = None,
        limits: RateLimiter | None = None,
    ) -> None:
        """``leases``: credit leases to admit requests from (None: a hold per request);
        ``callers``: who an API key is (None: from the store; a site ingress asks the home);
        ``limits``: this replica's shares of the keys' rate limits."""
        self.topology = topology
        self.leases = leases
        self.limits = limits or RateLimiter(store)
        self.hold_ttl_s = hold_ttl_s
        self.clock = clock
        self.decisions = decisions  # the last route decisions, for ops (off the hot path)
        self.store = store
        self.keys = ApiKeys(store)
        self.ledger = ledger
        self.owed = owed
        self.states = states
        self.signing_key = signing_key
        self.sleep = sleep
        self.latency = latency
        self._callers: TTLCache[str, Caller] = TTLCache(AUTH_CACHE_S)
        self._lookup = callers or self._resolve
        self.in_flight = InFlightRequests()
        # Deciding and counting the choice are one step, so concurrent requests see each other.
        self._routing = threading.Lock()
        # urllib3 itself, not requests over it: requests' per-call preparation (cookies, hooks,
        # environment merging, re-wrapping) was the largest cost of the ingress's own in the
        # profile (bench/ingress_profile.py). One pool per host, kept alive; no retries (a
        # failed attempt fails over to the next cluster, after its hold is voided).
        self._upstreams = urllib3.PoolManager(
            num_pools=16,
            maxsize=64,
            retries=False,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        )

    # -- who is calling -------------------------------------------------------------------------

    def caller(self) -> Caller:
        key = bearer_token()
        if key is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <your Tollgate key>'")
        caller = self._callers.get(key, lambda: self._lookup(key))
        if caller.unknown_plan is not None:
            # Fail closed: a plan we do not know may restrict tiers, models or residency.
            raise Forbidden(
                f"account {caller.account_id} is on plan {caller.unknown_plan!r}, which this "
                "platform does not offer, so its restrictions (residency included) cannot be "
                "applied; nothing is served until an operator sets a known plan "
                f"(plans: {', '.join(sorted(self.topology.plans)) or 'none'})",
                code="unknown_plan",
            )
        return caller

    def _resolve(self, key: str) -> Caller:
        api_key = self.keys.lookup(key)
        account_id = api_key.account_id
        profile = read_profile(self.store, account_id) or {}
        countries = roaming_countries(self.store, account_id)
        return caller_of(self.topology, profile.get("plan"), countries, api_key)

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
        route = replace(_route_request(model, parsed), roaming=caller.roaming)
        most = route.prompt_tokens + (route.max_tokens or 0)  # the tokens it may use at most
        self.limits.admit(caller.key_id, caller.rate_limits, most)
        forward = {**body, "model": model.served_name, "max_tokens": route.max_tokens}
        forward.pop("max_completion_tokens", None)
        if parsed.stream:
            forward["stream_options"] = USAGE_OPTIONS
        if self.owed.full:
            raise Unavailable(
                "this ingress owes the ledger more than its outbox may hold (the ledger or the "
                "broker is not taking them); retry shortly",
                code="outbox_full",
            )
        request_id = uuid.uuid4().hex
        # Priced by the price book version in effect now, for every attempt of this request.
        priced = self.topology.at(self.clock())
        try:
            attempt, decision = self._attempt(
                priced, endpoint, caller, route, forward, request_id, started, bool(parsed.stream)
            )
        except (Unavailable, TooManyRequests) as exc:
            if exc.code in ("no_feasible_tier", ALL_FULL):
                self._record(
                    request_id, caller, route, None, exc.message, full=exc.code == ALL_FULL
                )
            raise
        self._record(request_id, caller, route, decision, reason_header(decision))
        metrics.REQUESTS.labels(attempt.candidate.tier, "ok").inc()
        headers = self._answer_headers(attempt, decision, request_id)
        relayed: Iterator[bytes] | None = None
        if parsed.stream:
            relay = StreamRelay(
                chunk_usage=parsed.continuous_usage, usage_chunk=parsed.include_usage
            )
            relayed = self._relay(attempt, relay, model.served_name)
            self.limits.metered_by(lambda: relay.usage)
        if self.latency is None:
            if relayed is None:
                return _whole(attempt, headers)
            return _streamed(relayed, headers, attempt)
        first_token = FirstToken(started)
        if relayed is None:
            first_token.whole(attempt.upstream.headers)
            response = _whole(attempt, headers)
        else:
            response = _streamed(first_token.watch(b"", relayed), headers, attempt)
        served = Served(
            caller.account_id,
            caller.plan,
            model.name,
            attempt.candidate.cluster,
            decision.budget_ms,
            route.prompt_tokens,
            request_id,
            attempt.upstream.headers,
        )
        latency = self.latency
        response.call_on_close(lambda: latency.observe(served, first_token))
        return response

    def _record(
        self,
        request_id: str,
        caller: Caller,
        route: RouteRequest,
        decision: Decision | None,
        reason: str,
        *,
        full: bool = False,
    ) -> None:
        if self.decisions is None:
            return
        record = RouteDecisionRecord(
            request_id=request_id,
            account_id=caller.account_id,
            model=route.model.served_name,
            outcome="routed" if decision is not None else "full" if full else "no_route",
            cluster=None if decision is None else decision.cluster,
            tier=None if decision is None else decision.tier,
            reason=clip(reason),
            latency_budget_ms=route.latency_budget_ms,
        )
        self.decisions.add(record.model_dump(mode="json"))

    def _served_model(self, caller: Caller, name: str) -> ModelSpec:
        model = self.topology.model(name)
        if model is None and name in self.topology.unserved:
            raise NotFound(
                f"the model {name!r} is declared but not served on this platform: "
                f"{self.topology.unserved[name]}; GET /v1/models lists what is served",
                param="model",
                code="model_not_found",
            )
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
        priced: Topology,
        endpoint: Endpoint,
        caller: Caller,
        route: RouteRequest,
        forward: dict[str, Any],
        request_id: str,
        started: float,
        stream: bool,
    ) -> tuple[Attempt, Decision]:
        """Route, hold and call; an attempt that fails before anything reaches the client is
        voided and, once the ledger took the void, the next feasible cluster tried."""
        excluded: frozenset[str] = frozenset()
        failures: list[str] = []
        busy: list[int] = []  # Retry-After of the clusters that refused for capacity
        while True:
            decision, sent = self._decide(
                priced, replace(route, exclude=excluded), caller, failures, busy
            )
            candidate = decision.chosen
            try:
                credit = self._authorize(priced, route, caller, candidate, request_id)
            except BaseException:
                sent.end()
                raise
            metrics.OVERHEAD.observe(time.perf_counter() - started)
            try:
                attempt = self._call(endpoint, candidate, credit, forward, stream, sent)
                return attempt, decision
            except _AttemptFailed as failure:
                sent.end()
                failures.append(f"{candidate.cluster}: {failure}")
                voided = self.owed.void(credit.hold, str(failure), credit.lease)
                if failure.final is not None:
                    raise failure.final from None
                if not voided:
                    raise Unavailable(
                        f"{'; '.join(failures)}; the ledger could not void that attempt's hold "
                        "yet, so no other cluster is tried (a request is charged at most once); "
                        "retry shortly",
                        code="ledger_unavailable",
                    ) from None
                if failure.retry_after is not None:
                    busy.append(failure.retry_after)
                excluded = excluded | {candidate.cluster}
                metrics.FAILOVERS.labels(candidate.tier).inc()
            except BaseException:  # an unfinished request counted for ever would fill a cluster
                sent.end()
                raise

    def _decide(
        self,
        priced: Topology,
        route: RouteRequest,
        caller: Caller,
        failures: list[str],
        busy: list[int],
    ) -> tuple[Decision, Sent]:
        """The decision, counted at once in this ingress's in-flight requests to the chosen
        cluster (as arriving after the emulated RTT, when the infer function sees it)."""
        live = self.states.snapshot()
        try:
            with self._routing:
                decision = decide(route, priced, live, caller.plan, in_flight=self.in_flight.view())
                cluster = priced.cluster(decision.cluster)
                arrives_in = cluster.rtt_ms / 1000 if cluster.emulated else 0.0
                sent = self.in_flight.begin(cluster.name, route.model.name, arrives_in)
        except AllFull as exc:
            metrics.REQUESTS.labels("none", "full").inc()
            raise _too_busy(str(exc), exc.retry_after_s, exc.waits) from exc
        except NoRoute as exc:
            detail = "; ".join([*failures, str(exc)])
            if busy and exc.retryable:  # some cluster is only busy: worth retrying soon
                metrics.REQUESTS.labels("none", "full").inc()
                raise _too_busy(f"no tier can take this request now: {detail}", min(busy)) from exc
            metrics.REQUESTS.labels("none", "no_route").inc()
            raise Unavailable(
                f"no tier can serve this request: {detail}",
                code="no_feasible_tier",
                rejected=exc.rejected,
            ) from exc
        if self.latency is not None:
            self.latency.wake(decision)
        return decision, sent

    def _authorize(
        self,
        priced: Topology,
        route: RouteRequest,
        caller: Caller,
        candidate: Candidate,
        request_id: str,
    ) -> Credit:
        """The request's worst case at the chosen tier's price, reserved from the lease at that
        price, else held on its own."""
        quote = priced.quote(
            route.model.name,
            candidate.tier,
            per_engine_second=bool(caller.plan and caller.plan.per_engine_second),
        )
        assert quote is not None, "the policy only picks priced clusters"
        amount = quote.worst_case(route.prompt_tokens, route.max_tokens or 0, ENGINE_BOUND_MS)
        if self.leases is not None:
            basis = Basis(caller.account_id, candidate.tier, route.model.name, quote)
            slot = self.leases.admit(basis, amount, f"{request_id}:{candidate.cluster}")
            if slot is not None:
                return Credit(slot.hold, quote, LeaseRequest(request=slot.request, bound=amount))
        command = HoldAuthorize(
            account_id=caller.account_id,
            amount=amount,
            ttl_seconds=self.hold_ttl_s,
            tier=candidate.tier,
            model=route.model.name,
            quote=quote,
        )
        event_id = f"{request_id}#{candidate.cluster}"
        try:
            hold = self.ledger.hold(event_id, command)
        except Unavailable:
            # The ledger may have made the hold and lost only its answer: find it and void it.
            self.owed.release(event_id, command)
            raise
        if self.leases is not None:
            self.leases.observe(caller.account_id, hold.available, amount)
        return Credit(hold, quote)

    def _call(
        self,
        endpoint: Endpoint,
        candidate: Candidate,
        credit: Credit,
        forward: dict[str, Any],
        stream: bool,
        sent: Sent,
    ) -> Attempt:
        cluster = self.topology.cluster(candidate.cluster)
        if cluster.emulated:
            self.sleep(cluster.rtt_ms / 1000)  # `tollgate up`: the tier's network RTT, emulated
        hold = credit.hold
        capability = mint(
            self.signing_key,
            hold,
            model=str(forward["model"]),
            cluster=candidate.cluster,
            tier=candidate.tier,
            max_tokens=int(forward["max_tokens"]),
            engine_ms=ENGINE_BOUND_MS,
            attempt=credit.attempt,
            credits=None if credit.lease is None else credit.lease.bound,
        )
        started = time.monotonic()
        try:
            upstream = self._upstreams.request(
                "POST",
                candidate.url.rstrip("/") + PATHS[endpoint],
                body=json.dumps(forward, separators=(",", ":")).encode(),
                headers={"Content-Type": "application/json", wire.CAPABILITY: capability},
                preload_content=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise _AttemptFailed(f"unreachable ({exc.__class__.__name__})", capability) from exc
        if upstream.status >= 500 or upstream.status == 429:
            text = _text(upstream)[:300]
            retry_after = _retry_after(upstream) if upstream.status == 429 else None
            raise _AttemptFailed(
                f"answered {upstream.status}: {text}", capability, retry_after=retry_after
            )
        if upstream.status >= 400:
            # The request itself is wrong (e.g. longer than the context): no tier would take it.
            error = _upstream_error(upstream)
            raise _AttemptFailed(error.message, capability, final=error)
        # As each piece arrives (a chunk of a chunked body), as requests' iter_content(None).
        chunks = upstream.stream(None, decode_content=True)
        try:
            # A whole response reaches the client only once all of it arrived: until then the
            # attempt can still fail over.
            first = b"".join(chunks) if not stream else next(chunks, b"")
        except urllib3.exceptions.HTTPError as exc:
            _finish(upstream)
            where = "before the first byte" if stream else "before its whole answer arrived"
            raise _AttemptFailed(f"failed {where} ({exc.__class__.__name__})", capability) from exc
        return Attempt(candidate, credit, upstream, chunks, first, started, capability, sent)

    def _relay(self, attempt: Attempt, relay: StreamRelay, model: str) -> Iterator[bytes]:
        """Stream the upstream's events through; closing (client gone) closes the upstream, so
        the infer function stops generating and meters what it produced. A stream that does not
        end normally may have lost its infer (it broke off, or died as the client left): the
        ingress stands in for its metering, from the usage of the last event relayed."""
        first_text: float | None = None
        client_left = False
        try:
            for data in itertools.chain((attempt.first,), attempt.chunks):
                out = relay.feed(data)
                if out:
                    first_text = first_text or time.monotonic()
                    yield out
            rest = relay.rest()
            if rest:
                yield rest
            if relay.ended:
                return
            log.warning("upstream %s ended its stream unfinished", attempt.candidate.cluster)
        except GeneratorExit:
            client_left = True
            raise
        except urllib3.exceptions.HTTPError as exc:
            log.warning("upstream %s broke mid-stream: %s", attempt.candidate.cluster, exc)
        finally:
            attempt.close()
            if not relay.ended and relay.usage is not None:
                hold, candidate = attempt.hold, attempt.candidate
                self.owed.relayed(
                    Relayed(
                        hold,
                        candidate.tier,
                        candidate.cluster,
                        model,
                        relay.usage,
                        attempt.started,
                        first_text,
                        attempt.capability,
                        attempt.credit.attempt,
                        client_left,
                    )
                )
        # Tell the client in the stream's own error form.
        yield STREAM_CUT

    # -- the blueprint --------------------------------------------------------------------------

    def blueprint(self) -> Blueprint:
        bp = Blueprint("ingress", __name__)
        self.limits.install(bp)  # x-ratelimit-* on every answer of a limited key

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

        @bp.get("/v1/prices")
        def prices() -> Response:
            # Public, no key: what every model costs here, now, before and next.
            book = self.topology.price_book
            if book is None:
                raise NotFound("this platform publishes no price book")
            published = book.published(self.clock(), models=self.topology.models)
            response = jsonify(published)
            response.headers["Cache-Control"] = "public, max-age=60"
            return response

        return bp


class _AttemptFailed(Exception):
    """An attempt that produced no output. ``final`` set: answer it, do not fail over.
    ``capability``: the attempt's, which its refund carries."""

    def __init__(
        self,
        reason: str,
        capability: str,
        final: FunctionError | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.capability = capability
        self.final = final
        self.retry_after = retry_after  # set: refused for capacity (429), retry after this long


def _finish(upstream: urllib3.BaseHTTPResponse) -> None:
    """Done with ``upstream``: a connection read to its end goes back to the pool for the next
    call; one cut short (client gone, failed over) is closed, so infer sees the caller leave."""
    if not upstream.closed:
        upstream.close()
    upstream.release_conn()


def _text(upstream: urllib3.BaseHTTPResponse) -> str:
    """The whole body of an answer that is not relayed, as text; the connection finished."""
    try:
        return upstream.read().decode(errors="replace")
    except urllib3.exceptions.HTTPError as exc:
        return f"(its body broke off: {exc.__class__.__name__})"
    finally:
        _finish(upstream)


def _retry_after(upstream: urllib3.BaseHTTPResponse) -> int:
    """An upstream 429's Retry-After in seconds (1 when it gives none, or a date)."""
    value = upstream.headers.get("Retry-After", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def _too_busy(
    message: str, retry_after_s: int, waits: dict[str, int] | None = None
) -> FunctionError:
    """429 with Retry-After, which the official openai client waits out and retries."""
    return TooManyRequests(
        message,
        code=ALL_FULL,
        headers={"Retry-After": str(retry_after_s)},
        queue_wait_ms=waits,
    )


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


def _streamed(events: Iterator[bytes], headers: dict[str, str], attempt: Attempt) -> Response:
    response = Response(
        events,
        status=200,
        mimetype="text/event-stream",
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # A client gone before the stream started never runs the relay's own cleanup.
    response.call_on_close(attempt.close)
    return response


def _whole(attempt: Attempt, headers: dict[str, str]) -> Response:
    payload = attempt.first
    attempt.close()
    headers.update(_charges(attempt, payload))
    return Response(payload, status=200, mimetype="application/json", headers=headers)


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


def _upstream_error(upstream: urllib3.BaseHTTPResponse) -> FunctionError:
    text = _text(upstream)
    try:
        error = json.loads(text)["error"]
        message, code, param = str(error["message"]), error.get("code"), error.get("param")
    except (ValueError, KeyError, TypeError):
        message, code, param = text[:300], None, None
    return BadRequest(message, code=code, param=param, status=upstream.status)


def _plan_allows_model(plan: PlanSpec, model: ModelSpec) -> bool:
    if plan.models and model.name not in plan.models:
        return False
    return plan.max_parameters is None or model.parameters <= plan.max_parameters
