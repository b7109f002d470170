"""Top-ups on the ledger's admin API (``/accounts/<id>/topups``) and the events that settle them
(the operator's notifications published by the ingress; the polling schedule)."""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint, Response, jsonify, request
from pydantic import Field

from events.fields import Amount, EventData
from events.topups import (
    TOPUP_PAYMENT_CHANGED,
    TOPUP_REFUND_CHANGED,
    TOPUPS_POLL,
    TOPUPS_POLLED,
    TopupPaymentChanged,
    TopupRefundChanged,
    TopupsPoll,
    TopupsPolled,
)
from functions.app import Handler
from functions.cloudevent import Incoming, Reply
from functions.errors import BadRequest, Unavailable
from functions.http import json_body, require_bearer
from functions.idempotency import Idempotency
from functions.validation import validate
from ledger_fn.handlers import granted_reply, reply
from ledger_fn.topups import TopUps, view

PhoneNumber = Annotated[str, Field(pattern=r"^\+[1-9][0-9]{4,14}$")]


class NewTopUp(EventData):
    phone_number: PhoneNumber  # E.164, the line the operator charges
    credits: Amount  # one of the account's plan's top-ups


class Validation(EventData):
    code: Annotated[str, Field(min_length=1, max_length=64)]


class NewRefund(EventData):
    credits: Amount | None = None  # default: every unspent credit (in whole minor units)
    reason: Annotated[str, Field(max_length=512)] | None = None


def topups_blueprint(topups: TopUps | None, admin_token: str | None) -> Blueprint:
    bp = Blueprint("ledger_topups", __name__)
    created = Idempotency(topups.store) if topups is not None else None

    @bp.before_request
    def authenticate() -> None:
        require_bearer(admin_token)

    def service() -> TopUps:
        if topups is None:
            raise Unavailable(
                "top-ups on the phone bill are not configured: add carrierBilling to the template"
            )
        return topups

    def answer(topup: dict[str, Any], status: int = 200) -> tuple[Response, int]:
        # Unanswered by the operator so far: accepted, to be settled later.
        if topup["status"] in ("preparing", "confirming") and status != 200:
            status = 202
        return jsonify(view(topup)), status

    @bp.post("/accounts/<account_id>/topups")
    def create(account_id: str) -> tuple[Response, int]:
        body = json_body(NewTopUp)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 200:
            raise BadRequest("Idempotency-Key must be 1..200 characters")

        def run() -> dict[str, Any]:
            return service().create(account_id, body.phone_number, body.credits)

        if key is None or created is None:
            return answer(run(), 201)
        topup = created.run(f"topup-create#{account_id}#{key}", body.model_dump(), run)
        assert topup is not None
        return answer(service().get(account_id, topup["topup_id"]), 201)

    @bp.get("/accounts/<account_id>/topups")
    def list_topups(account_id: str) -> Response:
        return jsonify(topups=[view(t) for t in service().list(account_id)])

    @bp.get("/accounts/<account_id>/topups/<topup_id>")
    def get(account_id: str, topup_id: str) -> tuple[Response, int]:
        return answer(service().get(account_id, topup_id))

    @bp.post("/accounts/<account_id>/topups/<topup_id>/confirm")
    def confirm(account_id: str, topup_id: str) -> tuple[Response, int]:
        return answer(service().confirm(account_id, topup_id), 201)

    @bp.post("/accounts/<account_id>/topups/<topup_id>/cancel")
    def cancel(account_id: str, topup_id: str) -> tuple[Response, int]:
        return answer(service().cancel(account_id, topup_id))

    @bp.post("/accounts/<account_id>/topups/<topup_id>/validate")
    def validate_code(account_id: str, topup_id: str) -> tuple[Response, int]:
        body = json_body(Validation)
        return answer(service().validate(account_id, topup_id, body.code))

    @bp.post("/accounts/<account_id>/topups/<topup_id>/refunds")
    def refund(account_id: str, topup_id: str) -> tuple[Response, int]:
        body = json_body(NewRefund)
        topup = service().refund(account_id, topup_id, body.credits, body.reason)
        pending = any(r["status"] in ("requesting", "processing") for r in topup["refunds"])
        return jsonify(view(topup)), 202 if pending else 201

    return bp


class TopupHandlers:
    """The grant function's top-up events."""

    def __init__(self, topups: TopUps | None) -> None:
        self.topups = topups

    def _service(self) -> TopUps:
        if self.topups is None:
            # 5xx: redelivered once the function is configured, never lost meanwhile.
            raise Unavailable("carrier billing is not configured on this function")
        return self.topups

    def payment_changed(self, event: Incoming) -> Reply | None:
        changed = validate(TopupPaymentChanged, event.data, f"{event.type} data")
        result = self._service().on_payment(
            changed.account_id,
            changed.topup_id,
            changed.payment_id,
            changed.event,
            changed.succeeded,
        )
        if result is None:
            return None
        return granted_reply(result)

    def refund_changed(self, event: Incoming) -> None:
        changed = validate(TopupRefundChanged, event.data, f"{event.type} data")
        self._service().on_refund(
            changed.account_id,
            changed.topup_id,
            changed.refund_id,
            changed.event,
            changed.succeeded,
        )

    def poll(self, event: Incoming) -> Reply:
        validate(TopupsPoll, event.data, f"{event.type} data")
        return reply(TOPUPS_POLLED, TopupsPolled(**self._service().poll()))

    def routes(self) -> dict[str, Handler]:
        return {
            TOPUP_PAYMENT_CHANGED: self.payment_changed,
            TOPUP_REFUND_CHANGED: self.refund_changed,
            TOPUPS_POLL: self.poll,
        }
