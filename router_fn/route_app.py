"""The route function: the network's say in routing, and routing decisions on request.

The ingress routes every request itself, in-process (router_fn/policy.py over the tier state in
the store): a network hop per request would cost far more than the decision (bench/route.py).
This function does what the ingress does not:
- it consumes ``io.tollgate.network.site.degraded.v1`` / ``restored.v1`` from the broker and
  writes them to the shared tier state every ingress routes on. Broker deliveries go to a
  cluster-local function, not to the public ingress;
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

from typing import Any

from flask import Blueprint, Flask, Response, jsonify

from events import types
from events.network import SITE_DEGRADED, SITE_RESTORED, SiteDegraded, SiteRestored
from events.routing import RouteRequested
from functions.app import Handler
from functions.app import create_app as create_function_app
from functions.auth.senders import Senders
from functions.cloudevent import Incoming, Reply
from functions.errors import BadRequest, FunctionError, NotFound, Unavailable
from functions.store import Store
from functions.validation import validate
from router_fn.policy import DEFAULT_CONFIG, Decision, NoRoute, PolicyConfig, RouteRequest, decide
from router_fn.tierstate import TierStates
from router_fn.tierview import tiers_view
from router_fn.topology import Topology

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
) -> Flask:
    """The route function's app; ``states`` defaults to the tier state in ``store``."""
    live = states or TierStates(store)

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
            decision = decide(request, topology, live.snapshot(), plan, config)
        except NoRoute as exc:
            error = Unavailable if exc.retryable else Unroutable
            raise error(str(exc), rejected=exc.rejected) from exc
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

    handlers: dict[str, Handler] = {
        types.ROUTE_REQUESTED: route,
        SITE_DEGRADED: degraded,
        SITE_RESTORED: restored,
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
