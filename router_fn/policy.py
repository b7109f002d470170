"""Which cluster serves a request: a pure, deterministic decision that explains itself.

1. Feasible: not excluded (it already failed this request), in the pinned tier if one is pinned,
   hosts the model, the model fits the tier's size limit, the plan allows the tier, model and
   size, the cluster's jurisdiction is allowed (the residency hint intersected with the plan's),
   the prompt fits the model's context, the price book prices the model on that tier, and its
   infer function is not known to be unhealthy. Each infeasible cluster gets its reason.
2. Predicted time to first token (ms), what a latency budget promises (events/sla.py) = RTT +
   queue wait + cold start if the model is not warm there + prefill. The queue wait
   (``_queue_wait_ms``) is the time until a slot takes the request: none while the cluster has a
   free slot (replicas x concurrency, the model's containerConcurrency); else until the running
   requests free one (the requests ahead drained by the slots), or, if the cluster may add
   replicas (maxScale), until a new replica has cold-started, whichever comes first. The load is
   what the prober last saw (running, queued, replicas) corrected by this ingress's own requests
   (``in_flight``): those sent since count, those finished since do not, so a burst spreads
   before the next probe. Service time = the request's completion tokens (max_tokens, else a
   default) at the observed tokens/s, else a default speed. Prefill = the prompt at the prefill
   speed learned from the endpoint's answers (else the configured default, none by default).
   Warm or cold is judged from fresh evidence only: a
   fresh probe, else an answer more recent than the model's keep-warm time (Knative's
   scale-down delay); no evidence reads as cold with an empty queue: scale-to-zero services are
   cold unless seen warm. A cold start costs the learned estimate (a high percentile of the
   endpoint's recent measured loads, else of the model's elsewhere), else the template's prior,
   else a size-based guess.
3. Full: a cluster whose queue wait exceeds the plan's maximum (``max_queue_wait_ms``; None is
   unbounded) ranks after every cluster that is not (work-conserving: a dearer cluster that can
   start the request sooner serves it); when all are full the request is refused (``AllFull``,
   a 429 with Retry-After), never queued beyond what its plan allows.
4. Rank: with a latency budget (the hint, else the plan's target), clusters meeting it first,
   cheapest first (the price book's rate for this request), then fastest; if none meets it, the
   fastest. Without a budget, cheapest then fastest. A degraded cluster goes last for a request
   with a budget while a non-degraded feasible one exists; otherwise it ranks as usual. Names
   break every tie, so the same inputs always give the same decision.
5. Wake: when a cluster that is not warm would meet the budget were it warm, and another cluster
   serves the request, the decision names it to be woken (the best such one), so the requests
   that follow meet the budget instead of the cold tier never warming (the caller wakes it
   asynchronously, never on this request's path).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

from events.openai import DEFAULT_MAX_TOKENS
from router_fn.tierstate import ClusterState, Endpoint, Load
from router_fn.topology import (
    DEFAULT_MAX_QUEUE_WAIT_MS,
    ClusterSpec,
    ModelSpec,
    PlanSpec,
    Topology,
)

MAX_HEADER = 299
MAX_RETRY_AFTER_S = 60  # the official openai client honours a Retry-After up to a minute
ALL_FULL = "all_clusters_full"  # the error code of the 429 that refuses a request as AllFull
_EMPTY = ClusterState("")
_NEVER = 2**62  # a wait no slot will end (no replica may run): beyond any plan's maximum

# (cluster, model) -> this ingress's requests there: (arrived, finished or None), epoch seconds;
# the unfinished first, then the finished in the order they finished (router_fn/inflight.py).
InFlight = Mapping[tuple[str, str], Sequence[tuple[float, float | None]]]


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Estimates used when live state does not tell (defaults sized for the template's models:
    SmolLM2 on CPU loads in ~2 s, an 8B model in vLLM ~35 s, a 70B one minutes)."""

    tokens_per_second: float = 40.0  # one request's decode speed until one is observed
    # Prompt speed until one is learned; None: prefill is left out until it is learned (short
    # prompts prefill in a few ms, far below the RTTs that separate tiers).
    prefill_tokens_per_second: float | None = None
    cold_start_ms_base: int = 2000
    cold_start_ms_per_billion: int = 4000
    # Completion tokens assumed when the request does not bound them (price and service time).
    completion_tokens: int = DEFAULT_MAX_TOKENS
    # The longest a request without a plan may queue for a slot (None: unbounded).
    max_queue_wait_ms: int | None = DEFAULT_MAX_QUEUE_WAIT_MS


DEFAULT_CONFIG = PolicyConfig()


@dataclass(frozen=True, slots=True)
class RouteRequest:
    model: ModelSpec
    latency_budget_ms: int | None = None  # x-tollgate-latency-budget-ms; None: the plan's
    residency: frozenset[str] = frozenset()  # x-tollgate-residency; empty: no hint
    tier: str | None = None  # x-tollgate-tier: pinned
    prompt_tokens: int = 0
    max_tokens: int | None = None
    exclude: frozenset[str] = frozenset()  # clusters that already failed this request
    # Where the caller's roaming device allows processing (None: not roaming); narrows the
    # residency like a hint, but an empty set means nowhere, not "no restriction".
    roaming: frozenset[str] | None = None


class Candidate(NamedTuple):  # a tuple: built per cluster per request, cheaper than a dataclass
    cluster: str
    tier: str
    url: str  # the model's infer function on that cluster
    predicted_ms: int
    meets_budget: bool
    degraded: bool
    price: int  # micro-credits of this request at the tier's rate (for ordering only)
    cold_ms: int = 0  # the cold start inside predicted_ms (0: seen warm)
    queue_wait_ms: int = 0  # the predicted wait for a slot inside predicted_ms
    full: bool = False  # the queue wait exceeds the plan's maximum


class Decision(NamedTuple):
    model: str
    chosen: Candidate
    alternatives: tuple[Candidate, ...]  # the other feasible clusters, in failover order
    rejected: Mapping[str, str]  # infeasible cluster -> why
    reasons: tuple[str, ...]
    budget_ms: int | None
    wake: tuple[Candidate, ...] = ()  # cold clusters to wake now: they would meet the budget

    @property
    def cluster(self) -> str:
        return self.chosen.cluster

    @property
    def tier(self) -> str:
        return self.chosen.tier

    @property
    def url(self) -> str:
        return self.chosen.url

    @property
    def predicted_ms(self) -> int:
        return self.chosen.predicted_ms


class NoRoute(Exception):
    """No cluster can serve the request. ``retryable`` is True when a cluster was ruled out
    only by its health or by an earlier failure of this request (it may work again later);
    False when the request can never be routed as asked (a 4xx, not a 503)."""

    def __init__(self, model: str, rejected: Mapping[str, str], *, retryable: bool) -> None:
        self.model = model
        self.rejected = dict(rejected)
        self.retryable = retryable
        detail = "; ".join(f"{c}: {r}" for c, r in self.rejected.items()) or "no clusters"
        super().__init__(f"no feasible cluster for {model}: {detail}")


class AllFull(Exception):
    """Every feasible cluster would queue the request longer than its plan allows: refuse it
    now (429) rather than queue it; ``retry_after_s`` is when the shortest queue should be back
    within the limit."""

    def __init__(self, model: str, waits: Mapping[str, int], max_wait_ms: int) -> None:
        self.model = model
        self.waits = dict(waits)  # cluster -> predicted queue wait (ms)
        self.max_wait_ms = max_wait_ms
        over = min(waits.values()) - max_wait_ms
        self.retry_after_s = max(1, min(MAX_RETRY_AFTER_S, math.ceil(over / 1000)))
        super().__init__(model)

    def __str__(self) -> str:  # written when asked: a refusal is on the hot path
        detail = ", ".join(f"{c} {w} ms" for c, w in sorted(self.waits.items()))
        return (
            f"every cluster serving {self.model} is full: predicted queue wait ({detail}) "
            f"exceeds your plan's {self.max_wait_ms} ms"
        )


def decide(
    request: RouteRequest,
    topology: Topology,
    live: Mapping[str, ClusterState],
    plan: PlanSpec | None,
    config: PolicyConfig = DEFAULT_CONFIG,
    in_flight: InFlight | None = None,
) -> Decision:
    """``in_flight``: this ingress's requests per (cluster, model), unfinished or finished
    lately; they correct the prober's last look (``_unseen``). Raises NoRoute when no cluster
    can serve the request, AllFull when every one that can would queue it too long."""
    budget = request.latency_budget_ms
    if budget is None and plan is not None:
        budget = plan.latency_target_ms
    allowed = _residency(request.residency, plan.residency if plan else frozenset())
    if request.roaming is not None:
        allowed = request.roaming if allowed is None else allowed & request.roaming
    completion = request.max_tokens if request.max_tokens is not None else config.completion_tokens
    max_wait = plan.max_queue_wait_ms if plan is not None else config.max_queue_wait_ms
    ranked, suspect, rejected, retryable, unknown_load = _survey(
        request,
        topology,
        live,
        plan,
        config,
        allowed,
        budget,
        completion,
        in_flight or {},
        max_wait,
    )
    panic = not ranked and bool(suspect)
    if panic:
        # Envoy's panic routing: when probes rule out every feasible cluster, the verdicts are
        # likelier stale (a process restarting, a prober under load) than all true; trying
        # costs one failover per dead cluster, refusing costs the request.
        ranked = suspect
        rejected = {c: why for c, why in rejected.items() if c not in {s.cluster for s in suspect}}
    if not ranked:
        raise NoRoute(request.model.name, rejected, retryable=retryable)
    if max_wait is not None and all(c.full for c in ranked):
        raise AllFull(request.model.name, {c.cluster: c.queue_wait_ms for c in ranked}, max_wait)

    avoid_degraded = budget is not None and any(not c.degraded for c in ranked)
    ranked.sort(
        key=lambda c: (
            c.full,
            avoid_degraded and c.degraded,
            not c.meets_budget,
            c.price if c.meets_budget else 0,
            c.predicted_ms,
            c.cluster,
        )
    )
    chosen = ranked[0]
    wake = _to_wake(ranked, budget, avoid_degraded)
    reasons = _reasons(
        request,
        ranked,
        budget,
        allowed,
        live,
        avoid_degraded=avoid_degraded,
        load_unknown=chosen.cluster in unknown_load,
    )
    return Decision(
        model=request.model.name,
        chosen=chosen,
        alternatives=tuple(ranked[1:]),
        rejected=rejected,
        reasons=(
            reasons[0],
            *_full(ranked, max_wait),
            *(_woken(c, chosen) for c in wake),
            *(["every feasible cluster probed unhealthy: trying them anyway"] if panic else []),
            *reasons[1:],
        ),
        budget_ms=budget,
        wake=wake,
    )


def _survey(
    request: RouteRequest,
    topology: Topology,
    live: Mapping[str, ClusterState],
    plan: PlanSpec | None,
    config: PolicyConfig,
    allowed: frozenset[str] | None,
    budget: int | None,
    completion: int,
    in_flight: InFlight,
    max_wait: int | None,
) -> tuple[list[Candidate], list[Candidate], dict[str, str], bool, set[str]]:
    """Every cluster, either a candidate with its predicted latency, queue wait and price, or
    rejected:
    the candidates (in topology order), the candidates rejected only because probes call them
    unhealthy, the rejected clusters with why, whether a rejection may not last (health, an
    earlier failure of this request), and the candidates whose load is unknown (never
    scraped, or stale)."""
    model = request.model
    service_ms = int(completion * 1000 / config.tokens_per_second)
    per_second = plan is not None and plan.per_engine_second
    feasible: list[Candidate] = []
    suspect: list[Candidate] = []
    rejected: dict[str, str] = {}
    retryable = False
    unknown_load: set[str] = set()
    for cluster in topology.clusters:
        if cluster.name in request.exclude:
            rejected[cluster.name] = "excluded: already failed for this request"
            retryable = True
            continue
        why = _infeasible(request, cluster, plan, allowed, topology)
        if why is not None:
            rejected[cluster.name] = why
            continue
        state = live.get(cluster.name, _EMPTY)
        endpoint = state.endpoint(model.name)
        health = endpoint.health
        unhealthy = health is not None and not health.healthy
        if unhealthy:
            assert health is not None
            rejected[cluster.name] = f"unhealthy: {health.detail or 'probe failed'}"
            retryable = True
        if endpoint.load is None:
            unknown_load.add(cluster.name)
        cold = 0 if _warm(endpoint, model) else _cold_start_ms(model, cluster.name, live, config)
        sent = in_flight.get((cluster.name, model.name)) if in_flight else None
        wait = _queue_wait_ms(
            model,
            endpoint.load,
            _unseen(sent, endpoint.load) if sent else 0,
            _service_ms(endpoint.load, service_ms, completion),
            partial(_cold_start_ms, model, cluster.name, live, config),
        )
        predicted = (
            cluster.rtt_ms + wait + cold + _prefill_ms(endpoint, request.prompt_tokens, config)
        )
        quote = topology.quotes[(model.name, cluster.tier)]
        if per_second:
            price = quote.per_engine_second
        else:
            price = (
                request.prompt_tokens * quote.input_per_million
                + completion * quote.output_per_million
            )
        (suspect if unhealthy else feasible).append(
            Candidate(
                cluster.name,
                cluster.tier,
                cluster.infer_urls[model.name],
                predicted,
                budget is None or predicted <= budget,
                bool(state.degradations),
                price,
                cold,
                wait,
                max_wait is not None and wait > max_wait,
            )
        )
    return feasible, suspect, rejected, retryable, unknown_load


def _reasons(
    request: RouteRequest,
    ranked: list[Candidate],
    budget: int | None,
    allowed: frozenset[str] | None,
    live: Mapping[str, ClusterState],
    *,
    avoid_degraded: bool,
    load_unknown: bool,
) -> tuple[str, ...]:
    """Why the first of ``ranked`` was chosen, then what shaped the choice."""
    chosen = ranked[0]
    reasons = [_why_chosen(chosen, ranked, budget)]
    if request.tier is not None:
        reasons.append(f"pinned to tier {request.tier}")
    if allowed is not None:
        reasons.append(f"residency {','.join(sorted(allowed)) or 'none'}")
    for c in ranked:
        if c.degraded:
            cause = live[c.cluster].degraded
            assert cause is not None
            verb = "avoided" if avoid_degraded else "used"
            reasons.append(f"{verb} degraded {c.cluster}: {cause.cause}")
    if load_unknown:
        reasons.append(f"{chosen.cluster}: load unknown, assumed cold")
    return tuple(reasons)


def _residency(hint: frozenset[str], plan: frozenset[str]) -> frozenset[str] | None:
    """Allowed jurisdictions, or None for anywhere. A hint narrows the plan, never widens it."""
    if hint and plan:
        return hint & plan
    return hint or plan or None


def _infeasible(
    request: RouteRequest,
    cluster: ClusterSpec,
    plan: PlanSpec | None,
    allowed: frozenset[str] | None,
    topology: Topology,
) -> str | None:
    model = request.model
    if request.tier is not None and cluster.tier != request.tier:
        return f"not in pinned tier {request.tier}"
    if not cluster.hosts(model.name):
        return f"does not host {model.name}"
    if cluster.max_parameters is not None and model.parameters > cluster.max_parameters:
        return (
            f"{model.name} ({size(model.parameters)}) exceeds tier {cluster.tier}'s "
            f"{size(cluster.max_parameters)} limit"
        )
    if plan is not None:
        if plan.tiers and cluster.tier not in plan.tiers:
            return f"plan {plan.name} does not include tier {cluster.tier}"
        if plan.models and model.name not in plan.models:
            return f"plan {plan.name} does not include {model.name}"
        if plan.max_parameters is not None and model.parameters > plan.max_parameters:
            return f"plan {plan.name} allows models up to {size(plan.max_parameters)}"
    if allowed is not None and cluster.jurisdiction not in allowed:
        where = ",".join(sorted(allowed)) or "nowhere (hint and plan disjoint)"
        return f"residency: {cluster.jurisdiction} not in {where}"
    if request.prompt_tokens > model.context_length:
        return f"prompt of {request.prompt_tokens} tokens exceeds context {model.context_length}"
    if (model.name, cluster.tier) not in topology.quotes:
        return f"no price for {model.name} on tier {cluster.tier}"
    return None


def _service_ms(load: Load | None, default_ms: int, completion_tokens: int) -> int:
    """How long one request holds a slot: its completion at the observed speed, else the
    default speed's ``default_ms``."""
    if load is not None and load.tokens_per_second:  # the observed speed beats the default
        return int(completion_tokens * 1000 / load.tokens_per_second)
    return default_ms


def _unseen(sent: Sequence[tuple[float, float | None]], load: Load | None) -> int:
    """What the prober's last look missed of this ingress's requests: those in flight that
    arrived after it (all in flight, when the load is unknown), less those it counted that have
    finished since."""
    seen = load.updated_at if load is not None else None
    unseen = 0
    for at, finished in sent:  # the unfinished come first
        if finished is not None:
            break
        unseen += seen is None or at > seen
    if seen is None:
        return unseen
    # The finished, latest last: only those finished since the probe can matter, and a
    # decision reads only them (not every request of the last half minute).
    for at, finished in reversed(sent):
        if finished is None or finished <= seen:
            break
        unseen -= at <= seen
    return unseen


def _queue_wait_ms(
    model: ModelSpec,
    load: Load | None,
    unseen: int,
    service_ms: int,
    scale_up_ms: Callable[[], int],
) -> int:
    """How long a request sent now waits for a slot. Slots now: ``running`` while requests are
    queued (every slot is busy), else ready replicas x the model's concurrency (a probed
    endpoint that does not report replicas is one). None free: the requests ahead drain through
    those slots; if the cluster may add replicas (maxScale), the new ones take requests after a
    cold start (``scale_up_ms``; none when scaling from zero, whose cold start the caller counts
    as the endpoint's own) and all the slots drain what is left: the sooner of the two."""
    running = load.running if load is not None else 0
    in_flight = max(0, running + unseen + (load.queue_depth if load is not None else 0))
    if load is None:
        slots = 0
    elif load.queue_depth > 0:
        slots = running
    else:
        slots = (1 if load.replicas is None else load.replicas) * model.concurrency
    if in_flight < slots:
        return 0
    drained = _drain_ms(in_flight, slots, service_ms)
    most = model.max_replicas * model.concurrency
    if slots >= most:
        return drained
    rest = _drain_ms(in_flight, most, service_ms)
    if drained <= rest:  # draining wins whatever a cold start costs: skip estimating it
        return drained
    return min(drained, (scale_up_ms() if slots else 0) + rest)


def _drain_ms(in_flight: int, slots: int, service_ms: int) -> int:
    """Until ``slots`` busy with ``in_flight`` requests take one more: the requests beyond the
    slots, and this one, each hold a slot for a service time."""
    if in_flight < slots:
        return 0
    if slots == 0:
        return _NEVER
    return (in_flight - slots + 1) * service_ms // slots


def _warm(endpoint: Endpoint, model: ModelSpec) -> bool:
    """Loaded now, by fresh evidence: a fresh probe decides; without one, an answer more recent
    than the time the function stays up after serving. No evidence: cold."""
    if endpoint.load is not None:
        return endpoint.load.warm
    served = endpoint.served
    return served is not None and served.age_s <= model.warm_for_s


def _cold_start_ms(
    model: ModelSpec, cluster: str, live: Mapping[str, ClusterState], config: PolicyConfig
) -> int:
    """What loading the model on ``cluster`` will likely cost: the learned estimate of this
    endpoint (a high percentile of its recent measured loads), else the infer function's own
    mean of its loads, else the slowest of these for the model elsewhere, else the
    template's prior, else a size-based guess."""
    own = _measured_ms(live[cluster].endpoint(model.name)) if cluster in live else None
    if own is not None:
        return own
    seen = [
        ms
        for name in sorted(live)
        if name != cluster and (ms := _measured_ms(live[name].endpoint(model.name))) is not None
    ]
    if seen:
        return max(seen)
    if model.cold_start_ms is not None:
        return model.cold_start_ms
    return config.cold_start_ms_base + model.parameters * config.cold_start_ms_per_billion // 10**9


def _measured_ms(endpoint: Endpoint) -> int | None:
    if endpoint.cold is not None:
        return endpoint.cold.estimate_ms
    if endpoint.load is not None:
        return endpoint.load.cold_start_ms
    return None


def _prefill_ms(endpoint: Endpoint, prompt_tokens: int, config: PolicyConfig) -> int:
    speed = config.prefill_tokens_per_second
    if endpoint.served is not None and endpoint.served.prefill_tokens_per_s:
        speed = endpoint.served.prefill_tokens_per_s
    return int(prompt_tokens * 1000 / speed) if speed else 0


def _to_wake(
    ranked: list[Candidate], budget: int | None, avoid_degraded: bool
) -> tuple[Candidate, ...]:
    """The cluster to wake: the best of those not warm that would meet the budget once warm
    (cheapest, then fastest warm), when the chosen cluster misses the budget; the chosen one
    itself never (its load is the request's own). Degraded clusters are not woken while a
    healthy one could be."""
    if budget is None or ranked[0].meets_budget:
        return ()
    sleepers = [
        c
        for c in ranked[1:]
        if c.cold_ms
        and not c.full
        and c.predicted_ms - c.cold_ms <= budget
        and not (avoid_degraded and c.degraded)
    ]
    if not sleepers:
        return ()
    best = min(sleepers, key=lambda c: (c.price, c.predicted_ms - c.cold_ms, c.cluster))
    return (best,)


def _woken(sleeper: Candidate, chosen: Candidate) -> str:
    return (
        f"{sleeper.cluster} cold (predicted {sleeper.cold_ms} ms start): woken; "
        f"served by {chosen.cluster} meanwhile"
    )


def _why_chosen(chosen: Candidate, ranked: list[Candidate], budget: int | None) -> str:
    head = f"{chosen.cluster}: "
    predicted = f"predicted {chosen.predicted_ms} ms"
    if budget is not None and not chosen.meets_budget:
        return head + f"fastest ({predicted}), none meets {budget} ms budget"
    rivals = [c for c in ranked[1:] if c.meets_budget and not c.full]
    if not rivals:
        price = "only one in budget" if budget is not None else "only feasible"
    elif chosen.price < min(c.price for c in rivals):
        price = "cheapest"
    elif chosen.price == min(c.price for c in rivals):
        price = "cheapest, fastest at that price"
    else:
        price = "best non-degraded"
    if budget is None:
        return head + f"no latency budget ({predicted}), {price}"
    return head + f"meets {budget} ms budget ({predicted}), {price}"


def _full(ranked: list[Candidate], max_wait: int | None) -> list[str]:
    """Each full cluster, and whether a dearer one was chosen because of it."""
    chosen = ranked[0]
    return [
        f"{c.cluster} full (queue {c.queue_wait_ms} ms > {max_wait} ms max)"
        + (f": chose dearer {chosen.cluster}" if c.price < chosen.price else "")
        for c in ranked
        if c.full
    ]


def size(parameters: int) -> str:
    """135M, 8B, 70B: how the template writes model sizes."""
    if parameters >= 10**9:
        n = parameters / 10**9
        return f"{n:g}B"
    return f"{parameters / 10**6:g}M"


def reason_header(decision: Decision) -> str:
    """x-tollgate-route-reason: the reasons, then the rejections, ASCII, under 300 chars."""
    parts = list(decision.reasons)
    parts.extend(f"{c}: {r}" for c, r in decision.rejected.items())
    text = "; ".join(parts).encode("ascii", "replace").decode("ascii")
    text = " ".join(text.split())  # no CR/LF/tabs in a header value
    if len(text) > MAX_HEADER:
        text = text[: MAX_HEADER - 3] + "..."
    return text
