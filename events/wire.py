"""The ``x-tollgate-*`` HTTP headers: every name, spelled once.

Three conversations use them: an application's hints to the ingress; the ingress's call to an
infer function (the attempt's signed capability, events/capability.py) and infer's answer (cold
start, engine time); the ingress's answer to the application (where it ran, why, and what it
cost). Header names are case-insensitive on the wire; these are the lower-case forms we send and
look up."""

from __future__ import annotations

from typing import Final

# Application -> ingress: the request's hints (router_fn/hints.py parses them).
LATENCY_BUDGET_MS: Final = "x-tollgate-latency-budget-ms"
RESIDENCY: Final = "x-tollgate-residency"
TIER: Final = "x-tollgate-tier"  # a pin on the way in; where it ran on the way out

# Ingress -> infer: the capability of this attempt (hold, account, bounds, deadline, cluster).
CAPABILITY: Final = "x-tollgate-capability"

# Infer -> ingress -> application.
COLD_START_MS: Final = "x-tollgate-cold-start-ms"
# Engine time of a whole response: what per-second plans are charged for.
ENGINE_MS: Final = "x-tollgate-engine-ms"
# A whole response's time from infer's arrival to its first token (queue, load and prefill
# included), and from the engine starting on it to its first token (prefill): the router
# learns prefill from it and the ingress accounts the client's time to first token by it.
TTFT_MS: Final = "x-tollgate-ttft-ms"
PREFILL_MS: Final = "x-tollgate-prefill-ms"

# Ingress -> application (with TIER and COLD_START_MS).
HOLD_ID: Final = "x-tollgate-hold-id"
CLUSTER: Final = "x-tollgate-cluster"
ROUTE_REASON: Final = "x-tollgate-route-reason"
EMULATED_RTT_MS: Final = "x-tollgate-emulated-rtt-ms"  # `tollgate up` only
CREDITS_CHARGED: Final = "x-tollgate-credits-charged"
CREDITS_LEFT: Final = "x-tollgate-credits-left"
REQUEST_ID: Final = "x-request-id"
