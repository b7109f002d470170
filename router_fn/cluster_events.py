"""The home ingress's cluster-events endpoint: how infer on the platform's other clusters reports
usage once the home broker is cluster-local.

``POST /events/clusters`` takes a CloudEvent whose bearer is a service-account token of another
cluster, checked against that cluster's issuer (template ``clusters[].serviceAccountIssuer``, found
by OIDC discovery) for this endpoint's audience; the sink's event policy says who may send what
(infer, its metering events; a site ingress, the stand-in metering of a stream it relayed), and
the event must be about a cluster that issuer speaks for (a stand-in excepted: a site ingress
routes to every cluster, and settle checks the capability it names for that cluster). Then
it is published to the home broker unchanged (same source and id, so a redelivery is deduped
there) under the ingress's own identity. Answers 202; 401 unknown sender; 403 not allowed; 400
malformed. Settle and refund still check the event's capability."""

from __future__ import annotations

from collections.abc import Sequence

from flask import Blueprint, Response, request

from functions.auth.policy import SenderPolicy
from functions.cloudevent import parse_http
from functions.emit import Emitter
from functions.errors import Forbidden
from router_fn.remote_senders import RemoteIssuer, remote_sender

PATH = "/events/clusters"


def cluster_events_blueprint(
    issuers: Sequence[RemoteIssuer], policy: SenderPolicy, emitter: Emitter
) -> Blueprint:
    blueprint = Blueprint("cluster_events", __name__)

    @blueprint.post(PATH)
    def receive() -> Response:
        headers = dict(request.headers)
        identity, issuer = remote_sender(issuers, headers, PATH, policy.audience)
        event = parse_http(headers, request.get_data())
        policy.check(identity.subject, event.attributes())
        cluster = event.data.get("cluster")
        if cluster not in issuer.clusters and event.data.get("stand_in") is not True:
            raise Forbidden(
                f"{identity.subject} of {identity.issuer} speaks for "
                f"{', '.join(sorted(issuer.clusters))}, not for cluster {cluster!r}"
            )
        emitter.emit(event.type, event.source, event.data, id=event.id, subject=event.subject)
        return Response(status=202)

    return blueprint
