"""The ``x-tollgate-*`` HTTP headers: every name, spelled once, and the hold a request carries.

Three conversations use them: an application's hints to the ingress; the ingress's call to an
infer function (which hold the request is billed to) and infer's answer (cold start, engine time);
the ingress's answer to the application (where it ran, why, and what it cost). Header names are
case-insensitive on the wire; these are the lower-case forms we send and look up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pydantic import TypeAdapter, ValidationError

from events.fields import AccountId, HoldId, Name

# Application -> ingress: the request's hints (router_fn/hints.py parses them).
LATENCY_BUDGET_MS: Final = "x-tollgate-latency-budget-ms"
RESIDENCY: Final = "x-tollgate-residency"
TIER: Final = "x-tollgate-tier"  # a pin on the way in; where it ran on the way out and to infer

# Ingress -> infer: the hold the request is billed to (BilledHold below).
HOLD_ID: Final = "x-tollgate-hold-id"
ACCOUNT_ID: Final = "x-tollgate-account-id"
CLUSTER: Final = "x-tollgate-cluster"

# Infer -> ingress -> application.
COLD_START_MS: Final = "x-tollgate-cold-start-ms"
# Engine time of a whole response: what per-second plans are charged for.
ENGINE_MS: Final = "x-tollgate-engine-ms"
# A whole response's time from infer's arrival to its first token (queue, load and prefill
# included), and from the engine starting on it to its first token (prefill): the router
# learns prefill from it and the ingress accounts the client's time to first token by it.
TTFT_MS: Final = "x-tollgate-ttft-ms"
PREFILL_MS: Final = "x-tollgate-prefill-ms"

# Ingress -> application (with TIER, CLUSTER, HOLD_ID and COLD_START_MS).
ROUTE_REASON: Final = "x-tollgate-route-reason"
EMULATED_RTT_MS: Final = "x-tollgate-emulated-rtt-ms"  # `tollgate up` only
CREDITS_CHARGED: Final = "x-tollgate-credits-charged"
CREDITS_LEFT: Final = "x-tollgate-credits-left"
REQUEST_ID: Final = "x-request-id"


class BadHold(ValueError):
    """Hold headers the settlement events could not carry: refused before any work is done."""


_CHECKS: Final[dict[str, TypeAdapter[str]]] = {
    HOLD_ID: TypeAdapter(HoldId),
    ACCOUNT_ID: TypeAdapter(AccountId),
    TIER: TypeAdapter(Name),
    CLUSTER: TypeAdapter(Name),
}


@dataclass(frozen=True)
class BilledHold:
    """The hold an inference request is billed to: the ingress sends it, infer meters against it
    (``inference.completed`` / ``failed`` name it)."""

    hold_id: str
    account_id: str
    tier: str
    cluster: str

    def headers(self) -> dict[str, str]:
        return {
            HOLD_ID: self.hold_id,
            ACCOUNT_ID: self.account_id,
            TIER: self.tier,
            CLUSTER: self.cluster,
        }

    @classmethod
    def from_headers(
        cls, headers: Mapping[str, str], *, tier: str, cluster: str
    ) -> BilledHold | None:
        """None when the request carries no hold; ``headers`` keyed in lower case; ``tier`` and
        ``cluster`` (the receiver's own) stand in for the ones not sent."""
        given = {name: headers.get(name, "").strip() for name in _CHECKS}
        if not given[HOLD_ID]:
            return None
        if not given[ACCOUNT_ID]:
            raise BadHold(f"{HOLD_ID} needs {ACCOUNT_ID}")
        given[TIER] = given[TIER] or tier
        given[CLUSTER] = given[CLUSTER] or cluster
        for name, check in _CHECKS.items():
            try:
                check.validate_python(given[name])
            except ValidationError as exc:
                raise BadHold(f"{name}: {exc.errors()[0]['msg']}") from None
        return cls(given[HOLD_ID], given[ACCOUNT_ID], given[TIER], given[CLUSTER])
