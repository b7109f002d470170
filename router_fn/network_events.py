"""The sink network systems post their notifications to: CAMARA (structured CloudEvents) and 3GPP
(NWDAF analytics, TS 28.532 provisioning). It authenticates, maps each notification to Tollgate's
``io.tollgate.network.*.v1`` events (events.camara, events.threegpp) and hands them to ``handle``
(which publishes or applies them); it holds no routing or ledger logic.

Answers: 204 done (or a replay, or nothing for us in it); 400 malformed or unknown, with the
reason; 401 missing or wrong bearer; 404 unknown subscription; 409 an id reused with other data;
503 no credential configured. A notification is mapped completely before ``handle`` runs, so a
refused one has no effect at all.

Replays: with ``idempotency``, the same notification (CAMARA source + id; 3GPP systemDN +
notificationId, or the NWDAF body itself) reaches ``handle`` once; without it, ``handle`` must
dedupe on the key it is given."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Response, request

from events.adapter import Mapped, NetworkEventError
from events.camara import SubscriptionBinding, from_camara, subscription_for
from events.threegpp import DEFAULT_THRESHOLDS, Thresholds, from_moi_creation, from_nwdaf
from functions.errors import BadRequest, NotFound, Unauthorized, Unavailable
from functions.http import bearer_token
from functions.idempotency import Idempotency

Handle = Callable[[list[Mapped], str], None]


def network_events_blueprint(
    handle: Handle,
    *,
    credential: str | None,
    subscriptions: Mapping[str, SubscriptionBinding],
    idempotency: Idempotency | None = None,
    sites: Mapping[str, str] | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Blueprint:
    """``credential``: the bearer token every sender presents (CAMARA sinkCredential ACCESSTOKEN);
    ``subscriptions``: the template's CAMARA subscriptions by name; ``sites``: NWDAF location
    keys to cluster names (see events.threegpp)."""
    blueprint = Blueprint("network_events", __name__)

    def accept(events: list[Mapped], key: str, body: Any) -> Response:
        if events:
            if idempotency is None:
                handle(events, key)
            else:
                idempotency.run(key, body, lambda: handle(events, key))
        return Response(status=204)

    def camara(subscription: SubscriptionBinding | None) -> Response:
        _authenticate(credential)
        body = _json_body()
        if "ce-specversion" in request.headers:
            raise BadRequest("CAMARA notifications are structured CloudEvents, not binary mode")
        try:
            binding = subscription or subscription_for(body, subscriptions)
            events = from_camara(body, subscription=binding)
        except NetworkEventError as exc:
            raise BadRequest(str(exc)) from exc
        return accept(events, f"{body['source']}#{body['id']}", body)

    @blueprint.post("/events")
    def camara_shared() -> Response:
        return camara(None)

    @blueprint.post("/events/<name>")
    def camara_named(name: str) -> Response:
        binding = subscriptions.get(name)
        if binding is None:
            _authenticate(credential)  # never reveal which subscriptions exist to strangers
            raise NotFound(
                f"no CAMARA subscription {name!r}; declared: "
                + (", ".join(sorted(subscriptions)) or "none")
            )
        return camara(binding)

    @blueprint.post("/events/3gpp/nwdaf")
    def nwdaf() -> Response:
        _authenticate(credential)
        body = _json_body()
        try:
            events = from_nwdaf(body, sites=sites or {}, thresholds=thresholds)
        except NetworkEventError as exc:
            raise BadRequest(str(exc)) from exc
        # NWDAF notifications carry no id: an identical body is the same notification.
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return accept(events, f"nwdaf:{body['subscriptionId']}#{digest}", body)

    @blueprint.post("/events/3gpp/moi")
    def moi() -> Response:
        _authenticate(credential)
        body = _json_body()
        try:
            events = from_moi_creation(body)
        except NetworkEventError as exc:
            raise BadRequest(str(exc)) from exc
        # TS 28.532: notificationId identifies a notification of the system named by systemDN.
        return accept(events, f"{body['systemDN']}#{body['notificationId']}", body)

    return blueprint


def _authenticate(credential: str | None) -> None:
    if credential is None:
        raise Unavailable(
            "the network events sink is disabled: set its credential (TOLLGATE_CAMARA_TOKEN)"
        )
    token = bearer_token()
    if token is None:
        raise Unauthorized("network notifications need 'Authorization: Bearer <access token>'")
    if not hmac.compare_digest(token.encode(), credential.encode()):
        raise Unauthorized("wrong bearer token for the network events sink")


def _json_body() -> Any:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body
