"""The home ingress's cluster-events endpoint: how infer on the platform's other clusters reports
usage once the home broker is cluster-local.

``POST /events/clusters`` takes a CloudEvent whose bearer is a service-account token of another
cluster, checked against that cluster's issuer (template ``clusters[].serviceAccountIssuer``, found
by OIDC discovery) for this endpoint's audience; the sink's event policy says who may send what
(infer, its metering events; a site ingress, the stand-in metering of a stream it relayed), and
the event must be about a cluster that issuer speaks for (a stand-in excepted: a site ingress
routes to every cluster, and settle checks the capability it names for that cluster); a batch of
infer's reports (``inference.usage``) must be about such clusters in every report. Then
it is published to the home broker unchanged (same source and id, so a redelivery is deduped
there) under the ingress's own identity. Answers 202; 401 unknown sender; 403 not allowed; 400
malformed. Settle and refund still check the event's capability."""

from __future__ import annotations

from collections.abc import Sequence

from flask import Blueprint, Response, request

from events.ledger import InferenceUsage
from events.types import INFERENCE_USAGE
from functions.auth.policy import SenderPolicy
from functions.cloudevent import Incoming
from functions.emit import Emitter
from functions.errors import Forbidden
from functions.validation import validate
from router_fn.remote_senders import RemoteIssuer, remote_event

PATH = "/events/clusters"


def cluster_events_blueprint(
    issuers: Sequence[RemoteIssuer], policy: SenderPolicy, emitter: Emitter
) -> Blueprint:
    blueprint = Blueprint("cluster_events", __name__)

    @blueprint.post(PATH)
    def receive() -> Response:
        identity, issuer, event = remote_event(
            issuers, policy, PATH, dict(request.headers), request.get_data()
        )
        for cluster in _clusters(event):
            if cluster not in issuer.clusters:
                raise Forbidden(
                    f"{identity.subject} of {identity.issuer} speaks for "
                    f"{', '.join(sorted(issuer.clusters))}, not for cluster {cluster!r}"
                )
        emitter.emit(event.type, event.source, event.data, id=event.id, subject=event.subject)
        return Response(status=202)

    return blueprint


def _clusters(event: Incoming) -> set[object]:
    """The clusters an event reports about (none for a stand-in: see the module's doc)."""
    if event.type == INFERENCE_USAGE:
        batch = validate(InferenceUsage, event.data, f"{event.type} data")
        return {report.data.cluster for report in batch.reports}
    if event.data.get("stand_in") is True:
        return set()
    return {event.data.get("cluster")}
