"""The sinks the operator posts Carrier Billing notifications to, next to the network events:
``POST /events/carrier-billing/<account>/<topup>`` (payments) and
``POST /events/carrier-billing-refund/<account>/<topup>`` (refunds).

Each is authenticated with the sink credential the ledger gave the operator for that top-up
(functions.sink_tokens: signed for ``<account>/<topup>``, with an expiry), mapped by
events.carrier_billing and handed to ``handle`` (which publishes it); the ledger applies it.
Answers as the CAMARA callback does: 204 done or replayed, 400 malformed, 401 missing, wrong or
expired credential, 409 an id reused with other data, 503 no sink key configured."""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Blueprint, Response, request

from events.adapter import Mapped, NetworkEventError
from events.carrier_billing import from_payment_notification, from_refund_notification
from events.topups import sink_subject
from functions import sink_tokens
from functions.errors import BadRequest, NotFound, Unauthorized, Unavailable
from functions.http import bearer_token
from functions.idempotency import Idempotency

Handle = Callable[[list[Mapped], str], None]


def payment_events_blueprint(
    handle: Handle,
    *,
    sink_key: bytes | None,
    idempotency: Idempotency | None = None,
    clock: Callable[[], float] = time.time,
) -> Blueprint:
    blueprint = Blueprint("payment_events", __name__)
    adapters = {
        "carrier-billing": from_payment_notification,
        "carrier-billing-refund": from_refund_notification,
    }

    @blueprint.post("/events/<api>/<account_id>/<topup_id>")
    def notified(api: str, account_id: str, topup_id: str) -> Response:
        adapter = adapters.get(api)
        if adapter is None:
            raise NotFound(f"no sink for {api}; sinks: {', '.join(adapters)}")
        _authenticate(sink_key, account_id, topup_id, clock())
        body = request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object (a structured CloudEvent)")
        try:
            event = adapter(body, account_id=account_id, topup_id=topup_id)
        except NetworkEventError as exc:
            raise BadRequest(str(exc)) from exc
        key = f"{body['source']}#{body['id']}"
        if idempotency is None:
            handle([event], key)
        else:
            idempotency.run(key, body, lambda: handle([event], key))
        return Response(status=204)

    return blueprint


def _authenticate(key: bytes | None, account_id: str, topup_id: str, now: float) -> None:
    if key is None:
        raise Unavailable("the carrier billing sinks are disabled: set their sink key")
    token = bearer_token()
    if token is None:
        raise Unauthorized("notifications need 'Authorization: Bearer <sink access token>'")
    if not sink_tokens.verify(key, sink_subject(account_id, topup_id), token, now):
        raise Unauthorized("wrong or expired sink credential for this top-up")
