"""The ingress function's app: the OpenAI-compatible API, health, metrics, and (optionally) the
tier prober keeping the shared live state fresh."""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Blueprint, Flask

from functions.app import create_app as create_function_app
from functions.recent import RecentLog
from functions.store import Store
from router_fn.ingress import Ingress
from router_fn.ledger_client import LedgerClient
from router_fn.tierstate import TierStates
from router_fn.topology import Topology


def create_app(
    topology: Topology,
    store: Store,
    ledger: LedgerClient,
    *,
    admin_token: str | None = None,
    states: TierStates | None = None,
    network: Blueprint | None = None,
    clock: Callable[[], float] = time.time,
    decisions: RecentLog | None = None,
) -> Flask:
    """``network``: the endpoint network systems POST their notifications to (``/events``);
    ``clock``: what picks the price book version in effect; ``decisions``: where the last route
    decisions are kept for ops."""
    ingress = Ingress(
        topology,
        store,
        ledger,
        states or TierStates(store),
        admin_token=admin_token,
        clock=clock,
        decisions=decisions,
    )
    blueprints = [ingress.blueprint()] + ([network] if network is not None else [])
    return create_function_app("ingress", blueprints=blueprints, ready=store.ping)
