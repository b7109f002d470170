"""Who, on another of the platform's clusters, sent a request to a home ingress endpoint: its
bearer is a service-account token of that cluster, checked against the cluster's issuer (template
``clusters[].serviceAccountIssuer``, found by OIDC discovery) for the endpoint's audience. Used by
the cluster-events endpoint (remote infer's metering) and the ledger relay (site ingresses)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from functions.auth.oidc import Identity, TokenVerifier
from functions.auth.policy import SenderPolicy
from functions.auth.senders import bearer
from functions.cloudevent import Incoming, parse_http
from functions.errors import Unauthorized


@dataclass(frozen=True)
class RemoteIssuer:
    verifier: TokenVerifier
    clusters: frozenset[str]


def remote_sender(
    issuers: Sequence[RemoteIssuer], headers: Mapping[str, str], path: str, audience: str
) -> tuple[Identity, RemoteIssuer]:
    """The sender's identity and the issuer that vouched for it; Unauthorized (401) otherwise."""
    token = bearer(headers)
    if token is None:
        raise Unauthorized(
            f"{path} needs 'Authorization: Bearer <service-account token>' of one of the "
            f"platform's clusters, for audience {audience!r}"
        )
    problems = []
    for issuer in issuers:
        try:
            return issuer.verifier.verify(token), issuer
        except Unauthorized as exc:
            problems.append(exc.message)
    raise Unauthorized("no cluster's issuer vouches for this token: " + "; ".join(problems))


def remote_event(
    issuers: Sequence[RemoteIssuer],
    policy: SenderPolicy,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
) -> tuple[Identity, RemoteIssuer, Incoming]:
    """A remote cluster's CloudEvent, once its sender is known (401) and ``policy`` lets that
    sender send it (403); nothing is read of it before."""
    identity, issuer = remote_sender(issuers, headers, path, policy.audience)
    event = parse_http(headers, body)
    policy.check(identity.subject, event.attributes())
    return identity, issuer, event
