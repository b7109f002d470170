"""The ingress function's app: the OpenAI-compatible API, health, metrics, and (optionally) the
tier prober keeping the shared live state fresh."""

from __future__ import annotations

from flask import Blueprint, Flask

from functions.app import create_app as create_function_app
from functions.auth.keys import SigningKey
from functions.auth.senders import Senders
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
    senders: Senders,
    signing_key: SigningKey,
    states: TierStates | None = None,
    network: Blueprint | None = None,
) -> Flask:
    """``network``: the endpoint network systems POST their notifications to (``/events``);
    ``signing_key``: what the capabilities of inference attempts are signed with."""
    ingress = Ingress(
        topology,
        store,
        ledger,
        states or TierStates(store),
        signing_key,
    )
    blueprints = [ingress.blueprint()] + ([network] if network is not None else [])
    return create_function_app("ingress", senders=senders, blueprints=blueprints, ready=store.ping)
