"""The capability of one inference attempt: what the ingress lets one infer call do, signed.

The ingress mints one per attempt, after the hold is authorized, and sends it to that cluster's
infer function in the ``x-tollgate-capability`` header (events/wire.py). It is a JWT (JWS compact,
Ed25519, the key named by ``kid``; RS256 from an RSA key made before is still accepted) whose
claims say:

- ``aud``: the cluster the attempt was routed to (infer refuses a capability for another);
- ``hold`` / ``acct``: the hold the attempt is billed to and its account (infer takes both from
  here, never from a header the caller could set);
- ``model``, ``tier``: what was priced;
- ``max_tokens`` / ``engine_ms``: the bounds the hold was priced for (infer refuses more tokens
  and stops generating at either bound);
- ``credits`` (lease attempts only): the most this attempt may capture from the lease it is
  billed to (its worst case at its quote); the ledger captures each request of a lease at most
  this, under the attempt's ``jti``;
- ``exp``: the deadline (infer refuses it after, and stops generating at it); ``jti``: the
  attempt (infer serves an attempt once).

Infer carries the capability in its ``inference.completed`` / ``failed`` event; settle and refund
accept such an event only for the hold, account and cluster the signature vouches for. The
ingress holds the private key; infer and the ledger hold only public keys (current and previous,
so a rotation never refuses a capability in flight)."""

from __future__ import annotations

import json
import time
from base64 import urlsafe_b64encode
from collections.abc import Collection, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey, RSAKey
from pydantic import Field, ValidationError

from events.fields import AccountId, EventData, HoldId, Name

# Ed25519 (RFC 9864's fully specified name): signing, once per attempt on the ingress's request
# path, costs a tenth of RS256's; a check a little more than RSA's (bench/trust.py).
# Keys made before (RSA) still sign RS256 until `tollgate keys rotate`, and both verify.
ALGORITHM = "Ed25519"
ALGORITHMS = {"OKP": ALGORITHM, "RSA": "RS256"}  # by the key's type
ISSUER = "tollgate-ingress"
LEEWAY_S = 2


class CapabilityError(ValueError):
    """A capability that does not allow what is asked; the message says why."""


class Capability(EventData):
    hold_id: HoldId
    account_id: AccountId
    model: str = Field(min_length=1, max_length=256)
    cluster: Name
    tier: Name
    max_tokens: int = Field(strict=True, ge=1)
    engine_ms: int = Field(strict=True, ge=1)
    deadline: int = Field(strict=True, ge=0)  # epoch seconds
    attempt: str = Field(min_length=1, max_length=256)
    credits: int | None = Field(default=None, strict=True, ge=1)  # set: a lease attempt

    def claims(self, issued_at: float) -> dict[str, Any]:
        lease = {} if self.credits is None else {"credits": self.credits}
        return {
            **lease,
            "iss": ISSUER,
            "aud": self.cluster,
            "iat": int(issued_at),
            "exp": self.deadline,
            "jti": self.attempt,
            "hold": self.hold_id,
            "acct": self.account_id,
            "model": self.model,
            "tier": self.tier,
            "max_tokens": self.max_tokens,
            "engine_ms": self.engine_ms,
        }

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Capability:
        try:
            return cls(
                hold_id=claims["hold"],
                account_id=claims["acct"],
                model=claims["model"],
                cluster=claims["aud"],
                tier=claims["tier"],
                max_tokens=claims["max_tokens"],
                engine_ms=claims["engine_ms"],
                deadline=claims["exp"],
                attempt=claims["jti"],
                credits=claims.get("credits"),
            )
        except (KeyError, ValidationError) as exc:
            raise CapabilityError(f"the capability's claims are incomplete: {exc}") from None


def sign(capability: Capability, key: OKPKey | RSAKey, issued_at: float | None = None) -> str:
    """The capability as a compact JWS signed by ``key`` (its ``kid`` in the header)."""
    now = time.time() if issued_at is None else issued_at
    algorithm = ALGORITHMS[key.key_type]
    header = {"alg": algorithm, "kid": key.kid}
    if isinstance(key, OKPKey):
        return _sign_ed25519(header, capability.claims(now), key)
    return jwt.encode(header, capability.claims(now), key, algorithms=[algorithm])


def _sign_ed25519(header: dict[str, Any], claims: dict[str, Any], key: OKPKey) -> str:
    """RFC 7515's compact serialization, signed by ``cryptography`` directly: once per attempt on
    the ingress's request path, where joserfc's encoding cost twice the signature itself
    (bench/gateway.py). joserfc still verifies it, as any JWS."""
    typed = {"typ": "JWT", **header}  # as joserfc's jwt.encode heads it
    signing_input = f"{_segment(typed)}.{_segment(claims)}".encode("ascii")
    private = key.private_key
    assert isinstance(private, Ed25519PrivateKey), "an OKP signing key is Ed25519"
    signature = urlsafe_b64encode(private.sign(signing_input)).rstrip(b"=")
    return f"{signing_input.decode('ascii')}.{signature.decode('ascii')}"


def _segment(data: dict[str, Any]) -> str:
    encoded = json.dumps(data, separators=(",", ":")).encode()
    return urlsafe_b64encode(encoded).rstrip(b"=").decode("ascii")


def verify(
    token: str,
    keys: KeySet,
    *,
    audience: str | Collection[str] | None,
    now: float | None = None,
    check_deadline: bool = True,
) -> Capability:
    """The capability ``token`` carries, if one of ``keys`` signed it for ``audience`` (None: any
    cluster) and, with ``check_deadline``, its deadline has not passed. The ledger checks a
    capability after the fact (a metering event may arrive late), so without the deadline."""
    try:
        decoded = jwt.decode(token, keys, algorithms=list(ALGORITHMS.values()))
    except JoseError as exc:
        raise CapabilityError(f"invalid capability: {exc.description or exc.error}") from None
    except ValueError as exc:  # joserfc raises it for a token of the wrong shape
        raise CapabilityError(f"not a capability: {exc}") from None
    claims = decoded.claims
    if claims.get("iss") != ISSUER:
        raise CapabilityError("the capability was not issued by a Tollgate ingress")
    if audience is not None:
        allowed = {audience} if isinstance(audience, str) else set(audience)
        if claims.get("aud") not in allowed:
            raise CapabilityError("the capability is for another cluster")
    capability = Capability.from_claims(claims)
    if check_deadline:
        moment = time.time() if now is None else now
        if capability.deadline + LEEWAY_S <= moment:
            raise CapabilityError("the capability's deadline has passed")
    return capability
