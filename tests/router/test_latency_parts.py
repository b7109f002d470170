"""The latency promise's parts: learned cold starts, the wake decision (no trap), fresh evidence
of warmth, roaming narrowing, the warm-keeper's targets, slice areas, network events acting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.network import QosChanged, RoamingChanged, ServiceTime, SliceBooked
from functions.accounts import bind_devices, bind_slices, roaming_countries
from functions.store import Item, Store
from router_fn.network_acts import NetworkActs
from router_fn.policy import RouteRequest, decide, reason_header
from router_fn.tierstate import COLD_SAMPLES, ColdStarts, Endpoint, Served, TierStates
from router_fn.topology import PlanSpec, Site, Topology, Warming
from router_fn.warmth import SliceWindow, Warmth, sites_serving, targets
from tests.clock import START, Clock
from tests.router.helpers import CLUSTERS, PLANS, QUOTES, SMALL, all_warm, load, state, topology


def test_the_estimate_is_a_high_percentile_of_the_window() -> None:
    assert ColdStarts((300,)).estimate_ms == 300
    samples = tuple(range(100, 1100, 100))  # 100..1000
    assert ColdStarts(samples).estimate_ms == 900  # nearest-rank p90


def test_measured_cold_starts_are_a_bounded_window_shared_through_the_store(
    sqlite_store: Store,
) -> None:
    clock = Clock()
    states = TierStates(sqlite_store, clock, cache_s=0)
    states.record_cold_starts("edge-a", "small", [310, 290])
    other = TierStates(sqlite_store, clock, cache_s=0)  # another ingress replica
    assert other.snapshot()["edge-a"].endpoint("small").cold == ColdStarts((310, 290))
    states.record_cold_starts("edge-a", "small", list(range(COLD_SAMPLES + 4)))
    assert len(other.snapshot()["edge-a"].endpoint("small").cold.samples) == COLD_SAMPLES  # type: ignore[union-attr]
    clock.advance(8 * 86_400)  # a week later the old loads no longer count
    assert other.snapshot()["edge-a"].endpoint("small").cold is None


def test_the_trap_is_gone_a_cold_edge_is_woken_while_a_warm_tier_serves() -> None:
    # The run: the cloud warm (it served the first, budget-less request), the edges
    # cold. Before: cloud for every budgeted request, the edge never warmed.
    live = all_warm(
        state("edge-a", load_=load(warm=False)),
        state("edge-b", load_=load(warm=False)),
        state("regional", load_=load(warm=False)),
    )
    live["edge-a"] = _with(live["edge-a"], cold=ColdStarts((317,)))
    decision = decide(RouteRequest(SMALL, latency_budget_ms=20), topology(), live, None)
    assert decision.cluster == "cloud"  # 180 ms now beats 8 + 317 ms
    assert [c.cluster for c in decision.wake] == ["edge-a"]
    assert decision.wake[0].cold_ms == 317
    assert (
        "edge-a cold (predicted 317 ms start): woken; served by cloud meanwhile"
        in reason_header(decision)
    )
    # Once it is warm, the budget is met at the edge and nothing is woken.
    live["edge-a"] = state("edge-a", load_=load())
    warm = decide(RouteRequest(SMALL, latency_budget_ms=20), topology(), live, None)
    assert (warm.cluster, warm.wake) == ("edge-a", ())


def test_no_budget_wakes_nothing_and_the_prior_beats_the_size_guess() -> None:
    live = all_warm(state("edge-a", load_=None), state("edge-b", load_=None))
    assert decide(RouteRequest(SMALL), topology(), live, None).wake == ()
    prior = SMALL.__class__(**{**SMALL.__dict__, "cold_start_ms": 350})
    decision = decide(RouteRequest(prior, latency_budget_ms=5), topology(), live, None)
    edge = next(c for c in (decision.chosen, *decision.alternatives) if c.cluster == "edge-a")
    assert edge.cold_ms == 350


def test_a_recent_answer_is_fresh_evidence_of_warmth_without_any_probe() -> None:
    model = SMALL.__class__(**{**SMALL.__dict__, "warm_for_s": 960})
    seen = Endpoint(None, None, None, Served(START, None, age_s=30))
    live = all_warm(_bare("edge-a", seen), model=model.name)
    decision = decide(RouteRequest(model, latency_budget_ms=20), topology(), live, None)
    assert (decision.cluster, decision.chosen.cold_ms) == ("edge-a", 0)
    stale = Endpoint(None, None, None, Served(START, None, age_s=2000))
    live = all_warm(_bare("edge-a", stale), model=model.name)
    decision = decide(RouteRequest(model, latency_budget_ms=20), topology(), live, None)
    assert decision.cluster == "edge-b"


def test_roaming_narrows_residency_and_nowhere_is_not_anywhere() -> None:
    live = all_warm()
    roaming_de = RouteRequest(SMALL, roaming=frozenset({"DE"}))
    assert decide(roaming_de, topology(), live, None).cluster == "cloud"  # the only DE site
    nowhere = RouteRequest(SMALL, roaming=frozenset())
    with pytest.raises(Exception, match="residency"):
        decide(nowhere, topology(), live, None)
    topo = Topology(
        CLUSTERS, topology().models, QUOTES, PLANS, roaming_allow={"DE": frozenset({"DE", "FR"})}
    )
    assert topo.roaming_jurisdictions(frozenset({"DE"})) == {"DE", "FR"}
    assert topo.roaming_jurisdictions(frozenset({"US"})) == {"US"}
    assert topo.roaming_jurisdictions(frozenset({"DE", "US"})) == frozenset()


def test_the_warm_keeper_keeps_a_plans_sites_warm_while_it_has_traffic() -> None:
    live = all_warm()
    topo = topology()
    demand = {("bundle", "small"): START - 60}
    kept = {(t.cluster, t.model) for t in targets(topo, live, demand, [], START)}
    # The bundle's 30 ms target: both edges and the regional site meet it once warm.
    assert kept == {("edge-a", "small"), ("edge-b", "small"), ("regional", "small")}
    idle = targets(topo, live, demand, [], START + topo.warming.idle_s + 120)
    assert idle == []
    tight = Topology(
        CLUSTERS,
        topo.models,
        QUOTES,
        {"edge15": PlanSpec("edge15", latency_target_ms=15)},
        Warming(900, 600),
    )
    sites = {t.cluster for t in targets(tight, live, {("edge15", "small"): START}, [], START)}
    assert sites == {"edge-a", "edge-b"}
    # A degraded site's warmth moves on: the fastest feasible one besides.
    degraded = all_warm(state("edge-a", load_=load(), degraded="packet delay"))
    moved = targets(tight, degraded, {("edge15", "small"): START}, [], START)
    assert {t.cluster for t in moved} == {"edge-b", "regional"}


def test_a_slice_warms_its_sites_from_the_lead_to_the_end_and_moves_when_degraded() -> None:
    topo = _sited()
    window = SliceWindow("s1", ("edge-a",), ("small",), START + 1200, START + 7200)
    live = all_warm()
    assert targets(topo, live, {}, [window], START) == []  # not yet: lead is 600 s
    warm = targets(topo, live, {}, [window], START + 700)
    assert [(t.cluster, t.model) for t in warm] == [("edge-a", "small")]
    degraded = all_warm(state("edge-a", load_=load(), degraded="cell congested"))
    moved = targets(topo, degraded, {}, [window], START + 700)
    assert [t.cluster for t in moved] == ["edge-b"]
    assert "moved to edge-b" in moved[0].why


def test_service_areas_match_the_sites_they_intersect() -> None:
    topo = _sited()
    lyon = {"areaType": "CIRCLE", "center": {"latitude": 45.76, "longitude": 4.84}, "radius": 5000}
    assert sites_serving(topo, lyon) == ["edge-a", "regional"]
    square = {
        "areaType": "POLYGON",
        "boundary": [
            {"latitude": 43.2, "longitude": 5.3},
            {"latitude": 43.4, "longitude": 5.3},
            {"latitude": 43.4, "longitude": 5.5},
            {"latitude": 43.2, "longitude": 5.5},
        ],
    }
    assert sites_serving(topo, square) == ["edge-b"]  # Paris is 660 km away: 600 km radius


def test_network_events_act_on_slices_qos_and_roaming(sqlite_store: Store) -> None:
    clock = Clock()
    states = TierStates(sqlite_store, clock, cache_s=0)
    warmth = Warmth(sqlite_store, clock)
    acts = NetworkActs(_sited(), sqlite_store, states, warmth, degradation_s=600)
    # A slice booked in Lyon for an account on a plan: a warm window on the Lyon edge.
    sqlite_store.put(Item("ACCT#ent", "META", 1, {"plan": "small-only"}))
    bind_slices(sqlite_store, "ent", ["slice-1"])
    start = datetime.fromtimestamp(START + 3600, UTC)
    booked = SliceBooked(
        slice_id="slice-1",
        service_time=ServiceTime(start=start, end=start + timedelta(hours=2)),
        service_area={
            "areaType": "CIRCLE",
            "center": {"latitude": 45.76, "longitude": 4.84},
            "radius": 2000,
        },
        source_event="test",
    )
    window = acts.slice_booked(booked)
    assert window is not None and (window.clusters, window.models) == (("edge-a",), ("small",))
    assert warmth.read()[1] == [window]
    # QoD: a session unavailable degrades its site; available again restores it.
    lost = QosChanged(
        session_id="q1",
        available=False,
        info="NETWORK_TERMINATED",
        cluster="edge-b",
        source_event="t",
    )
    acts.qos_changed(lost)
    cause = states.snapshot()["edge-b"].degraded
    assert cause is not None and cause.cause == "QoD session q1 unavailable (NETWORK_TERMINATED)"
    acts.qos_changed(
        QosChanged(session_id="q1", available=True, cluster="edge-b", source_event="t")
    )
    assert not states.snapshot()["edge-b"].degradations
    # Roaming: a bound device abroad narrows its account; back home lifts it.
    bind_devices(sqlite_store, "ent", ["+33612345678"])
    device: dict[str, Any] = {"phoneNumber": "+33612345678"}
    abroad = RoamingChanged(device=device, roaming=True, countries=["DE"], source_event="t")
    assert acts.roaming_changed(abroad) == "ent"
    assert roaming_countries(sqlite_store, "ent") == frozenset({"DE"})
    home = RoamingChanged(device=device, roaming=False, source_event="t")
    acts.roaming_changed(home)
    assert roaming_countries(sqlite_store, "ent") is None
    stranger = RoamingChanged(
        device={"phoneNumber": "+4915112345678"}, roaming=True, countries=["US"], source_event="t"
    )
    assert acts.roaming_changed(stranger) is None


def _sited() -> Topology:
    sites = {
        "edge-a": Site(45.764, 4.8357, 40),
        "edge-b": Site(43.2965, 5.3698, 40),
        "regional": Site(48.8566, 2.3522, 600),
        "cloud": Site(50.1109, 8.6821, 200),
    }
    clusters = tuple(c.__class__(**{**c.__dict__, "site": sites[c.name]}) for c in CLUSTERS)
    return Topology(clusters, topology().models, QUOTES, PLANS, Warming(900, 600))


def _with(cluster_state: Any, *, cold: ColdStarts) -> Any:
    endpoint = cluster_state.endpoint("small")
    return cluster_state.__class__(
        cluster_state.name,
        {"small": Endpoint(endpoint.health, endpoint.load, cold, endpoint.served)},
        cluster_state.degradations,
    )


def _bare(name: str, endpoint: Endpoint) -> Any:
    return state(name).__class__(name, {"small": endpoint}, ())
