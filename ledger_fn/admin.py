"""The ledger's admin HTTP API (JSON, ``Authorization: Bearer $TOLLGATE_ADMIN_TOKEN``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from flask import Blueprint, Response, jsonify, request
from pydantic import Field

from events.fields import AccountId, Amount, EventData, Name, Timestamp
from events.ledger import Origin
from events.ratelimits import RateLimits
from functions.accounts import bind_devices, bind_slices
from functions.apikeys import ApiKeys
from functions.deadletters import DeadLetters
from functions.errors import BadRequest
from functions.http import json_body, require_bearer
from ledger_fn.handlers import epoch, iso
from ledger_fn.ledger import Ledger
from ledger_fn.plans import Plans

MAX_SLICES = 64
MAX_DEVICES = 64
# A device's phone number (E.164, as CAMARA's Device.phoneNumber): roaming notifications name it.
PhoneNumber = Annotated[str, Field(pattern=r"^\+[1-9][0-9]{4,14}$")]


class NewAccount(EventData):
    account_id: AccountId
    name: str | None = Field(default=None, max_length=200)
    plan: Name | None = None
    slice_ids: list[Name] = Field(default_factory=list, max_length=MAX_SLICES)
    devices: list[PhoneNumber] = Field(default_factory=list, max_length=MAX_DEVICES)


class AccountChange(EventData):
    name: str | None = Field(default=None, max_length=200)
    plan: Name | None = None
    slice_ids: list[Name] | None = Field(default=None, max_length=MAX_SLICES)
    devices: list[PhoneNumber] | None = Field(default=None, max_length=MAX_DEVICES)


class NewGrant(EventData):
    amount: Amount
    expires_at: Timestamp | None = None
    tiers: list[Name] | None = Field(default=None, min_length=1, max_length=16)
    models: list[Name] | None = Field(default=None, min_length=1, max_length=64)
    origin: Origin = "top-up"
    reference: Name | None = None


def _lot_view(lot: dict[str, Any]) -> dict[str, Any]:
    return {**lot, "expires_at": iso(lot["expires_at"])}


# -- what the admin API and the ops console both do (one code path, one set of checks) ----------


def create_account(ledger: Ledger, plans: Plans, body: NewAccount) -> None:
    check_plan(plans, body.plan)
    bind_slices(ledger.store, body.account_id, body.slice_ids)
    bind_devices(ledger.store, body.account_id, body.devices)
    ledger.open_account(body.account_id, body.model_dump(exclude={"account_id"}, exclude_none=True))


def change_account(ledger: Ledger, plans: Plans, account_id: str, change: AccountChange) -> None:
    check_plan(plans, change.plan)
    ledger.meta(account_id)  # 404 before binding anything to an unknown account
    if change.slice_ids is not None:
        bind_slices(ledger.store, account_id, change.slice_ids)
    if change.devices is not None:
        bind_devices(ledger.store, account_id, change.devices)
    ledger.update_meta(account_id, change.model_dump(exclude_none=True))


def grant_credits(
    ledger: Ledger, account_id: str, body: NewGrant, key: str | None
) -> dict[str, Any]:
    """Grant a lot; ``key`` (as Stripe's Idempotency-Key): a retried request grants once."""
    if key is not None and not 1 <= len(key) <= 200:
        raise BadRequest("Idempotency-Key must be 1..200 characters")
    args = body.model_dump(exclude_none=True)
    args["expires_at"] = epoch(body.expires_at)
    result = ledger.execute(
        account_id,
        "grant",
        args,
        key=f"admin-grant#{key}" if key else None,
        payload=body.model_dump(mode="json"),
    )
    return {**result, "expires_at": iso(result["expires_at"])}


def check_plan(plans: Plans, plan: str | None) -> None:
    if plan is not None and plan not in plans.plans:
        raise BadRequest(
            f"unknown plan {plan!r}; plans: {', '.join(sorted(plans.plans)) or 'none'}",
            param="plan",
        )


def admin_blueprint(
    ledger: Ledger,
    plans: Plans,
    keys: ApiKeys,
    dead_letters: DeadLetters,
    admin_token: str | None,
    sla: Callable[[str], dict[str, Any]] | None = None,
) -> Blueprint:
    """``sla``: this month's latency-SLA standing of an account, shown in its view."""
    bp = Blueprint("ledger_admin", __name__)

    @bp.before_request
    def authenticate() -> None:
        require_bearer(admin_token)

    def account_view(account_id: str) -> dict[str, Any]:
        meta = ledger.meta(account_id).data
        balance = ledger.balance(account_id)
        balance["lots"] = [_lot_view(lot) for lot in balance["lots"]]
        view = {**meta, **balance, **plans.next_grant(account_id)}
        if sla is not None:
            view["sla"] = sla(account_id)
        return view

    @bp.post("/accounts")
    def new_account() -> tuple[Response, int]:
        body = json_body(NewAccount)
        create_account(ledger, plans, body)
        return jsonify(account_view(body.account_id)), 201

    @bp.get("/accounts")
    def list_accounts() -> Response:
        # In order of opening; a retried opening is registered twice but listed once.
        return jsonify(accounts=list(dict.fromkeys(ledger.accounts())))

    @bp.get("/accounts/<account_id>")
    def get_account(account_id: str) -> Response:
        return jsonify(account_view(account_id))

    @bp.patch("/accounts/<account_id>")
    def patch_account(account_id: str) -> Response:
        change_account(ledger, plans, account_id, json_body(AccountChange))
        return jsonify(account_view(account_id))

    @bp.get("/accounts/<account_id>/balance")
    def balance(account_id: str) -> Response:
        view = ledger.balance(account_id)
        view["lots"] = [_lot_view(lot) for lot in view["lots"]]
        return jsonify(view)

    @bp.post("/accounts/<account_id>/keys")
    def issue_key(account_id: str) -> tuple[Response, int]:
        ledger.meta(account_id)  # 404 for unknown accounts
        return jsonify(keys.issue(account_id)), 201

    @bp.get("/accounts/<account_id>/keys")
    def list_keys(account_id: str) -> Response:
        ledger.meta(account_id)
        return jsonify(keys=keys.list(account_id))

    @bp.delete("/accounts/<account_id>/keys/<key_id>")
    def revoke_key(account_id: str, key_id: str) -> Response:
        return jsonify(keys.revoke(account_id, key_id))

    @bp.put("/accounts/<account_id>/keys/<key_id>/rate-limits")
    def set_key_limits(account_id: str, key_id: str) -> Response:
        # The key's own limits in place of its plan's (those it does not set stay the plan's).
        limits = json_body(RateLimits)
        if limits.empty:
            raise BadRequest(
                "give at least one of requestsPerMinute, tokensPerMinute, concurrentRequests "
                "(DELETE this resource to clear the key's override)"
            )
        return jsonify(keys.set_rate_limits(account_id, key_id, limits))

    @bp.delete("/accounts/<account_id>/keys/<key_id>/rate-limits")
    def clear_key_limits(account_id: str, key_id: str) -> Response:
        return jsonify(keys.set_rate_limits(account_id, key_id, None))

    @bp.post("/accounts/<account_id>/grants")
    def grant(account_id: str) -> tuple[Response, int]:
        body = json_body(NewGrant)
        key = request.headers.get("Idempotency-Key")
        return jsonify(grant_credits(ledger, account_id, body, key)), 201

    @bp.get("/accounts/<account_id>/journal")
    def journal(account_id: str) -> Response:
        try:
            after = int(request.args.get("after", "0"))
            limit = int(request.args.get("limit", "100"))
        except ValueError:
            raise BadRequest("after and limit must be whole numbers") from None
        entries = ledger.journal(account_id, after=after, limit=limit)
        next_after = entries[-1]["seq"] if len(entries) == limit else None
        return jsonify(entries=entries, next_after=next_after)

    @bp.get("/deadletters")
    def list_dead_letters() -> Response:
        return jsonify(events=dead_letters.list(after=request.args.get("after"), limit=100))

    return bp


__all__ = [
    "AccountChange",
    "NewAccount",
    "NewGrant",
    "admin_blueprint",
    "change_account",
    "check_plan",
    "create_account",
    "grant_credits",
]
