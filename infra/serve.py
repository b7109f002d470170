"""``tollgate serve <function>``: run one function's HTTP server, as its Knative container does."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import click
from flask import Blueprint, Flask

from events.activity import NETWORK_EVENTS, ROUTE_DECISIONS
from events.adapter import Mapped, derived_id
from functions.auth import keys, tokens
from functions.auth.oidc import Discovery, TokenVerifier
from functions.auth.policy import Trust
from functions.auth.senders import senders_from_env, trust_from_env
from functions.config import Settings
from functions.emit import Emitter
from functions.idempotency import Idempotency
from functions.recent import RecentLog
from functions.server import serve as serve_app
from functions.sla import Observation
from functions.store import Store, open_store
from infra.template.schema import Template
from infra.wiring import (
    carrier_billing,
    credit_unit,
    gateway_upstreams,
    plan_grants,
    price_book,
    sla_terms,
    template_from_env,
    topology_from_env,
)
from router_fn.latency import LatencyPromise
from router_fn.ledger_client import LedgerClient
from router_fn.ratelimit import RUNNING_TTL_S, WINDOW_S, Counters, RateLimiter
from router_fn.tierstate import TierStates
from router_fn.topology import Topology

LEDGER_FUNCTIONS = (
    "grant",
    "authorize",
    "settle",
    "refund",
    "sweep",
    "ledger-admin",
    "deadletters",
    "ledger",
)
# Check the capabilities of inference outcomes.
CAPABILITY_CHECKERS = ("settle", "refund", "ledger")
FUNCTIONS = (*LEDGER_FUNCTIONS, "route", "ingress", "infer", "gateway")
CLUSTER_EVENTS_ENV = "TOLLGATE_CLUSTER_EVENTS_URL"
# The home ingress serves the ledger relay for site ingresses at this URL (its audience).
LEDGER_RELAY_ENV = "TOLLGATE_LEDGER_RELAY_URL"
# A site ingress: the home ingress's ledger relay, its one way to the ledger and the key table.
HOME_RELAY_ENV = "TOLLGATE_HOME_RELAY_URL"
LOCAL_ENDPOINTS_ENV = "TOLLGATE_LOCAL_ENDPOINTS"  # `tollgate up`: infer is called directly
PROBE_INTERVAL_S = 2.0


def build_app(function: str) -> Flask:
    """The app of a deployable function, configured from the environment."""
    senders = senders_from_env()
    if function in LEDGER_FUNCTIONS:
        from ledger_fn.app import create_app as ledger_app
        from ledger_fn.console import ConsoleConfig

        template = template_from_env(os.environ)
        checks = function in CAPABILITY_CHECKERS
        return ledger_app(
            function,
            senders=senders,
            capability_keys=keys.VerifyKeys(keys.keys_dir_from_env()) if checks else None,
            plans=plan_grants(template),
            carrier=carrier_billing(template, os.environ),
            sla=sla_terms(template),
            console=ConsoleConfig(
                credit=credit_unit(template),
                price_book=price_book(template),
                route_url=os.environ.get("TOLLGATE_TIERS_URL") or None,
            ),
        )
    if function == "infer":
        from infer_fn.app import create_app as infer_app

        verify_keys = keys.VerifyKeys(keys.keys_dir_from_env())
        return infer_app(senders=senders, capability_keys=verify_keys)
    if function == "route":
        from router_fn.route_app import create_app as route_app

        settings = Settings.from_env()
        template = template_from_env(os.environ)
        quality = {
            s.name: s.cluster
            for s in template.camara.subscriptions
            if s.api == "connectivity-insights-subscriptions"
        }
        return route_app(
            topology_from_env(os.environ),
            open_store(settings.store_url),
            senders=senders,
            quality_subscriptions=quality,
        )
    if function == "ingress":
        return _ingress()
    if function == "gateway":
        return _gateway()
    raise click.BadParameter(f"unknown function {function!r}; one of {', '.join(FUNCTIONS)}")


def _ingress() -> Flask:
    """The home ingress, or with TOLLGATE_HOME_RELAY_URL a site ingress (router_fn/site.py):
    the same API, routing over every cluster, its own credit leases and outbox; the ledger and
    the key table only through the home's relay, routing by RTTs from its own site, and no
    network or cluster events endpoints (those are the home's)."""
    from router_fn.ingress import HOLD_TTL_S
    from router_fn.ingress_app import create_app as ingress_app
    from router_fn.probe import start_probing
    from router_fn.site import RelayedCallers, RelayedShares, relayed_observation

    settings = Settings.from_env()
    template = template_from_env(os.environ)
    home_relay = os.environ.get(HOME_RELAY_ENV)
    cluster = os.environ.get("TOLLGATE_CLUSTER") or None
    if home_relay and cluster not in template.site_ingresses():
        raise click.UsageError(
            f"a site ingress needs TOLLGATE_CLUSTER naming a cluster the template runs an "
            f"ingress on besides home: one of {', '.join(template.site_ingresses()) or 'none'}"
        )
    topology = topology_from_env(os.environ, here=cluster if home_relay else None)
    store = open_store(settings.store_url)
    states = TierStates(store)
    interval = float(os.environ.get("TOLLGATE_PROBE_INTERVAL_S", PROBE_INTERVAL_S))
    if interval > 0:
        # Keeps health and load of every infer function fresh in the shared tier state.
        start_probing(topology, states, interval_s=interval)
    ledger = _ledger_client(home_relay)
    emitter = Emitter(settings.sink, tokens.TokenFile.from_env(tokens.SINK))
    if home_relay:
        network = Blueprint("site", __name__)
    else:
        network = network_blueprint(template, store, emitter)
        events_url = os.environ.get(CLUSTER_EVENTS_ENV)
        if events_url:
            network.register_blueprint(cluster_events(trust_from_env(), events_url, emitter))
        relay_url = os.environ.get(LEDGER_RELAY_ENV)
        if relay_url:
            network.register_blueprint(
                ledger_relay(trust_from_env(), relay_url, template, ledger, store)
            )
    if cluster and template.cluster(cluster).models and not os.environ.get(LOCAL_ENDPOINTS_ENV):
        # Every ingress is also its cluster's gateway: other ingresses reach its infer by it.
        network.register_blueprint(_gateway_blueprint(template, cluster))
    return ingress_app(
        topology,
        store,
        ledger,
        senders=senders_from_env(),
        signing_key=keys.SigningKey(keys.keys_dir_from_env()),
        states=states,
        network=network,
        latency=latency_promise(
            topology, store, states, relayed_observation(ledger) if home_relay else None
        ),
        emitter=emitter,
        # Shorter only where a test must see holds expire (bench/chaos.py).
        hold_ttl_s=int(os.environ.get("TOLLGATE_HOLD_TTL_SECONDS") or HOLD_TTL_S),
        decisions=RecentLog(store, ROUTE_DECISIONS),
        lease_ttl_s=_lease_ttl(),
        callers=RelayedCallers(ledger, topology) if home_relay else None,
        limits=_rate_limiter(store, RelayedShares(ledger) if home_relay else None),
    )


def _ledger_client(home_relay: str | None) -> LedgerClient:
    """The home ingress's client of authorize and refund, or a site ingress's of the relay."""
    # Longer only where the store is slow (DynamoDB Local in the lease race tests).
    timeout_s = float(os.environ.get("TOLLGATE_LEDGER_TIMEOUT_SECONDS") or 5.0)
    if home_relay:
        token = _token(tokens.LEDGER_RELAY)
        return LedgerClient(
            home_relay, None, authorize_token=token, refund_token=token, timeout_s=timeout_s
        )
    authorize_url = os.environ.get("TOLLGATE_LEDGER_URL")
    if not authorize_url:
        raise click.UsageError(
            "the ingress needs TOLLGATE_LEDGER_URL: the URL of the authorize (or ledger) function"
        )
    return LedgerClient(
        authorize_url,
        os.environ.get("TOLLGATE_REFUND_URL") or None,
        authorize_token=_token(tokens.AUTHORIZE),
        refund_token=_token(tokens.REFUND),
        timeout_s=timeout_s,
    )


def _lease_ttl() -> int | None:
    """``TOLLGATE_LEASES=off`` holds every request on its own (what leases are measured
    against); ``TOLLGATE_LEASE_TTL_SECONDS`` is shorter where a test must see leases expire."""
    from router_fn.lease import LEASE_TTL_S

    if os.environ.get("TOLLGATE_LEASES", "on").lower() in ("off", "0", "false", "no"):
        return None
    return int(os.environ.get("TOLLGATE_LEASE_TTL_SECONDS") or LEASE_TTL_S)


def _rate_limiter(store: Store, counters: Counters | None) -> RateLimiter:
    """Shares from the table of ``store``, or a site's ``counters`` (the home table's, through
    the relay). Per-minute limits count per minute; ``TOLLGATE_RATE_WINDOW_SECONDS`` and
    ``TOLLGATE_RATE_SHARE_TTL_SECONDS`` (how soon a dead replica's running slots come back) are
    shorter only where a test must see windows end and shares lapse."""
    return RateLimiter(
        store,
        counters=counters,
        window_s=int(os.environ.get("TOLLGATE_RATE_WINDOW_SECONDS") or WINDOW_S),
        running_ttl_s=int(os.environ.get("TOLLGATE_RATE_SHARE_TTL_SECONDS") or RUNNING_TTL_S),
    )


def _token(target: str) -> tokens.TokenFile:
    token = tokens.TokenFile.from_env(target)
    if token is None:
        raise click.UsageError(f"{tokens.TOKEN_DIR_ENV} is not set: the ingress needs its tokens")
    return token


def cluster_events(trust: Trust, url: str, emitter: Emitter) -> Blueprint:
    """The home ingress's endpoint for the usage other clusters' infer reports."""
    from router_fn.cluster_events import cluster_events_blueprint
    from router_fn.remote_senders import RemoteIssuer

    issuers = [
        RemoteIssuer(TokenVerifier(Discovery(base), url), frozenset(clusters))
        for base, clusters in trust.remote_issuers.items()
    ]
    return cluster_events_blueprint(issuers, trust.policy(url), emitter)


def ledger_relay(
    trust: Trust, url: str, template: Template, ledger: LedgerClient, store: Store
) -> Blueprint:
    """The home ingress's ledger relay, for the site ingresses only: only the issuers of the
    clusters that run one are asked (a partner cloud's workloads never reach the ledger)."""
    from router_fn.ledger_relay import ledger_relay_blueprint
    from router_fn.remote_senders import RemoteIssuer

    sites = set(template.site_ingresses())
    issuers = [
        RemoteIssuer(TokenVerifier(Discovery(base), url), frozenset(sites & set(clusters)))
        for base, clusters in trust.remote_issuers.items()
        if sites & set(clusters)
    ]
    return ledger_relay_blueprint(issuers, trust.policy(url), ledger, store)


def _gateway() -> Flask:
    """A cluster other than home without an ingress of its own (a partner's cloud): its public
    ingress passes capability-bearing attempts to its cluster-local infer services."""
    from functions.app import create_app as create_function_app

    template = template_from_env(os.environ)
    blueprint = _gateway_blueprint(template, os.environ.get("TOLLGATE_CLUSTER", ""))
    return create_function_app("gateway", senders=senders_from_env(), blueprints=[blueprint])


def _gateway_blueprint(template: Template, cluster: str) -> Blueprint:
    from router_fn.gateway import gateway_blueprint

    return gateway_blueprint(
        cluster,
        gateway_upstreams(template, template.cluster(cluster)),
        keys.VerifyKeys(keys.keys_dir_from_env()),
    )


def latency_promise(
    topology: Topology,
    store: Store,
    states: TierStates,
    recorder: Callable[[str, str, Observation], object] | None = None,
) -> LatencyPromise:
    """The ingress's waker (cold tiers woken off the request path), the learner that batches
    what answers teach into the shared tier state, and the SLA observations (``recorder``:
    where they go, default ``store``)."""
    from router_fn.learning import Learner
    from router_fn.waker import Waker
    from router_fn.warmth import Warmth

    learner = Learner(states, Warmth(store)).start()
    return LatencyPromise(topology, store, Waker(states), learner, recorder=recorder)


def network_blueprint(template: Template, store: Store, emitter: Emitter) -> Blueprint:
    """The events endpoints: network notifications in their own formats, published to the
    broker as our io.tollgate.network.* events, and the carrier billing sinks, published as
    io.tollgate.topup.* (ids derived from the notification, so a replay that gets past the
    endpoint's own dedupe is deduped downstream)."""
    from events.camara import SubscriptionBinding
    from router_fn.network_events import network_events_blueprint
    from router_fn.payment_events import payment_events_blueprint

    def publish(events: list[Mapped], key: str) -> None:
        for index, event in enumerate(events):
            emitter.emit(
                event.type,
                "/tollgate/network",
                event.data,
                id=derived_id(key, index),
                subject=event.subject,
            )

    subscriptions = {
        s.name: SubscriptionBinding(s.name, s.api, frozenset(s.event_types), s.cluster)
        for s in template.camara.subscriptions
    }
    events = Blueprint("events", __name__)
    events.register_blueprint(
        network_events_blueprint(
            publish,
            credential=os.environ.get(template.camara.credential_env) or None,
            subscriptions=subscriptions,
            idempotency=Idempotency(store),
            recent=RecentLog(store, NETWORK_EVENTS),
        )
    )
    cb = template.carrier_billing
    key = os.environ.get(cb.sink_key_env) if cb is not None else None
    events.register_blueprint(
        payment_events_blueprint(
            publish, sink_key=key.encode() if key else None, idempotency=Idempotency(store)
        )
    )
    return events


@click.command("serve")
@click.argument("function", type=click.Choice(FUNCTIONS))
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port to listen on (default: $PORT, else 8080).",
)
@click.option(
    "--host",
    default="0.0.0.0",
    show_default=True,
    help="Address to listen on (a container listens on all; tollgate up passes 127.0.0.1).",
)
def serve(function: str, port: int | None, host: str) -> None:
    """Run FUNCTION's HTTP server (CloudEvents on POST /, /healthz, /readyz, /metrics)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve_app(build_app(function), port=port, host=host)
