"""The router's live view for the tiers page, read from the ingress's ``GET /tiers``.

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


def read_tiers(ingress_url: str | None, admin_token: str) -> TiersView:
    if not ingress_url:
        return TiersView(error="no ingress URL configured (TOLLGATE_INGRESS_URL)")
    try:
        answer = requests.get(
            ingress_url.rstrip("/") + "/tiers",
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=TIMEOUT_S,
        )
    except requests.RequestException as exc:
        reason = exc.__class__.__name__
        return TiersView(error=f"the ingress at {ingress_url} did not answer ({reason})")
    if answer.status_code != 200:
        return TiersView(error=f"the ingress answered {answer.status_code}: {answer.text[:200]}")
    try:
        clusters = answer.json()["clusters"]
    except (ValueError, KeyError, TypeError):
        return TiersView(error="the ingress's /tiers answer is not the router's view")
    return TiersView(clusters=list(clusters))
