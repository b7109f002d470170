"""The router's live view as JSON, for `GET /tiers` and `tollgate up`: each cluster from the
topology with each model's health, load and warm/cold, and any degradation with its cause and
expiry. Unknown (never probed, or stale) reads as null, never as healthy or idle."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from router_fn.tierstate import ClusterState, Endpoint
from router_fn.topology import Topology


def tiers_view(topology: Topology, live: Mapping[str, ClusterState]) -> list[dict[str, Any]]:
    view = []
    for cluster in topology.clusters:
        state = live.get(cluster.name, ClusterState(cluster.name))
        view.append(
            {
                "cluster": cluster.name,
                "tier": cluster.tier,
                "jurisdiction": cluster.jurisdiction,
                "rtt_ms": cluster.rtt_ms,
                "emulated": cluster.emulated,
                "degraded": [
                    {
                        "cause": d.cause,
                        "source": d.source,
                        "since": _iso(d.since),
                        "until": _iso(d.until),
                    }
                    for d in state.degradations
                ],
                "models": {
                    model: _endpoint(state.endpoint(model)) for model in sorted(cluster.infer_urls)
                },
            }
        )
    return view


def _endpoint(endpoint: Endpoint) -> dict[str, Any]:
    health, load, cold, served = endpoint.health, endpoint.load, endpoint.cold, endpoint.served
    return {
        "healthy": None if health is None else health.healthy,
        "health_since": None if health is None else _iso(health.since),
        "health_detail": None if health is None else health.detail,
        "warm": None if load is None else load.warm,
        "queue_depth": None if load is None else load.queue_depth,
        "running": None if load is None else load.running,
        "replicas": None if load is None else load.replicas,
        "cold_start_ms": None if load is None else load.cold_start_ms,
        "load_updated_at": None if load is None else _iso(load.updated_at),
        # What the router learned: the cold-start estimate it routes by (a high percentile of
        # the measured loads listed), when it last answered, its prefill speed.
        "cold_start_estimate_ms": None if cold is None else cold.estimate_ms,
        "cold_starts_measured_ms": None if cold is None else list(cold.samples),
        "last_served_at": None if served is None else _iso(served.at),
        "prefill_tokens_per_s": None if served is None else served.prefill_tokens_per_s,
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
