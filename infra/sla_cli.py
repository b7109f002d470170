"""``tollgate sla report``: a month's latency-SLA attainment of an account and its service
credit, read from the store with the plans' SLA terms from template.yaml."""

from __future__ import annotations

import json

import click

from events.sla import PERIOD
from functions.config import DEFAULT_STORE
from functions.errors import FunctionError
from functions.store import open_store
from infra.template.load import load_template
from infra.template.problems import TemplateError
from infra.wiring import plan_grants, sla_terms
from ledger_fn.ledger import Ledger
from ledger_fn.plans import Plans
from ledger_fn.sla import ServiceCredits


def _period(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not PERIOD.match(value):
        raise click.BadParameter(f"use a month as YYYY-MM (e.g. 2026-12), not {value!r}")
    return value


@click.group("sla")
def sla() -> None:
    """Latency SLA: attainment per account and month, and service credits."""


@sla.command("report")
@click.option("--account", "account_id", required=True, help="The account to report on.")
@click.option("--period", required=True, callback=_period, help="The month, YYYY-MM (UTC).")
@click.option(
    "--store",
    envvar="TOLLGATE_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    help="Store URL (sqlite:///path.db or dynamodb://host:port/table); env TOLLGATE_STORE.",
)
@click.option(
    "--template",
    "template_path",
    envvar="TOLLGATE_TEMPLATE",
    default="template.yaml",
    show_default=True,
    help="The template whose plans declare the SLA terms.",
)
def report(account_id: str, period: str, store: str, template_path: str) -> None:
    """Requests with a latency budget, how many met it, the attainment against the plan's
    objective, and the service credit granted for the month (if any)."""
    try:
        template = load_template(template_path)
    except (OSError, TemplateError) as exc:
        raise click.ClickException(str(exc)) from exc
    ledger = Ledger(open_store(store))
    credits = ServiceCredits(ledger, Plans(ledger, plan_grants(template)), sla_terms(template))
    try:
        click.echo(json.dumps(credits.report(account_id, period), indent=2))
    except FunctionError as exc:
        raise click.ClickException(exc.message) from exc
