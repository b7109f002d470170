"""The home ingress's cluster-events endpoint: how infer on the platform's other clusters reports
usage once the home broker is cluster-local.

``POST /events/clusters`` takes a CloudEvent whose bearer is a service-account token of another
cluster, checked against that cluster's issuer (template ``clusters[].serviceAccountIssuer``, found
by OIDC discovery) for this endpoint's audience; the sink's event policy says who may send what
(infer, its metering events), and the event must be about a cluster that issuer speaks for. Then
it is published to the home broker unchanged (same source and id, so a redelivery is deduped
there) under the ingress's own identity. Answers 202; 401 unknown sender; 403 not allowed; 400
malformed. Settle and refund still check the event's capability."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flask import Blueprint, Response, request

from functions.auth.oidc import Identity, TokenVerifier
from functions.auth.policy import SenderPolicy
from functions.auth.senders import bearer
from functions.cloudevent import parse_http
from functions.emit import Emitter
from functions.errors import Forbidden, Unauthorized

PATH = "/events/clusters"


@dataclass(frozen=True)
class RemoteIssuer:
    verifier: TokenVerifier
    clusters: frozenset[str]


def cluster_events_blueprint(
    issuers: Sequence[RemoteIssuer], policy: SenderPolicy, emitter: Emitter
) -> Blueprint:
    blueprint = Blueprint("cluster_events", __name__)

    def sender(headers: Mapping[str, str]) -> tuple[Identity, RemoteIssuer]:
        token = bearer(headers)
        if token is None:
            raise Unauthorized(
                f"{PATH} needs 'Authorization: Bearer <service-account token>' of one of the "
                f"platform's clusters, for audience {policy.audience!r}"
            )
        problems = []
        for issuer in issuers:
            try:
                return issuer.verifier.verify(token), issuer
            except Unauthorized as exc:
                problems.append(exc.message)
        raise Unauthorized("no cluster's issuer vouches for this token: " + "; ".join(problems))

    @blueprint.post(PATH)
    def receive() -> Response:
        headers = dict(request.headers)
        identity, issuer = sender(headers)
        event = parse_http(headers, request.get_data())
        policy.check(identity.subject, event.attributes())
        cluster = event.data.get("cluster")
        if cluster not in issuer.clusters:
            raise Forbidden(
                f"{identity.subject} of {identity.issuer} speaks for "
                f"{', '.join(sorted(issuer.clusters))}, not for cluster {cluster!r}"
            )
        emitter.emit(event.type, event.source, event.data, id=event.id, subject=event.subject)
        return Response(status=202)

    return blueprint
