"""Warm ahead of demand: which (cluster, model) must be loaded now, and the demand behind it.

Kept warm, and woken by the warm-keeper's tick (``io.tollgate.tiers.warm.v1``, every minute, well
inside infer's scale-down delay, so a warm-up per tick keeps a Knative revision at one replica
and an idle one scales to zero once nothing asks for it):
- **plans with a latency target**, while the plan has had traffic on a model within
  ``warming.idle_s``: every cluster that would meet the target once warm, as the route policy
  itself judges it (feasibility, residency, health: ``policy.decide`` over a view where every
  endpoint is warm);
- **booked slices**, from ``slice_lead_s`` before their service time starts until it ends: the
  sites whose area intersects the slice's service area (CAMARA Area), for the models the bound
  account's plan may use (every model those sites host when it names none);
- a **degraded** site is not kept warm: its warmth moves to the next site (the nearest one of the
  same tier hosting the model for a slice; the fastest feasible one for a plan).

Store layout (partition ``WARMTH``): ``DEMAND#<plan>#<model>`` {at}; ``SLICE#<slice id>``
{clusters, models, start, end}. Slice items expire a day after their end."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from events.camara import Area
from functions.store import Item, Store, query_all, update_item
from router_fn.policy import Candidate, NoRoute, RouteRequest, decide
from router_fn.tierstate import ClusterState, Endpoint, Load
from router_fn.topology import ClusterSpec, Site, Topology

PK = "WARMTH"
DEMAND = "DEMAND#"
SLICE = "SLICE#"
EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True, slots=True)
class SliceWindow:
    slice_id: str
    clusters: tuple[str, ...]
    models: tuple[str, ...]
    start: float
    end: float | None


@dataclass(frozen=True, slots=True)
class Target:
    cluster: str
    model: str
    why: str


class Warmth:
    """The demand the warm-keeper reads, in the store every router instance shares."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def record_demand(self, plan: str, model: str, at: float) -> None:
        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            return {"at": max(at, data["at"]) if data else at}

        update_item(self.store, PK, f"{DEMAND}{plan}#{model}", change)

    def book_slice(self, window: SliceWindow) -> None:
        """Record (or replace: a booking announced again) a slice's warm window."""
        data = {
            "clusters": list(window.clusters),
            "models": list(window.models),
            "start": window.start,
            "end": window.end,
        }
        expires = None if window.end is None else int(window.end) + 86_400
        self.store.put(Item(PK, f"{SLICE}{window.slice_id}", 1, data, expires_at=expires))

    def read(self) -> tuple[dict[tuple[str, str], float], list[SliceWindow]]:
        """Plan demand ((plan, model) -> last traffic) and every slice window not yet over."""
        demand: dict[tuple[str, str], float] = {}
        slices: list[SliceWindow] = []
        now = self.clock()
        for item in query_all(self.store, PK):
            if item.sk.startswith(DEMAND):
                plan, _, model = item.sk.removeprefix(DEMAND).partition("#")
                demand[(plan, model)] = item.data["at"]
            elif item.sk.startswith(SLICE):
                d = item.data
                if d["end"] is None or d["end"] > now:
                    slices.append(
                        SliceWindow(
                            item.sk.removeprefix(SLICE),
                            tuple(d["clusters"]),
                            tuple(d["models"]),
                            d["start"],
                            d["end"],
                        )
                    )
        return demand, slices


def targets(
    topology: Topology,
    live: Mapping[str, ClusterState],
    demand: Mapping[tuple[str, str], float],
    slices: Iterable[SliceWindow],
    now: float,
) -> list[Target]:
    """What must be warm at ``now``, each (cluster, model) once, with why."""
    found: dict[tuple[str, str], str] = {}
    for (plan_name, model_name), at in sorted(demand.items()):
        plan = topology.plans.get(plan_name)
        model = topology.models.get(model_name)
        if plan is None or model is None or plan.latency_target_ms is None:
            continue
        if now - at > topology.warming.idle_s:
            continue
        why = f"plan {plan_name} ({plan.latency_target_ms} ms target) has traffic"
        for cluster in _meeting(topology, live, plan_name, model_name, plan.latency_target_ms):
            found.setdefault((cluster, model_name), why)
    for window in slices:
        if not window.start - topology.warming.slice_lead_s <= now:
            continue
        for cluster_name in window.clusters:
            for model_name in window.models:
                site = _next_site(topology, live, cluster_name, model_name)
                if site is None:
                    continue
                why = f"slice {window.slice_id} books {cluster_name}"
                if site != cluster_name:
                    why += f" (degraded: moved to {site})"
                found.setdefault((site, model_name), why)
    return [Target(c, m, why) for (c, m), why in sorted(found.items())]


def _meeting(
    topology: Topology,
    live: Mapping[str, ClusterState],
    plan_name: str,
    model_name: str,
    target_ms: int,
) -> list[str]:
    """The clusters that meet the plan's target once warm (not degraded); if a degraded one
    would have, the fastest feasible non-degraded cluster besides them takes its place."""
    request = RouteRequest(topology.models[model_name], latency_budget_ms=target_ms)
    try:
        decision = decide(request, topology, _all_warm(topology, live), topology.plans[plan_name])
    except NoRoute:
        return []
    ranked: list[Candidate] = [decision.chosen, *decision.alternatives]
    meeting = [c.cluster for c in ranked if c.meets_budget and not c.degraded]
    if any(c.meets_budget and c.degraded for c in ranked):
        spare = [c for c in ranked if not c.degraded and c.cluster not in meeting]
        if spare:
            meeting.append(min(spare, key=lambda c: (c.predicted_ms, c.cluster)).cluster)
    return meeting


def _all_warm(topology: Topology, live: Mapping[str, ClusterState]) -> dict[str, ClusterState]:
    """The live view as it would be with every endpoint loaded and idle (health and
    degradations as they are): which clusters *could* meet a target."""
    idle = Load(queue_depth=0, running=0, warm=True, cold_start_ms=None, updated_at=0.0)
    view = {}
    for cluster in topology.clusters:
        state = live.get(cluster.name, ClusterState(cluster.name))
        endpoints = {
            model: replace(state.endpoint(model), load=idle) for model in cluster.infer_urls
        }
        view[cluster.name] = replace(state, endpoints=endpoints)
    return view


def _next_site(
    topology: Topology, live: Mapping[str, ClusterState], cluster_name: str, model: str
) -> str | None:
    """The cluster itself unless degraded; else the nearest non-degraded site of its tier that
    hosts the model (None if there is none)."""
    home = topology.cluster(cluster_name)
    if not _degraded(live, cluster_name):
        return cluster_name if home.hosts(model) else None
    others = [
        c
        for c in topology.clusters
        if c.name != cluster_name
        and c.tier == home.tier
        and c.hosts(model)
        and not _degraded(live, c.name)
        and _healthy(live.get(c.name, ClusterState(c.name)).endpoint(model))
    ]
    if not others:
        return None
    return min(others, key=lambda c: (_distance_km(home, c), c.name)).name


def _degraded(live: Mapping[str, ClusterState], cluster: str) -> bool:
    state = live.get(cluster)
    return state is not None and bool(state.degradations)


def _healthy(endpoint: Endpoint) -> bool:
    return endpoint.health is None or endpoint.health.healthy


def _distance_km(a: ClusterSpec, b: ClusterSpec) -> float:
    if a.site is None or b.site is None:
        return math.inf
    return haversine_km(a.site.latitude, a.site.longitude, b.site.latitude, b.site.longitude)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def sites_serving(topology: Topology, area: Mapping[str, Any]) -> list[str]:
    """The clusters whose site intersects a CAMARA Area: a circle as given; a polygon as its
    bounding circle (centroid of its points, out to the farthest point), which may include a
    site just outside the polygon but never misses one inside it."""
    parsed = Area.model_validate(area)
    if parsed.areaType == "CIRCLE":
        assert parsed.center is not None and parsed.radius is not None
        centre, radius_km = (parsed.center.latitude, parsed.center.longitude), parsed.radius / 1000
    else:
        assert parsed.boundary is not None
        points = [(p.latitude, p.longitude) for p in parsed.boundary]
        centre = (
            sum(p[0] for p in points) / len(points),
            sum(p[1] for p in points) / len(points),
        )
        radius_km = max(haversine_km(*centre, *p) for p in points)
    return [
        c.name
        for c in topology.clusters
        if c.site is not None and _intersects(c.site, centre, radius_km)
    ]


def _intersects(site: Site, centre: tuple[float, float], radius_km: float) -> bool:
    return haversine_km(site.latitude, site.longitude, *centre) <= site.radius_km + radius_km
