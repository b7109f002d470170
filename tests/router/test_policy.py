"""The route policy: every feasibility rule with its reason, every hint, the ranking, the
predictions, degradation, failover exclusion, determinism and impossible requests."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.openai import DEFAULT_MAX_TOKENS
from router_fn.policy import (
    AllFull,
    Decision,
    NoRoute,
    RouteRequest,
    decide,
    reason_header,
    size,
)
from router_fn.tierstate import ClusterState, Load
from router_fn.topology import PlanSpec, Topology
from tests.router.helpers import (
    BIG,
    CLUSTERS,
    MID,
    PLANS,
    QUOTES,
    SMALL,
    all_warm,
    cluster,
    load,
    quote,
    state,
    topology,
)

TOPO = topology()


def route(
    request: RouteRequest,
    live: Mapping[str, ClusterState] | None = None,
    plan: str | None = None,
    topo: Topology = TOPO,
) -> Decision:
    return decide(request, topo, all_warm() if live is None else live, _plan(plan))


def _plan(name: str | None) -> PlanSpec | None:
    return None if name is None else PLANS[name]


def order(decision: Decision) -> list[str]:
    return [decision.cluster, *(c.cluster for c in decision.alternatives)]


def no_route(
    request: RouteRequest, live: Mapping[str, ClusterState] | None = None, plan: str | None = None
) -> NoRoute:
    with pytest.raises(NoRoute) as caught:
        route(request, live, plan)
    return caught.value


# -- feasibility: each rule rejects with its reason ---------------------------------------------


def test_a_cluster_that_does_not_host_the_model_is_rejected() -> None:
    d = route(RouteRequest(BIG), all_warm(model="big"))
    assert d.rejected == {"edge-a": "does not host big", "edge-b": "does not host big"}


def test_a_model_above_the_tier_size_limit_is_rejected() -> None:
    topo = topology([cluster("edge-x", "edge", "FR", 5, 13 * 10**9, ["big"]), *CLUSTERS])
    live = all_warm(state("edge-x", "big", load_=load()), model="big")
    d = route(RouteRequest(BIG), live, topo=topo)
    assert d.rejected["edge-x"] == "big (70B) exceeds tier edge's 13B limit"


def test_the_plan_limits_tiers_models_and_size() -> None:
    d = route(RouteRequest(SMALL), plan="bundle")
    assert d.rejected["cloud"] == "plan bundle does not include tier cloud"
    e = no_route(RouteRequest(MID), all_warm(model="mid"), plan="small-only")
    assert e.rejected["regional"] == "plan small-only does not include mid"
    assert e.rejected["cloud"] == "does not host mid"
    assert not e.retryable
    f = no_route(RouteRequest(BIG), all_warm(model="big"), plan="seconds")
    assert f.rejected["edge-a"] == "does not host big"
    assert f.rejected["regional"] == "plan seconds does not include tier regional"


def test_plan_size_limit() -> None:
    plan = PlanSpec("tiny", max_parameters=10**9)
    with pytest.raises(NoRoute) as caught:
        decide(RouteRequest(MID), TOPO, all_warm(model="mid"), plan)
    assert caught.value.rejected["edge-a"] == "plan tiny allows models up to 1B"


def test_residency_of_the_plan() -> None:
    d = route(RouteRequest(SMALL, latency_budget_ms=1000), plan="bundle")
    assert "cloud" in d.rejected  # by the plan's tiers first
    free = PlanSpec("fr-only", residency=frozenset({"FR"}))
    d = decide(RouteRequest(SMALL), TOPO, all_warm(), free)
    assert d.rejected == {"cloud": "residency: DE not in FR"}
    assert "residency FR" in d.reasons


def test_residency_hint_alone_and_intersected_with_the_plan() -> None:
    d = route(RouteRequest(SMALL, residency=frozenset({"DE"})))
    assert d.cluster == "cloud" and d.alternatives == ()
    assert d.rejected["edge-a"] == "residency: FR not in DE"
    free = PlanSpec("fr-only", residency=frozenset({"FR"}))
    # A hint narrows the plan (FR,DE ∩ FR = FR) and can never widen it.
    d = decide(RouteRequest(SMALL, residency=frozenset({"FR", "DE"})), TOPO, all_warm(), free)
    assert d.rejected == {"cloud": "residency: DE not in FR"}
    with pytest.raises(NoRoute) as caught:
        decide(RouteRequest(SMALL, residency=frozenset({"DE"})), TOPO, all_warm(), free)
    assert caught.value.rejected["cloud"] == "residency: DE not in nowhere (hint and plan disjoint)"
    assert not caught.value.retryable


def test_a_prompt_beyond_the_context_is_impossible() -> None:
    e = no_route(RouteRequest(SMALL, prompt_tokens=9000))
    assert set(e.rejected.values()) == {"prompt of 9000 tokens exceeds context 8192"}
    assert not e.retryable


def test_a_tier_without_a_price_is_rejected() -> None:
    quotes = {k: v for k, v in QUOTES.items() if k != ("small", "cloud")}
    d = route(RouteRequest(SMALL), topo=topology(quotes=quotes))
    assert d.rejected == {"cloud": "no price for small on tier cloud"}


def test_unhealthy_is_rejected_with_the_probe_detail_and_unknown_health_is_not() -> None:
    live = all_warm(
        state("regional", healthy=False, detail="3 probes failed"),
        state("cloud", load_=load(), healthy=None),
    )
    d = route(RouteRequest(SMALL), live)
    assert d.rejected == {"regional": "unhealthy: 3 probes failed"}
    assert d.cluster == "cloud"


def test_all_unhealthy_are_tried_anyway_and_exhausted_failover_is_retryable() -> None:
    live = {c.name: state(c.name, healthy=False) for c in CLUSTERS}
    # Probes can lag a restart: with every feasible cluster probed unhealthy, route anyway
    # (panic routing) rather than refuse; the reason says so.
    d = route(RouteRequest(SMALL), live)
    assert d.rejected == {}
    assert "every feasible cluster probed unhealthy: trying them anyway" in d.reasons
    tried = {d.cluster}
    while d.alternatives:
        d = route(RouteRequest(SMALL, exclude=frozenset(tried)), live)
        tried.add(d.cluster)
    assert tried == {c.name for c in CLUSTERS}
    e = no_route(RouteRequest(SMALL, exclude=frozenset(tried)), live)
    assert e.retryable
    assert set(e.rejected.values()) == {"excluded: already failed for this request"}
    assert "no feasible cluster for small" in str(e)


def test_unhealthy_clusters_are_not_tried_while_a_healthy_one_is_feasible() -> None:
    live = all_warm(*(state(c.name, healthy=False) for c in CLUSTERS if c.name != "cloud"))
    d = route(RouteRequest(SMALL, latency_budget_ms=30), live)
    assert d.cluster == "cloud" and d.alternatives == ()
    assert "every feasible cluster probed unhealthy: trying them anyway" not in d.reasons


def test_excluded_clusters_are_skipped_for_failover() -> None:
    first = route(RouteRequest(SMALL, latency_budget_ms=30))
    again = route(RouteRequest(SMALL, latency_budget_ms=30, exclude=frozenset({first.cluster})))
    assert again.rejected[first.cluster] == "excluded: already failed for this request"
    assert order(again) == order(first)[1:]
    everything = frozenset(c.name for c in CLUSTERS)
    e = no_route(RouteRequest(SMALL, exclude=everything))
    assert e.retryable


def test_pinned_tier() -> None:
    d = route(RouteRequest(SMALL, tier="edge"))
    assert order(d) == ["edge-a", "edge-b"]
    assert d.rejected["cloud"] == "not in pinned tier edge"
    assert "pinned to tier edge" in d.reasons
    assert not no_route(RouteRequest(SMALL, tier="orbit")).retryable
    assert not no_route(RouteRequest(SMALL, tier="cloud"), plan="bundle").retryable


# -- ranking ---------------------------------------------------------------------------------


def test_within_budget_the_cheapest_wins_then_the_fastest() -> None:
    d = route(RouteRequest(SMALL, latency_budget_ms=30))
    # regional (28 ms) is cheaper than both edges; the edges tie on price, edge-a is nearer;
    # cloud misses the budget and comes last.
    assert order(d) == ["regional", "edge-a", "edge-b", "cloud"]
    assert d.reasons[0] == "regional: meets 30 ms budget (predicted 28 ms), cheapest"
    assert d.predicted_ms == 28 and d.budget_ms == 30
    assert [c.meets_budget for c in d.alternatives] == [True, True, False]


def test_the_plan_sets_the_default_budget_and_a_hint_overrides_it() -> None:
    assert route(RouteRequest(SMALL), plan="bundle").cluster == "regional"
    d = route(RouteRequest(SMALL, latency_budget_ms=10), plan="bundle")
    assert d.cluster == "edge-a" and d.budget_ms == 10
    assert d.reasons[0] == "edge-a: meets 10 ms budget (predicted 8 ms), only one in budget"


def test_when_nothing_meets_the_budget_the_fastest_wins() -> None:
    d = route(RouteRequest(SMALL, latency_budget_ms=5))
    assert order(d) == ["edge-a", "edge-b", "regional", "cloud"]
    assert d.reasons[0] == "edge-a: fastest (predicted 8 ms), none meets 5 ms budget"


def test_without_a_budget_the_cheapest_wins() -> None:
    d = route(RouteRequest(SMALL))
    assert order(d) == ["cloud", "regional", "edge-a", "edge-b"]
    assert d.reasons[0] == "cloud: no latency budget (predicted 180 ms), cheapest"
    assert d.url == "http://cloud.test/small" and d.tier == "cloud"


def test_price_weighs_this_requests_prompt_and_completion() -> None:
    quotes = dict(QUOTES)
    quotes[("small", "edge")] = quote(10, 100)  # cheap input, dear output
    quotes[("small", "regional")] = quote(50, 50)
    topo = topology(quotes=quotes)
    live = all_warm(state("cloud", healthy=False))
    prompt_heavy = RouteRequest(SMALL, prompt_tokens=8000, max_tokens=10)
    output_heavy = RouteRequest(SMALL, prompt_tokens=10, max_tokens=8000)
    assert route(prompt_heavy, live, topo=topo).cluster == "edge-a"
    assert route(output_heavy, live, topo=topo).cluster == "regional"


def test_per_second_plans_compare_engine_second_rates() -> None:
    plan = PlanSpec("secs", per_engine_second=True)
    d = decide(RouteRequest(MID), TOPO, all_warm(model="mid"), plan)
    assert d.cluster == "regional"  # 25 per engine second against the edge's 40
    assert [c.price for c in (d.chosen, *d.alternatives)] == [25, 40, 40]


# -- predictions -----------------------------------------------------------------------------


def test_queue_wait_is_the_requests_ahead_drained_by_the_busy_slots() -> None:
    request = RouteRequest(SMALL, latency_budget_ms=5)
    d = route(request, all_warm(state("edge-a", load_=load(3, running=1))))
    # No max_tokens: the default the ingress would price (4096) at the default 40 tokens/s;
    # one slot busy, three queued ahead: this request starts after four service times.
    assert _predicted(d, "edge-a") == 8 + 4 * (DEFAULT_MAX_TOKENS * 1000 // 40)
    observed = all_warm(state("edge-a", load_=load(4, running=2, tps=100.0)))
    d = route(RouteRequest(SMALL, latency_budget_ms=5, max_tokens=50), observed)
    assert _predicted(d, "edge-a") == 8 + 5 * 500 // 2  # 50 tokens at 100 tokens/s, 2 slots


def test_a_busy_edge_loses_to_a_free_one() -> None:
    d = route(RouteRequest(SMALL, latency_budget_ms=20), all_warm(state("edge-a", load_=load(2))))
    assert d.cluster == "edge-b"


def test_cold_start_from_this_cluster_then_elsewhere_then_the_default() -> None:
    request = RouteRequest(SMALL, latency_budget_ms=5)
    own = all_warm(state("edge-a", load_=load(warm=False, cold_start_ms=1500)))
    assert _predicted(route(request, own), "edge-a") == 8 + 1500
    seen_elsewhere = all_warm(
        state("edge-a", load_=load(warm=False)),
        state("cloud", load_=load(cold_start_ms=3000)),
        state("edge-b", load_=load(cold_start_ms=900)),
    )
    assert _predicted(route(request, seen_elsewhere), "edge-a") == 8 + 3000
    never = all_warm(state("edge-a", load_=load(warm=False)))
    assert _predicted(route(request, never), "edge-a") == 8 + 2000 + 540  # 2 s + 4 s per 1B


def test_unknown_load_is_assumed_cold_not_idle() -> None:
    live = {c.name: state(c.name, load_=None) for c in CLUSTERS}
    d = route(RouteRequest(SMALL, latency_budget_ms=30), live)
    assert d.cluster == "edge-a" and d.predicted_ms == 8 + 2540
    assert "edge-a: load unknown, assumed cold" in d.reasons
    # No state at all (never probed): the same, and health unknown does not exclude.
    assert route(RouteRequest(SMALL, latency_budget_ms=30), {}).cluster == "edge-a"


def test_a_warm_cluster_beats_a_cold_nearer_one() -> None:
    live = all_warm(state("edge-a", load_=load(warm=False, cold_start_ms=1500)))
    assert route(RouteRequest(SMALL, latency_budget_ms=20), live).cluster == "edge-b"


def _predicted(decision: Decision, name: str) -> int:
    return next(
        c for c in (decision.chosen, *decision.alternatives) if c.cluster == name
    ).predicted_ms


# -- degradation -----------------------------------------------------------------------------


def test_a_degraded_cluster_is_avoided_for_latency_critical_requests() -> None:
    live = all_warm(state("regional", load_=load(), degraded="packet delay budget not met"))
    d = route(RouteRequest(SMALL, latency_budget_ms=30), live)
    assert order(d) == ["edge-a", "edge-b", "cloud", "regional"]
    assert "avoided degraded regional: packet delay budget not met" in d.reasons
    assert d.alternatives[-1].degraded


def test_a_degraded_cluster_stays_usable_without_a_budget() -> None:
    live = all_warm(state("cloud", load_=load(), degraded="congestion"))
    d = route(RouteRequest(SMALL), live)
    assert d.cluster == "cloud"
    assert "used degraded cloud: congestion" in d.reasons


def test_a_degraded_cluster_is_used_when_it_is_the_only_one() -> None:
    live = all_warm(state("edge-a", load_=load(), degraded="cell down"))
    d = route(
        RouteRequest(SMALL, latency_budget_ms=15, tier="edge", exclude=frozenset({"edge-b"})), live
    )
    assert d.cluster == "edge-a"
    assert "used degraded edge-a: cell down" in d.reasons


# -- determinism and explanation -------------------------------------------------------------


def test_same_inputs_same_decision_whatever_the_order() -> None:
    request = RouteRequest(SMALL, latency_budget_ms=30, prompt_tokens=100)
    expected = route(request)
    shuffled = list(CLUSTERS)
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert route(request, topo=topology(shuffled)) == expected


def test_exact_ties_are_broken_by_name() -> None:
    twins = [cluster(n, "edge", "FR", 8, None, ["small"]) for n in ("edge-z", "edge-m")]
    live = {n: state(n, load_=load()) for n in ("edge-z", "edge-m")}
    d = route(RouteRequest(SMALL, latency_budget_ms=30), live, topo=topology(twins))
    assert order(d) == ["edge-m", "edge-z"]
    assert (
        d.reasons[0]
        == "edge-m: meets 30 ms budget (predicted 8 ms), cheapest, fastest at that price"
    )


def test_reason_header_is_short_ascii_and_names_the_choice() -> None:
    live = all_warm(
        state("regional", healthy=False, detail="réseau indisponible " + "x" * 400),
        state("edge-b", load_=load(), degraded="cellule\r\ndégradée"),
    )
    d = route(RouteRequest(SMALL, latency_budget_ms=30), live)
    header = reason_header(d)
    assert header.startswith("edge-a: meets 30 ms budget (predicted 8 ms)")
    assert header.isascii() and len(header) < 300
    assert "\r" not in header and "\n" not in header
    assert header.endswith("...")


def test_size_is_written_as_the_template_does() -> None:
    assert [size(n) for n in (135 * 10**6, 8 * 10**9, 13 * 10**9, 1_500_000_000)] == [
        "135M",
        "8B",
        "13B",
        "1.5B",
    ]


# -- properties over arbitrary live state ----------------------------------------------------

endpoint_states = st.builds(
    lambda q, running, warm, cold, tps, healthy, degraded: (
        load(q, running=running, warm=warm, cold_start_ms=cold, tps=tps),
        healthy,
        degraded,
    ),
    st.integers(0, 20),
    st.integers(0, 8),
    st.booleans(),
    st.none() | st.integers(100, 60_000),
    st.none() | st.floats(1, 500),
    st.none() | st.booleans(),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    states=st.lists(endpoint_states, min_size=4, max_size=4),
    budget=st.none() | st.integers(1, 5000),
    plan=st.sampled_from([None, *PLANS]),
    prompt=st.integers(0, 9000),
)
def test_every_decision_is_consistent(
    states: list[tuple[Load, bool | None, bool]], budget: int | None, plan: str | None, prompt: int
) -> None:
    live = {
        c.name: state(c.name, load_=lo, healthy=h, degraded="x" if dg else None)
        for c, (lo, h, dg) in zip(CLUSTERS, states, strict=True)
    }
    request = RouteRequest(SMALL, latency_budget_ms=budget, prompt_tokens=prompt)
    try:
        d = route(request, live, plan)
    except NoRoute as exc:
        assert set(exc.rejected) == {c.name for c in CLUSTERS}
        return
    except AllFull as exc:
        assert all(wait > exc.max_wait_ms for wait in exc.waits.values())
        assert 1 <= exc.retry_after_s <= 60
        return
    assert route(request, dict(reversed(live.items())), plan) == d  # deterministic
    ranked = (d.chosen, *d.alternatives)
    assert [c.full for c in ranked] == sorted(c.full for c in ranked)  # full ones last
    assert {c.cluster for c in ranked} | set(d.rejected) == {c.name for c in CLUSTERS}
    assert not {c.cluster for c in ranked} & set(d.rejected)
    if d.budget_ms is not None and any(c.meets_budget and not c.degraded for c in ranked):
        assert d.chosen.meets_budget and not d.chosen.degraded
    if d.budget_ms is None:
        assert d.chosen.price == min(c.price for c in ranked if not c.full)
    assert reason_header(d).isascii() and len(reason_header(d)) < 300
