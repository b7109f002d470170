"""``tollgate ledger ...``: the admin operations on the store directly, and ``verify``."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click
from pydantic import ValidationError

from events.ratelimits import RateLimits
from functions.apikeys import ApiKeys
from functions.config import DEFAULT_STORE
from functions.errors import FunctionError
from functions.store import open_store
from ledger_fn.config import LedgerSettings
from ledger_fn.ledger import Ledger
from ledger_fn.topup_cli import topup

store_option = click.option(
    "--store",
    envvar="TOLLGATE_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    help="Store URL (sqlite:///path.db or dynamodb://host:port/table); env TOLLGATE_STORE.",
)


def _print(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _ledger(store: str) -> Ledger:
    try:
        settings = LedgerSettings.from_env()
    except ValueError as exc:  # no or bad TOLLGATE_LEDGER_KEYS: the message says what to set
        raise click.ClickException(str(exc)) from exc
    return Ledger.configured(open_store(store), settings)


@click.group("ledger")
def ledger() -> None:
    """Accounts, keys, grants, balances and the journal."""


ledger.add_command(topup)


@ledger.command("create-account")
@click.argument("account_id")
@click.option("--plan", default=None, help="Plan name from template.yaml.")
@store_option
def create_account(account_id: str, plan: str | None, store: str) -> None:
    """Open an account."""
    _run(lambda: _ledger(store).open_account(account_id, {"plan": plan} if plan else {}))


@ledger.command("grant")
@click.argument("account_id")
@click.argument("amount", type=click.IntRange(min=1, max=2**63 - 1))
@click.option("--expires-at", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]))
@click.option("--tier", "tiers", multiple=True, help="Restrict to tier (repeatable).")
@click.option("--model", "models", multiple=True, help="Restrict to model (repeatable).")
@click.option("--origin", default="top-up", show_default=True)
@click.option("--idempotency-key", default=None, help="Grant at most once under this key.")
@store_option
def grant(
    account_id: str,
    amount: int,
    expires_at: datetime | None,
    tiers: tuple[str, ...],
    models: tuple[str, ...],
    origin: str,
    idempotency_key: str | None,
    store: str,
) -> None:
    """Grant AMOUNT credits (integer) to ACCOUNT_ID."""
    args: dict[str, Any] = {
        "amount": amount,
        "origin": origin,
        "expires_at": int(expires_at.timestamp()) if expires_at else None,
    }
    if tiers:
        args["tiers"] = list(tiers)
    if models:
        args["models"] = list(models)
    key = f"cli-grant#{idempotency_key}" if idempotency_key else None
    _run(lambda: _ledger(store).execute(account_id, "grant", args, key=key))


@ledger.command("balance")
@click.argument("account_id")
@store_option
def balance(account_id: str, store: str) -> None:
    """Show an account's balances and lots."""
    _run(lambda: _ledger(store).balance(account_id))


@ledger.command("issue-key")
@click.argument("account_id")
@store_option
def issue_key(account_id: str, store: str) -> None:
    """Issue an API key (shown once)."""

    def issue() -> dict[str, Any]:
        ledger = _ledger(store)
        ledger.meta(account_id)
        return ApiKeys(ledger.store).issue(account_id)

    _run(issue)


@ledger.command("revoke-key")
@click.argument("account_id")
@click.argument("key_id")
@store_option
def revoke_key(account_id: str, key_id: str, store: str) -> None:
    """Revoke an API key by its id."""
    _run(lambda: ApiKeys(open_store(store)).revoke(account_id, key_id))


@ledger.command("key-limits")
@click.argument("account_id")
@click.argument("key_id")
@click.option("--requests-per-minute", type=int, default=None)
@click.option("--tokens-per-minute", type=int, default=None)
@click.option("--concurrent-requests", type=int, default=None)
@click.option("--clear", is_flag=True, help="Drop the key's own limits: its plan's apply.")
@store_option
def key_limits(
    account_id: str,
    key_id: str,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
    concurrent_requests: int | None,
    clear: bool,
    store: str,
) -> None:
    """Give an API key its own rate limits in place of its plan's (the ones given), or --clear."""
    given = {
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
        "concurrent_requests": concurrent_requests,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if clear == bool(given):
        raise click.UsageError("give --clear, or at least one limit (see --help)")
    try:
        limits = None if clear else RateLimits.model_validate(given)
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from exc
    _run(lambda: ApiKeys(open_store(store)).set_rate_limits(account_id, key_id, limits))


@ledger.command("journal")
@click.argument("account_id")
@click.option("--after", default=0, show_default=True, help="Entries after this sequence number.")
@click.option("--limit", default=100, show_default=True)
@store_option
def journal(account_id: str, after: int, limit: int, store: str) -> None:
    """Print an account's journal entries."""
    _run(lambda: _ledger(store).journal(account_id, after=after, limit=limit))


@ledger.command("sweep")
@store_option
def sweep(store: str) -> None:
    """Expire overdue holds and lots now."""
    _run(lambda: _ledger(store).sweep())


@ledger.command("verify")
@store_option
@click.option(
    "--expect-head",
    metavar="N:MAC",
    default=None,
    help="A registry head an earlier verify printed: fail unless that entry is still there.",
)
def verify(store: str, expect_head: str | None) -> None:
    """Check the account registry and every journal chain (keys from $TOLLGATE_LEDGER_KEYS),
    recompute every balance from the journal and compare every checkpoint with the replay."""
    expected = None
    if expect_head is not None:
        n, sep, mac = expect_head.partition(":")
        if not sep or not n.isdigit() or not mac:
            raise click.BadParameter(
                "expected N:MAC, as verify prints it", param_hint="--expect-head"
            )
        expected = (int(n), mac)
    report = _ledger(store).verify(expect_head=expected)
    for problem in report.problems:
        click.echo(f"PROBLEM {problem}", err=True)
    click.echo(
        f"{report.accounts} accounts, {report.entries} journal entries: "
        + ("ok" if report.ok else f"{len(report.problems)} problems")
    )
    head, head_mac = report.head
    click.echo(f"registry head {head}:{head_mac} (keep it; --expect-head checks it later)")
    sys.exit(0 if report.ok else 1)


def _run(action: Any) -> None:
    try:
        _print(action())
    except FunctionError as exc:
        raise click.ClickException(exc.message) from exc
