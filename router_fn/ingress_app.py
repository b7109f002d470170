"""The ingress function's app: the OpenAI-compatible API, health, metrics, and (optionally) the
tier prober keeping the shared live state fresh."""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Blueprint, Flask

from functions.app import create_app as create_function_app
from functions.auth.keys import SigningKey
from functions.auth.senders import Senders
from functions.emit import Emitter
from functions.outbox import OutboxSettings
from functions.recent import RecentLog
from functions.server import on_stop
from functions.store import Store
from router_fn.ingress import HOLD_TTL_S, Caller, Ingress
from router_fn.latency import LatencyPromise
from router_fn.lease import Leases
from router_fn.ledger_client import LedgerClient
from router_fn.owed import Owed
from router_fn.ratelimit import RateLimiter
from router_fn.tierstate import TierStates
from router_fn.topology import Topology


def create_app(
    topology: Topology,
    store: Store,
    ledger: LedgerClient,
    *,
    senders: Senders,
    signing_key: SigningKey,
    states: TierStates | None = None,
    network: Blueprint | None = None,
    latency: LatencyPromise | None = None,
    emitter: Emitter | None = None,
    outbox: OutboxSettings | None = None,
    hold_ttl_s: int = HOLD_TTL_S,
    clock: Callable[[], float] = time.time,
    decisions: RecentLog | None = None,
    lease_ttl_s: int | None = None,
    callers: Callable[[str], Caller] | None = None,
    limits: RateLimiter | None = None,
) -> Flask:
    """``network``: the endpoint network systems POST their notifications to (``/events``);
    ``latency``: waking cold tiers, learning from answers and measuring SLA attainment;
    ``emitter`` (default K_SINK) and ``outbox`` (default ``TOLLGATE_OUTBOX_*``): where what the
    ingress owes goes, and where it waits meanwhile; ``clock``: what picks the price book
    version in effect; ``decisions``: where the last route decisions are kept for ops;
    ``signing_key``: what the capabilities of inference attempts are signed with;
    ``lease_ttl_s``: admit requests from credit leases of this TTL (router_fn/lease.py; None:
    hold every request on its own); ``callers``: who an API key is (None: from ``store``; a
    site ingress asks the home, router_fn/site.py); ``limits``: this replica's shares of the
    keys' rate limits (default: a minute's windows)."""
    limits = limits or RateLimiter(store, clock=clock)
    owed = Owed(ledger, emitter or Emitter.from_env(), outbox or OutboxSettings.from_env("ingress"))
    leases = None
    if lease_ttl_s is not None:
        leases = Leases(ledger, owed, ttl_s=lease_ttl_s, return_ttl_s=hold_ttl_s, clock=clock)
        leases.start()
    ingress = Ingress(
        topology,
        store,
        ledger,
        states or TierStates(store),
        owed,
        signing_key,
        hold_ttl_s=hold_ttl_s,
        latency=latency,
        clock=clock,
        decisions=decisions,
        leases=leases,
        callers=callers,
        limits=limits,
    )
    blueprints = [ingress.blueprint()] + ([network] if network is not None else [])

    def ready() -> None:
        store.ping()
        if owed.full:
            raise RuntimeError("the outbox of what this ingress owes the ledger is full")

    app = create_function_app("ingress", senders=senders, blueprints=blueprints, ready=ready)
    on_stop(app, limits.stop)  # its shares of rate limits are the other replicas' at once
    if leases is not None:
        on_stop(app, leases.stop)  # a stopping ingress returns its leases rather than let expire
    return app
