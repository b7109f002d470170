"""``tollgate ledger topup ...``: top-ups on the phone bill, through the ledger's admin API (the
operator's credentials and the sink key live with the ledger functions, not on this machine)."""

from __future__ import annotations

import json
from typing import Any

import click
import requests

url_option = click.option(
    "--url",
    envvar="TOLLGATE_ADMIN_URL",
    required=True,
    help="Base URL of the ledger admin API; env TOLLGATE_ADMIN_URL.",
)
token_option = click.option(
    "--admin-token",
    envvar="TOLLGATE_ADMIN_TOKEN",
    required=True,
    help="Admin bearer token; env TOLLGATE_ADMIN_TOKEN.",
)


def _call(url: str, token: str, method: str, path: str, body: Any = None) -> None:
    try:
        response = requests.request(
            method,
            f"{url.rstrip('/')}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
    except requests.RequestException as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from exc
    payload = response.json() if response.content else {}
    if response.status_code >= 400:
        message = payload.get("error", {}).get("message", response.text[:300])
        raise click.ClickException(f"HTTP {response.status_code}: {message}")
    click.echo(json.dumps(payload, indent=2))


@click.group("topup")
def topup() -> None:
    """Credits bought on the phone bill (CAMARA Carrier Billing)."""


@topup.command("buy")
@click.argument("account_id")
@click.option("--phone", required=True, help="The line to charge, E.164 (+33612345678).")
@click.option(
    "--credits", type=click.IntRange(min=1), required=True, help="One of the plan's top-ups."
)
@url_option
@token_option
def buy(account_id: str, phone: str, credits: int, url: str, admin_token: str) -> None:
    """Reserve a top-up's price on PHONE's bill; confirm it to pay."""
    body = {"phone_number": phone, "credits": credits}
    _call(url, admin_token, "POST", f"/accounts/{account_id}/topups", body)


@topup.command("list")
@click.argument("account_id")
@url_option
@token_option
def list_topups(account_id: str, url: str, admin_token: str) -> None:
    """An account's top-ups and their refunds."""
    _call(url, admin_token, "GET", f"/accounts/{account_id}/topups")


@topup.command("confirm")
@click.argument("account_id")
@click.argument("topup_id")
@url_option
@token_option
def confirm(account_id: str, topup_id: str, url: str, admin_token: str) -> None:
    """Confirm a reserved top-up: the line is charged, the credits granted once it succeeds."""
    _call(url, admin_token, "POST", f"/accounts/{account_id}/topups/{topup_id}/confirm")


@topup.command("cancel")
@click.argument("account_id")
@click.argument("topup_id")
@url_option
@token_option
def cancel(account_id: str, topup_id: str, url: str, admin_token: str) -> None:
    """Cancel a reserved top-up: nothing is charged."""
    _call(url, admin_token, "POST", f"/accounts/{account_id}/topups/{topup_id}/cancel")


@topup.command("refund")
@click.argument("account_id")
@click.argument("topup_id")
@click.option("--credits", type=click.IntRange(min=1), default=None, help="Default: all unspent.")
@click.option("--reason", default=None)
@url_option
@token_option
def refund(
    account_id: str,
    topup_id: str,
    credits: int | None,
    reason: str | None,
    url: str,
    admin_token: str,
) -> None:
    """Refund a top-up's unspent credits (in whole minor units of its currency)."""
    body = {k: v for k, v in (("credits", credits), ("reason", reason)) if v is not None}
    _call(url, admin_token, "POST", f"/accounts/{account_id}/topups/{topup_id}/refunds", body)
