"""The route function: the network's say in routing, and routing decisions on request.

The ingress routes every request itself, in-process (router_fn/policy.py over the tier state in
the store): a network hop per request would cost far more than the decision (bench/route.py).
This function does what the ingress does not:
- it consumes ``io.tollgate.network.site.degraded.v1`` / ``restored.v1`` from the broker and
  writes them to the shared tier state every ingress routes on. Broker deliveries go to a
  cluster-local function, not to the public ingress;
- it acts on the network's other events (router_fn/network_acts.py): slice bookings become warm
  windows, QoD sessions feed tier state, roaming narrows residency, ended quality watches lift
  their degradations;
- it is the warm-keeper: each ``io.tollgate.tiers.warm.v1`` tick wakes what demand says must be
  warm now (router_fn/warmth.py), through the same warm-up call the ingress uses;
- it answers ``io.tollgate.route.requested.v1`` POSTed to it with
  ``io.tollgate.route.decided.v1``: where a request would go and why, by the same policy over the
  same state, without running or paying for it (ops, a console).

Answers, by Knative's delivery rules:
- 200 with the decision; 204 for a site event applied;
- 404 for a model the platform does not serve, 400 for bad data, an unknown plan or cluster;
- 422 when no cluster can ever serve the request as asked (model too big for every allowed
  tier, residency that excludes every host, a pin to a tier without the model, ...): retrying
  cannot help, so it is a 4xx, with each cluster's reason;
- 503 when the only obstacles are transient (unhealthy clusters, clusters this request already
  failed on): a retry may succeed once a cluster recovers. Also with each cluster's reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, Response, jsonify

from events import types
from events.network import (
    QOS_CHANGED,
    ROAMING_CHANGED,
    SITE_DEGRADED,
    SITE_RESTORED,
    SLICE_BOOKED,
    SUBSCRIPTION_CHANGED,
    QosChanged,
    RoamingChanged,
    SiteDegraded,
    SiteRestored,
    SliceBooked,
    SubscriptionChanged,
)
from events.routing import RouteRequested, TiersWarm
from functions.app import Handler
from functions.app import create_app as create_function_app
from functions.auth.senders import Senders
from functions.cloudevent import Incoming, Reply
from functions.errors import BadRequest, FunctionError, NotFound, TooManyRequests, Unavailable
from functions.store import Store
from functions.validation import validate
from router_fn.network_acts import NetworkActs
from router_fn.policy import (
    ALL_FULL,
    DEFAULT_CONFIG,
    AllFull,
    Decision,
    NoRoute,
    PolicyConfig,
    RouteRequest,
    decide,
)
from router_fn.tierstate import TierStates
from router_fn.tierview import tiers_view
from router_fn.topology import Topology
from router_fn.waker import Waker
from router_fn.warmth import Warmth, targets

log = logging.getLogger(__name__)

NAME = "route"
# How long a degradation holds when its event names no expiry, unless renewed or restored.
DEFAULT_DEGRADATION_S = 600


class Unroutable(FunctionError):
    status = 422
    code = "no_feasible_tier"


def create_app(
    topology: Topology,
    store: Store,
    *,
    states: TierStates | None = None,
    config: PolicyConfig = DEFAULT_CONFIG,
    degradation_s: int = DEFAULT_DEGRADATION_S,
    senders: Senders,
    waker: Waker | None = None,
    quality_subscriptions: Mapping[str, str] | None = None,
) -> Flask:
    """The route function's app; ``states`` defaults to the tier state in ``store``;
    ``quality_subscriptions``: the template's network-quality subscriptions -> their cluster."""
    live = states or TierStates(store)
    warmth = Warmth(store, live.clock)
    wakes = waker or Waker(live)
    acts = NetworkActs(
        topology,
        store,
        live,
        warmth,
        degradation_s=degradation_s,
        subscriptions=quality_subscriptions,
    )

    def route(event: Incoming) -> Reply:
        cmd = validate(RouteRequested, event.data, f"{event.type} data")
        model = topology.model(cmd.model)
        if model is None:
            known = ", ".join(sorted(m.served_name for m in topology.models.values()))
            raise NotFound(f"unknown model {cmd.model!r}; served: {known}")
        plan = None
        if cmd.plan is not None:
            plan = topology.plans.get(cmd.plan)
            if plan is None:
                raise BadRequest(
                    f"unknown plan {cmd.plan!r}; plans: {', '.join(sorted(topology.plans))}"
                )
        request = RouteRequest(
            model=model,
            latency_budget_ms=cmd.latency_budget_ms,
            residency=frozenset(cmd.residency or ()),
            tier=cmd.tier,
            prompt_tokens=cmd.prompt_tokens,
            max_tokens=cmd.max_tokens,
            exclude=frozenset(cmd.exclude),
        )
        try:
            priced = topology.at(live.clock())  # the price book version in effect now
            decision = decide(request, priced, live.snapshot(), plan, config)
        except NoRoute as exc:
            error = Unavailable if exc.retryable else Unroutable
            raise error(str(exc), rejected=exc.rejected) from exc
        except AllFull as exc:  # at capacity now: worth asking again after Retry-After
            raise TooManyRequests(
                str(exc),
                code=ALL_FULL,
                headers={"Retry-After": str(exc.retry_after_s)},
                queue_wait_ms=exc.waits,
            ) from exc
        return Reply(types.ROUTE_DECIDED, decided(decision), subject=decision.cluster)

    def known(cluster: str) -> str:
        if cluster not in {c.name for c in topology.clusters}:
            raise BadRequest(f"no cluster {cluster!r} in this platform's template")
        return cluster

    def degraded(event: Incoming) -> None:
        """A network system says a site cannot keep its promise: route latency-critical work
        elsewhere until it is restored or the degradation lapses."""
        fact = validate(SiteDegraded, event.data, f"{event.type} data")
        until = live.clock() + (fact.expires_in_s or degradation_s)
        live.degrade(known(fact.cluster), fact.cause, until, fact.source_event)

    def restored(event: Incoming) -> None:
        fact = validate(SiteRestored, event.data, f"{event.type} data")
        live.restore(known(fact.cluster), fact.source_event)

    def warm(event: Incoming) -> None:
        """The warm-keeper's tick: wake every (cluster, model) demand says must be warm now.
        Warm-ups run in the background; a tick never waits for a model to load."""
        validate(TiersWarm, event.data, f"{event.type} data")
        demand, slices = warmth.read()
        snapshot = live.snapshot()
        for target in targets(topology, snapshot, demand, slices, live.clock()):
            cluster = topology.cluster(target.cluster)
            log.info("keeping %s/%s warm: %s", target.cluster, target.model, target.why)
            wakes.wake(
                target.cluster, target.model, cluster.infer_urls[target.model], cluster.rtt_ms
            )

    handlers: dict[str, Handler] = {
        types.ROUTE_REQUESTED: route,
        types.TIERS_WARM: warm,
        SITE_DEGRADED: degraded,
        SITE_RESTORED: restored,
        SLICE_BOOKED: lambda e: _ignore(acts.slice_booked(validate(SliceBooked, e.data, e.type))),
        QOS_CHANGED: lambda e: acts.qos_changed(validate(QosChanged, e.data, e.type)),
        ROAMING_CHANGED: lambda e: _ignore(
            acts.roaming_changed(validate(RoamingChanged, e.data, e.type))
        ),
        SUBSCRIPTION_CHANGED: lambda e: acts.subscription_changed(
            validate(SubscriptionChanged, e.data, e.type)
        ),
    }
    return create_function_app(
        NAME,
        senders=senders,
        handlers=handlers,
        blueprints=[tiers_blueprint(topology, live)],
        ready=store.ping,
    )


def tiers_blueprint(topology: Topology, live: TierStates) -> Blueprint:
    """``GET /tiers``: the router's live view, for ops. The route function is cluster-local,
    so the view is no longer on the public ingress (and the ingress holds no admin token)."""
    bp = Blueprint("tiers", __name__)

    @bp.get("/tiers")
    def tiers() -> Response:
        return jsonify(clusters=tiers_view(topology, live.snapshot()))

    return bp


def _ignore(_result: object) -> None:
    """A network event applied: 204, nothing to reply."""


def decided(decision: Decision) -> dict[str, Any]:
    """The data of ``io.tollgate.route.decided.v1`` (events.routing.RouteDecided)."""
    return {
        "model": decision.model,
        "cluster": decision.cluster,
        "tier": decision.tier,
        "url": decision.url,
        "predicted_ms": decision.predicted_ms,
        "budget_ms": decision.budget_ms,
        "reasons": list(decision.reasons),
        "alternatives": [
            {"cluster": c.cluster, "tier": c.tier, "url": c.url, "predicted_ms": c.predicted_ms}
            for c in decision.alternatives
        ],
        "rejected": dict(decision.rejected),
    }
