"""The local autoscaler's decisions, as Knative's KPA makes them: pure functions of the observed
in-flight requests, the ready replicas and the clock."""

from __future__ import annotations

import dataclasses

import pytest

from infra.local.autoscaler import Autoscaler, ScalingSpec

# A small CPU service: 4 per replica (target 2.8 at 70 %), 0..2 replicas, a 1 min delay.
SMOL = ScalingSpec(concurrency=4, min_scale=0, max_scale=2, scale_down_delay_s=60)
BIG = ScalingSpec(concurrency=10, max_scale=20)  # target 7


def steady(scaler: Autoscaler, concurrency: float, start: float, end: float) -> None:
    """``concurrency`` requests in flight from ``start`` to ``end``, observed each second."""
    t = start
    while t < end:
        scaler.observe(t + 1, 1.0, concurrency)
        t += 1


def test_the_target_is_containerconcurrency_at_seventy_percent() -> None:
    assert SMOL.target == pytest.approx(2.8)
    assert SMOL.panic_window_s == 6.0


def test_a_request_waiting_with_no_replica_activates_one_at_once() -> None:
    scaler = Autoscaler(SMOL)
    assert scaler.decide(0.0, ready=0).desired == 0  # nothing observed, nothing wanted
    assert scaler.decide(0.1, ready=0, activating=True).desired == 1
    # The first instants of a request are enough too: any concurrency wants one replica.
    scaler.observe(0.2, 0.1, 0.01)
    assert scaler.decide(0.2, ready=0).desired == 1


def test_stable_load_wants_ceil_concurrency_over_target() -> None:
    scaler = Autoscaler(BIG)
    steady(scaler, 20.0, 0, 60)  # 20 in flight for a minute, target 7 per replica
    decision = scaler.decide(60.0, ready=3)
    assert (decision.desired, decision.panicking) == (3, False)
    assert decision.stable_concurrency == pytest.approx(20.0)


def test_a_burst_panics_and_follows_the_panic_window() -> None:
    scaler = Autoscaler(BIG)
    steady(scaler, 7.0, 0, 60)  # one replica's worth for a minute
    assert scaler.decide(60.0, ready=1).desired == 1
    steady(scaler, 70.0, 60, 63)  # then 70 for 3 s: the 6 s panic window averages 38.5
    decision = scaler.decide(63.0, ready=1)
    assert decision.panicking and decision.desired == 6  # ceil(38.5 / 7); stable says 2
    assert decision.panic_concurrency == pytest.approx(38.5)


def test_no_scale_down_while_panicking_then_calm_after_a_stable_window() -> None:
    scaler = Autoscaler(BIG)
    steady(scaler, 70.0, 0, 6)
    assert scaler.decide(6.0, ready=1).desired == 10  # panic: 70 / 7
    steady(scaler, 7.0, 6, 30)  # the burst is over, the panic window calms at once...
    decision = scaler.decide(30.0, ready=10)
    assert decision.panicking and decision.desired == 10  # ...but panic keeps the peak
    steady(scaler, 7.0, 30, 67)  # a stable window after the last threshold crossing (t=6)
    decision = scaler.decide(67.0, ready=10)
    assert not decision.panicking
    assert decision.desired == 5  # the stable want (1), limited to halving per decision


def test_scale_up_and_down_rates_bound_one_decision() -> None:
    fast = ScalingSpec(concurrency=1, max_scale=10_000, max_scale_up_rate=2.0, target_utilization=1)
    scaler = Autoscaler(fast)
    steady(scaler, 100.0, 0, 60)
    assert scaler.decide(60.0, ready=3).desired == 6  # at most 2x the ready replicas
    calm = Autoscaler(BIG)
    steady(calm, 0.0, 0, 60)
    assert calm.decide(60.0, ready=9).desired == 4  # at most half of them go


def test_max_and_min_scale_bound_the_decision() -> None:
    scaler = Autoscaler(SMOL)
    steady(scaler, 40.0, 0, 60)
    assert scaler.decide(60.0, ready=2).desired == 2  # maxScale
    warm = Autoscaler(ScalingSpec(concurrency=4, min_scale=1, max_scale=3))
    steady(warm, 0.0, 0, 120)
    assert warm.decide(120.0, ready=1).desired == 1  # minScale keeps one


def test_the_scale_down_delay_keeps_the_highest_recent_want() -> None:
    delayed = Autoscaler(SMOL)
    prompt = Autoscaler(dataclasses.replace(SMOL, scale_down_delay_s=0))
    wants: dict[int, tuple[int, int]] = {}
    for t in range(1, 240):  # two replicas' worth for a minute, then idle; a decision a second
        for scaler in (delayed, prompt):
            scaler.observe(float(t), 1.0, 5.6 if t <= 60 else 0.0)
        wants[t] = (delayed.decide(float(t), ready=2).desired, prompt.decide(float(t), 2).desired)
    last_two = max(t for t, (_, now) in wants.items() if now == 2)
    first_below = min(t for t, (kept, _) in wants.items() if t > 60 and kept < 2)
    assert last_two > 60  # the stable window remembers the load for a while
    assert first_below == last_two + 60  # then the delay holds two replicas a minute more


def test_the_last_replica_goes_only_after_the_grace_period() -> None:
    spec = ScalingSpec(concurrency=4, max_scale=2, scale_to_zero_grace_s=30)
    scaler = Autoscaler(spec)
    steady(scaler, 1.0, 0, 10)
    assert scaler.decide(10.0, ready=1).desired == 1
    steady(scaler, 0.0, 10, 71)  # the stable window holds nothing any more
    assert scaler.decide(71.0, ready=1).desired == 1  # wants zero, grace starts
    assert scaler.decide(100.0, ready=1).desired == 1
    assert scaler.decide(101.0, ready=1).desired == 0  # 30 s of wanting zero
    # A request in between restarts the grace.
    again = Autoscaler(spec)
    steady(again, 0.0, 0, 60)
    assert again.decide(60.0, ready=1).desired == 1
    again.observe(61.0, 1.0, 0.5)
    assert again.decide(61.0, ready=1).desired == 1
    steady(again, 0.0, 61, 122)
    assert again.decide(122.0, ready=1).desired == 1
    assert again.decide(151.0, ready=1).desired == 1
    assert again.decide(152.0, ready=1).desired == 0


def test_a_new_revision_averages_over_the_data_it_has() -> None:
    scaler = Autoscaler(BIG)
    scaler.observe(0.5, 0.5, 7.0)  # half a second at 14 in flight
    decision = scaler.decide(0.5, ready=0)
    assert decision.stable_concurrency == pytest.approx(14.0)
    assert decision.desired == 2
