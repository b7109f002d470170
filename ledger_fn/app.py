"""The ledger functions' apps: one codebase, deployed as several functions (authorize, settle,
refund, grant, sweep, ledger-admin), or all at once as ``ledger``."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask

from functions.apikeys import ApiKeys
from functions.app import create_app as create_function_app
from functions.config import Settings
from functions.deadletters import DeadLetters
from functions.emit import Emitter
from functions.store import Store, open_store
from ledger_fn.admin import admin_blueprint
from ledger_fn.handlers import LedgerHandlers, handlers_for
from ledger_fn.ledger import Ledger
from ledger_fn.plans import PlanGrant, Plans

EVENT_FUNCTIONS = ("grant", "authorize", "settle", "refund", "sweep")
FUNCTIONS = (*EVENT_FUNCTIONS, "ledger-admin", "ledger")


def create_app(
    function: str = "ledger",
    *,
    settings: Settings | None = None,
    store: Store | None = None,
    ledger: Ledger | None = None,
    plans: Mapping[str, PlanGrant] | None = None,
) -> Flask:
    """``plans``: what each plan grants (from template.yaml, wired by infra); none: no plans."""
    if function not in FUNCTIONS:
        raise ValueError(f"unknown ledger function {function!r}; one of {', '.join(FUNCTIONS)}")
    settings = settings or Settings.from_env()
    store = store or open_store(settings.store_url)
    ledger = ledger or Ledger(store)
    plan_book = Plans(ledger, plans or {})
    handlers = LedgerHandlers(
        ledger, plan_book, Emitter(settings.sink), source=f"/tollgate/{function}"
    )
    names = (
        list(EVENT_FUNCTIONS)
        if function == "ledger"
        else ([function] if function in EVENT_FUNCTIONS else [])
    )
    blueprints = []
    fallback = None
    if function in ("ledger", "ledger-admin"):
        # The admin function is also the platform's dead-letter sink (template.yaml).
        dead_letters = DeadLetters(store)
        fallback = dead_letters.keep if function == "ledger-admin" else None
        blueprints.append(
            admin_blueprint(ledger, plan_book, ApiKeys(store), dead_letters, settings.admin_token)
        )
    return create_function_app(
        function,
        handlers=handlers_for(handlers.routes(), names),
        blueprints=blueprints,
        ready=store.ping,
        fallback=fallback,
    )
