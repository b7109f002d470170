"""The check every function runs on ``POST /``: who sent this (401 if unknown), and may they send
this event here (403 if not). Configured from the environment, as Knative gives it:

- ``TOLLGATE_OIDC_DISCOVERY_URL``: the issuer's discovery base (Knative: the API server,
  ``https://kubernetes.default.svc``; ``tollgate up``: its own issuer);
- ``TOLLGATE_OIDC_CA_FILE`` / ``TOLLGATE_OIDC_TOKEN_FILE``: how to reach it (the pod's CA and
  service-account token);
- ``TOLLGATE_AUDIENCE``: this function's audience (what its senders' tokens must be issued for);
- ``TOLLGATE_TRUST``: the trust file (every sink's EventPolicies; functions/auth/policy.py).

There is no way to switch it off: a function without them does not start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from functions.auth.oidc import Discovery, Identity, TokenVerifier
from functions.auth.policy import SenderPolicy, Trust

DISCOVERY_ENV = "TOLLGATE_OIDC_DISCOVERY_URL"
CA_FILE_ENV = "TOLLGATE_OIDC_CA_FILE"
DISCOVERY_TOKEN_ENV = "TOLLGATE_OIDC_TOKEN_FILE"
AUDIENCE_ENV = "TOLLGATE_AUDIENCE"
TRUST_ENV = "TOLLGATE_TRUST"


class NotConfigured(RuntimeError):
    """A function started without what it needs to tell who sends it events."""


def bearer(headers: Mapping[str, str]) -> str | None:
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass(frozen=True)
class Senders:
    """A sink's sender check: the token verifier for its audience and its policy."""

    verifier: TokenVerifier
    policy: SenderPolicy

    @property
    def audience(self) -> str:
        return self.verifier.audience

    def authenticate(self, headers: Mapping[str, str]) -> Identity:
        return self.verifier.verify(bearer(headers))

    def authorize(self, identity: Identity, attributes: Mapping[str, str]) -> None:
        self.policy.check(identity.subject, attributes)

    @classmethod
    def for_audience(cls, discovery: Discovery, trust: Trust, audience: str) -> Senders:
        return cls(TokenVerifier(discovery, audience), trust.policy(audience))


def discovery_from_env(environ: Mapping[str, str] | None = None) -> Discovery:
    env = os.environ if environ is None else environ
    base = env.get(DISCOVERY_ENV)
    if not base:
        raise NotConfigured(
            f"{DISCOVERY_ENV} is not set: every function verifies who sends it events "
            "(Knative: https://kubernetes.default.svc; tollgate up sets it)"
        )
    return Discovery(
        base, ca_file=env.get(CA_FILE_ENV) or None, token_file=env.get(DISCOVERY_TOKEN_ENV) or None
    )


def trust_from_env(environ: Mapping[str, str] | None = None) -> Trust:
    env = os.environ if environ is None else environ
    path = env.get(TRUST_ENV)
    if not path:
        raise NotConfigured(f"{TRUST_ENV} is not set: the trust file (event policies) is needed")
    return Trust.load(path)


def senders_from_env(environ: Mapping[str, str] | None = None) -> Senders:
    env = os.environ if environ is None else environ
    audience = env.get(AUDIENCE_ENV)
    if not audience:
        raise NotConfigured(f"{AUDIENCE_ENV} is not set: a function must know its own audience")
    return Senders.for_audience(discovery_from_env(env), trust_from_env(env), audience)
