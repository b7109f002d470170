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
from typing import Any, Literal

from flask import Blueprint, Response, g, request

from events.activity import NetworkEventRecord, PublishedEvent, clip
from events.adapter import Mapped, NetworkEventError
from events.camara import SubscriptionBinding, from_camara, subscription_for
from events.threegpp import DEFAULT_THRESHOLDS, Thresholds, from_moi_creation, from_nwdaf
from functions.errors import BadRequest, NotFound, Unauthorized, Unavailable
from functions.http import bearer_token
from functions.idempotency import Idempotency
from functions.recent import RecentLog

Handle = Callable[[list[Mapped], str], None]
Outcome = Literal["published", "duplicate", "ignored", "refused"]


def network_events_blueprint(
    handle: Handle,
    *,
    credential: str | None,
    subscriptions: Mapping[str, SubscriptionBinding],
    idempotency: Idempotency | None = None,
    sites: Mapping[str, str] | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    recent: RecentLog | None = None,
) -> Blueprint:
    """``credential``: the bearer token every sender presents (CAMARA sinkCredential ACCESSTOKEN);
    ``subscriptions``: the template's CAMARA subscriptions by name; ``sites``: NWDAF location
    keys to cluster names (see events.threegpp); ``recent``: where what each authenticated
    notification did is kept for ops."""
    blueprint = Blueprint("network_events", __name__)

    def accept(events: list[Mapped], key: str, body: Any) -> Response:
        handled: list[bool] = []

        def publish() -> None:
            handle(events, key)
            handled.append(True)

        if events:
            if idempotency is None:
                publish()
            else:
                idempotency.run(key, body, publish)
        g.network_events = (events, bool(handled) or not events)
        return Response(status=204)

    if recent is not None:
        blueprint.after_request(_remember(recent))

    def camara(subscription: SubscriptionBinding | None) -> Response:
        _authenticate(credential)
        body = _json_body()
        _seen(str(body.get("type", "CAMARA notification")), body.get("id"))
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
        _seen("3GPP NWDAF analytics", body.get("subscriptionId"))
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
        _seen("3GPP MOI creation", body.get("notificationId"))
        try:
            events = from_moi_creation(body)
        except NetworkEventError as exc:
            raise BadRequest(str(exc)) from exc
        # TS 28.532: notificationId identifies a notification of the system named by systemDN.
        return accept(events, f"{body['systemDN']}#{body['notificationId']}", body)

    return blueprint


def _seen(kind: str, notification_id: Any) -> None:
    g.network_kind = (kind, None if notification_id is None else str(notification_id))


def _remember(recent: RecentLog) -> Callable[[Response], Response]:
    """After each request: what the notification did, unless its sender was not who it must
    be (a stranger's requests must not push real ones out of the bounded log)."""

    def remember(response: Response) -> Response:
        kind = g.get("network_kind")
        if kind is None:  # refused before its sender was authenticated
            return response
        events, fresh = g.get("network_events", ((), True))
        outcome: Outcome
        if response.status_code >= 400:
            outcome, detail = "refused", _error_message(response)
        elif not events:
            outcome, detail = "ignored", "nothing in it for Tollgate"
        elif not fresh:
            outcome, detail = "duplicate", "a replay of a notification already published"
        else:
            outcome, detail = "published", ""
        record = NetworkEventRecord(
            path=clip(request.path, 200),
            kind=clip(kind[0], 200),
            notification_id=None if kind[1] is None else clip(kind[1], 300),
            status=response.status_code,
            outcome=outcome,
            detail=clip(detail),
            events=tuple(
                PublishedEvent(type=e.type, subject=e.subject, data=e.data) for e in events[:16]
            ),
        )
        recent.add(record.model_dump(mode="json"))
        return response

    return remember


def _error_message(response: Response) -> str:
    body: Any = response.get_json(silent=True)
    try:
        return str(body["error"]["message"])
    except (TypeError, KeyError):
        return response.status


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
    _seen("notification", None)  # its sender is known: what it does is worth keeping


def _json_body() -> Any:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body
