"""The ledger functions' apps: one codebase, deployed as several functions (authorize, settle,
refund, grant, sweep), or those five at once as ``ledger`` (``tollgate up``); ``ledger-admin``
(the admin API, the only holder of the admin token) and ``deadletters`` (the cluster-local sink of
what the broker gave up delivering; the admin API reads what it keeps) apart."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask

from events.sla import period_of
from functions.apikeys import ApiKeys
from functions.app import create_app as create_function_app
from functions.auth.keys import VerifyKeys
from functions.auth.senders import Senders
from functions.auth.tokens import SINK, TokenFile
from functions.config import Settings
from functions.deadletters import DeadLetters
from functions.emit import Emitter
from functions.store import Store, open_store
from ledger_fn.admin import admin_blueprint
from ledger_fn.config import LedgerSettings
from ledger_fn.console import ConsoleConfig, console_blueprint
from ledger_fn.handlers import LedgerHandlers, handlers_for
from ledger_fn.ledger import Ledger
from ledger_fn.plans import PlanGrant, Plans
from ledger_fn.sla import ServiceCredits, SlaTerms, sla_emitter, sla_handlers
from ledger_fn.sla_api import sla_blueprint
from ledger_fn.topups import CarrierBilling, TopUps
from ledger_fn.topups_api import TopupHandlers, topups_blueprint

EVENT_FUNCTIONS = ("grant", "authorize", "settle", "refund", "sweep")
FUNCTIONS = (*EVENT_FUNCTIONS, "ledger-admin", "deadletters", "ledger")


def create_app(
    function: str = "ledger",
    *,
    senders: Senders,
    capability_keys: VerifyKeys | None = None,
    settings: Settings | None = None,
    store: Store | None = None,
    ledger: Ledger | None = None,
    plans: Mapping[str, PlanGrant] | None = None,
    carrier: CarrierBilling | None = None,
    topups: TopUps | None = None,
    sla: Mapping[str, SlaTerms] | None = None,
    console: ConsoleConfig | None = None,
) -> Flask:
    """``plans``: what each plan grants (from template.yaml, wired by infra); none: no plans.
    ``carrier``: the operator's Carrier Billing API for top-ups (none: top-ups answer 503);
    ``topups``: a ready service instead (tests); ``sla``: each plan's SLA terms (from
    template.yaml), evaluated monthly into service credits; ``console``: what the ops console
    shows beyond the ledger (money, prices, the router's view); ``senders``: who may send it
    events; ``capability_keys``: what settle and refund check inference outcomes' capabilities
    with."""
    if function not in FUNCTIONS:
        raise ValueError(f"unknown ledger function {function!r}; one of {', '.join(FUNCTIONS)}")
    settings = settings or Settings.from_env()
    store = store or open_store(settings.store_url)
    dead_letters = DeadLetters(store)
    if function == "deadletters":
        # It keeps what others refused and moves no credit: no ledger, so none of its keys.
        return create_function_app(
            function, senders=senders, ready=store.ping, fallback=dead_letters.keep
        )
    ledger = ledger or Ledger.configured(store, LedgerSettings.from_env())
    plan_book = Plans(ledger, plans or {})
    emitter = Emitter(settings.sink, TokenFile.from_env(SINK))
    handlers = LedgerHandlers(
        ledger, plan_book, emitter, capability_keys, source=f"/tollgate/{function}"
    )
    credits = ServiceCredits(ledger, plan_book, sla or {}, sla_emitter(emitter, function))
    if topups is None and carrier is not None:
        topups = TopUps(ledger, plan_book, carrier)
    names = (
        list(EVENT_FUNCTIONS)
        if function == "ledger"
        else ([function] if function in EVENT_FUNCTIONS else [])
    )
    blueprints = []
    if function == "ledger-admin":
        blueprints.append(
            admin_blueprint(
                ledger,
                plan_book,
                ApiKeys(store),
                dead_letters,
                settings.admin_token,
                sla=lambda account: credits.report(account, period_of(credits.clock())),
            )
        )
        blueprints.append(sla_blueprint(credits, settings.admin_token))
        blueprints.append(topups_blueprint(topups, settings.admin_token))
        blueprints.append(
            console_blueprint(
                ledger,
                plan_book,
                ApiKeys(store),
                dead_letters,
                settings.admin_token,
                console or ConsoleConfig(),
            )
        )
    routes = handlers_for(handlers.routes(), names)
    if "grant" in names:
        routes.update(TopupHandlers(topups).routes())
        routes.update(sla_handlers(credits))
    return create_function_app(
        function,
        senders=senders,
        handlers=routes,
        blueprints=blueprints,
        ready=store.ping,
    )
