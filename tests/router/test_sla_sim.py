"""The short version of bench/sla.py: the real policy, tier-state model and warm-keeper against
the baselines on a small seeded day. Behaviour, never timings."""

from __future__ import annotations

from bench.sla import same_requests_cost, simulate


def test_tollgate_meets_feasible_budgets_without_paying_more_than_cost_only() -> None:
    outcomes = {o.name: o for o in simulate(1500, seed=3)}
    ours = outcomes["tollgate"]
    assert ours.feasible > 300
    assert ours.met_share >= 0.99, ours.met_share
    for name, other in outcomes.items():
        if name != "tollgate":
            assert ours.met_share > other.met_share, name
    mine, theirs = same_requests_cost(ours, outcomes["cost-only"])
    assert mine <= theirs
    assert ours.p99("critical") <= 20
    assert ours.credits <= min(o.credits for o in outcomes.values())


def test_the_simulation_is_deterministic_for_a_seed() -> None:
    first = [(o.name, o.met, o.cost, o.cold_starts) for o in simulate(400, seed=11)]
    again = [(o.name, o.met, o.cost, o.cold_starts) for o in simulate(400, seed=11)]
    assert first == again
