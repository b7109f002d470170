"""A small hand-built topology shaped like the template's, and builders of live state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from events.quote import Quote
from router_fn.tierstate import ClusterState, Degradation, Endpoint, Health, Load
from router_fn.topology import ClusterSpec, ModelSpec, PlanSpec, Topology
from tests.clock import START

B = 10**9
SMALL = ModelSpec("small", "Small-135M", 135 * 10**6, 8192)
MID = ModelSpec("mid", "org/Mid-8B", 8 * B, 16384)
BIG = ModelSpec("big", "org/Big-70B", 70 * B, 32768)


def cluster(
    name: str,
    tier: str,
    jurisdiction: str,
    rtt_ms: int,
    max_parameters: int | None,
    models: Iterable[str],
) -> ClusterSpec:
    urls = {m: f"http://{name}.test/{m}" for m in models}
    return ClusterSpec(name, tier, jurisdiction, rtt_ms, max_parameters, urls)


def quote(input_rate: int, output_rate: int, per_second: int = 1) -> Quote:
    return Quote(
        price_book="test",
        input_per_million=input_rate,
        output_per_million=output_rate,
        per_engine_second=per_second,
    )


CLUSTERS = (
    cluster("edge-a", "edge", "FR", 8, 13 * B, ["small", "mid"]),
    cluster("edge-b", "edge", "FR", 11, 13 * B, ["small", "mid"]),
    cluster("regional", "regional", "FR", 28, 70 * B, ["small", "mid", "big"]),
    cluster("cloud", "cloud", "DE", 180, None, ["small", "big"]),
)
QUOTES = {
    ("small", "edge"): quote(60, 120, 2),
    ("small", "regional"): quote(40, 80, 1),
    ("small", "cloud"): quote(30, 60, 1),
    ("mid", "edge"): quote(450, 900, 40),
    ("mid", "regional"): quote(300, 600, 25),
    ("big", "regional"): quote(1800, 3600, 180),
    ("big", "cloud"): quote(1200, 2400, 120),
}
PLANS = {
    "bundle": PlanSpec(
        "bundle",
        tiers=frozenset({"edge", "regional"}),
        latency_target_ms=30,
        residency=frozenset({"FR"}),
    ),
    "seconds": PlanSpec(
        "seconds",
        tiers=frozenset({"edge"}),
        latency_target_ms=15,
        max_parameters=13 * B,
        per_engine_second=True,
    ),
    "small-only": PlanSpec("small-only", models=frozenset({"small"})),
}


def topology(
    clusters: Iterable[ClusterSpec] = CLUSTERS,
    quotes: Mapping[tuple[str, str], Quote] = QUOTES,
) -> Topology:
    models = {m.name: m for m in (SMALL, MID, BIG)}
    return Topology(tuple(clusters), models, dict(quotes), PLANS)


def load(
    queue: int = 0,
    *,
    running: int = 0,
    warm: bool = True,
    cold_start_ms: int | None = None,
    tps: float | None = None,
    replicas: int | None = None,
) -> Load:
    return Load(queue, running, warm, cold_start_ms, START, tps, replicas)


def state(
    name: str,
    model: str = "small",
    *,
    load_: Load | None = None,
    healthy: bool | None = True,
    detail: str = "",
    degraded: str | None = None,
) -> ClusterState:
    health = None if healthy is None else Health(healthy, START, START, detail)
    degradations: tuple[Degradation, ...] = ()
    if degraded is not None:
        degradations = (Degradation("/camara/quality", degraded, START, START + 600),)
    return ClusterState(name, {model: Endpoint(health, load_)}, degradations)


def all_warm(*changed: ClusterState, model: str = "small") -> dict[str, ClusterState]:
    """Every cluster healthy, warm, with an empty queue, except the ones given."""
    live = {c.name: state(c.name, model, load_=load()) for c in CLUSTERS}
    live.update({s.name: s for s in changed})
    return live
