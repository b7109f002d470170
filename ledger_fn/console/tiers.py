"""The router's live view for the tiers page, read from the route function's ``GET /tiers``
(cluster-local on Knative, loopback under ``tollgate up``: nothing public serves it).

Why over HTTP rather than from the store: tier state's items belong to router_fn, whose policy
decides what they mean (staleness, what counts as healthy, learned cold starts), and whose shape
is still growing; ``/tiers`` is the router's own published reading of them, so the console shows
exactly what the router routes on, including what it adds later, without a second reader of its
items. The ledger never imports the router (ARCHITECTURE.md): they talk HTTP, as here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests

TIMEOUT_S = 3.0


@dataclass(frozen=True)
class TiersView:
    clusters: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # why the view could not be read

    def by_tier(self) -> dict[str, list[dict[str, Any]]]:
        """Clusters grouped by tier, nearest tier first (by RTT), sites by name within it."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for cluster in sorted(self.clusters, key=lambda c: (c.get("rtt_ms", 0), c["cluster"])):
            groups.setdefault(str(cluster.get("tier")), []).append(cluster)
        return groups


def read_tiers(route_url: str | None) -> TiersView:
    if not route_url:
        return TiersView(error="no route function URL configured (TOLLGATE_TIERS_URL)")
    try:
        answer = requests.get(route_url.rstrip("/") + "/tiers", timeout=TIMEOUT_S)
    except requests.RequestException as exc:
        reason = exc.__class__.__name__
        return TiersView(error=f"the route function at {route_url} did not answer ({reason})")
    if answer.status_code != 200:
        return TiersView(
            error=f"the route function answered {answer.status_code}: {answer.text[:200]}"
        )
    try:
        clusters = answer.json()["clusters"]
    except (ValueError, KeyError, TypeError):
        return TiersView(error="the route function's /tiers answer is not the router's view")
    return TiersView(clusters=list(clusters))
