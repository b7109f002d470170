"""Work-conserving routing: the predicted wait for a slot from live load, replicas and the
model's concurrency; a cluster whose wait exceeds the plan's maximum is full, a dearer one that
can start the request sooner is chosen (and the reason says so), and when every one is full the
request is refused with a Retry-After. The ingress's own unseen requests count at once."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from router_fn.inflight import InFlightRequests
from router_fn.policy import AllFull, Decision, InFlight, RouteRequest, decide
from router_fn.tierstate import ClusterState, Load
from router_fn.topology import PlanSpec
from tests.clock import START
from tests.router.helpers import SMALL, all_warm, load, state, topology

TOPO = topology()
# Four requests per replica, up to two replicas per cluster (the template's smollm2 serving).
MODEL = dataclasses.replace(SMALL, concurrency=4, max_replicas=2)
# 40 tokens at the default 40 tokens/s: each request holds a slot for 1 s.
REQUEST = RouteRequest(MODEL, max_tokens=40)
SERVICE_MS = 1000
BATCH = PlanSpec("batch", max_queue_wait_ms=None)
STRICT = PlanSpec("strict", max_queue_wait_ms=0)


def busy(
    running: int, queue: int = 0, *, replicas: int | None = 1, cold_start_ms: int = 3000
) -> Load:
    return load(queue, running=running, replicas=replicas, cold_start_ms=cold_start_ms)


def route(
    live: dict[str, ClusterState],
    plan: PlanSpec | None = None,
    request: RouteRequest = REQUEST,
    in_flight: InFlight | None = None,
) -> Decision:
    return decide(request, TOPO, live, plan, in_flight=in_flight)


def wait_of(decision: Decision, cluster: str) -> int:
    ranked = (decision.chosen, *decision.alternatives)
    return next(c.queue_wait_ms for c in ranked if c.cluster == cluster)


def test_a_free_slot_means_no_wait_and_the_cheapest_serves() -> None:
    d = route(all_warm(state("cloud", load_=busy(3))))
    assert d.cluster == "cloud" and d.chosen.queue_wait_ms == 0 and not d.chosen.full


def test_busy_slots_drain_the_requests_ahead_or_a_new_replica_starts_sooner() -> None:
    # 1 replica busy with 4, 3 queued: this one is 4th in line for 4 slots (1 s), but a second
    # replica (the cluster may run 2) is ready after its cold start (0.5 s): the sooner wins.
    quick_start = all_warm(state("cloud", load_=busy(4, 3, cold_start_ms=500)))
    assert wait_of(route(quick_start, BATCH), "cloud") == 500
    slow_start = all_warm(state("cloud", load_=busy(4, 3, cold_start_ms=5000)))
    assert wait_of(route(slow_start, BATCH), "cloud") == 4 * SERVICE_MS // 4
    # At maxScale (2 replicas, 8 slots, 12 in flight): only draining helps, 5 ahead incl. this.
    at_max = all_warm(state("cloud", load_=busy(8, 4, replicas=2, cold_start_ms=500)))
    assert wait_of(route(at_max, BATCH), "cloud") == 5 * SERVICE_MS // 8


def test_without_a_replica_count_the_probed_endpoint_is_one_replica() -> None:
    # A Knative pod's own metrics: no replicas gauge. Running 3 of 4 slots: one is free.
    d = route(all_warm(state("cloud", load_=busy(3, replicas=None))))
    assert d.chosen.queue_wait_ms == 0
    # Requests queued there: the busy slots are what it runs (here 2, whatever the template).
    d = route(all_warm(state("cloud", load_=busy(2, 2, replicas=None, cold_start_ms=9000))), BATCH)
    assert wait_of(d, "cloud") == 3 * SERVICE_MS // 2


def test_scaling_from_zero_is_a_cold_start_not_a_queue() -> None:
    cold = load(0, warm=False, replicas=0, cold_start_ms=2500)
    d = route(all_warm(state("cloud", load_=cold)))
    assert d.cluster == "cloud" and d.chosen.queue_wait_ms == 0
    assert d.chosen.predicted_ms == 180 + 2500
    # Buffered while it starts: up to maxScale x concurrency start together, after that a queue.
    buffered = load(8, warm=False, replicas=0, cold_start_ms=2500)
    assert wait_of(route(all_warm(state("cloud", load_=buffered)), BATCH), "cloud") == (
        SERVICE_MS // 8
    )


def test_the_cheapest_full_cluster_is_passed_over_and_the_reason_says_so() -> None:
    # Cloud at maxScale with 12 waiting: 1.6 s of queue against the 1 s default maximum.
    live = all_warm(state("cloud", load_=busy(8, 12, replicas=2)))
    d = route(live)
    assert d.cluster == "regional" and not d.chosen.full
    assert d.alternatives[-1].cluster == "cloud" and d.alternatives[-1].full
    assert d.reasons[0] == "regional: no latency budget (predicted 28 ms), cheapest"
    assert d.reasons[1] == "cloud full (queue 1625 ms > 1000 ms max): chose dearer regional"
    # The price the ingress will quote is the chosen tier's.
    assert d.chosen.price == 40 * 80


def test_a_plan_sets_the_maximum_and_unbounded_always_takes_the_cheapest() -> None:
    live = all_warm(state("cloud", load_=busy(8, 12, replicas=2)))
    patient = PlanSpec("patient", max_queue_wait_ms=5000)
    assert route(live, patient).cluster == "cloud"
    batch = route(live, BATCH)
    assert batch.cluster == "cloud" and not batch.chosen.full
    assert batch.chosen.queue_wait_ms == 13 * SERVICE_MS // 8
    # Zero: only a cluster that can start it now, here any other.
    assert route(all_warm(state("cloud", load_=busy(4, replicas=1))), STRICT).cluster == (
        "regional"
    )


def test_when_every_cluster_is_full_the_request_is_refused_with_retry_after() -> None:
    live = {
        "cloud": state("cloud", load_=busy(8, 12, replicas=2)),  # 1.6 s
        "regional": state("regional", load_=busy(8, 5, replicas=2)),  # 0.75 s
        "edge-a": state("edge-a", load_=busy(8, 16, replicas=2)),  # 2.1 s
        "edge-b": state("edge-b", load_=busy(8, 30, replicas=2)),  # 3.9 s
    }
    assert route(live).cluster == "regional"  # under 1 s: still takes it
    live["regional"] = state("regional", load_=busy(8, 14, replicas=2))  # 1.875 s
    with pytest.raises(AllFull) as caught:
        route(live)
    full = caught.value
    assert full.waits == {"cloud": 1625, "regional": 1875, "edge-a": 2125, "edge-b": 3875}
    assert full.retry_after_s == 1  # the shortest queue is 0.625 s over: retry in a second
    assert "exceeds your plan's 1000 ms" in str(full)
    with pytest.raises(AllFull) as caught:
        route(live, PlanSpec("tight", max_queue_wait_ms=10))
    assert caught.value.retry_after_s == 2
    # A batch plan waits instead: the cheapest, however long its queue.
    assert route(live, BATCH).cluster == "cloud"


def test_the_ingress_corrects_the_last_probe_with_its_own_requests() -> None:
    live = all_warm(state("cloud", load_=busy(7, replicas=2)))  # 1 slot free at START
    before, after = START - 1, START + 1
    seen_already = {("cloud", "small"): ((before, None), (before, None))}  # counted in the 7
    assert route(live, in_flight=seen_already).chosen.queue_wait_ms == 0
    unseen = {("cloud", "small"): ((after, None),) * 6}
    d = route(live, in_flight=unseen)
    assert wait_of(d, "cloud") == 6 * SERVICE_MS // 8  # 13 in flight, 8 slots
    # Counted by the probe, finished since: they no longer hold slots.
    ended = {("cloud", "small"): ((after, None),) * 6 + ((before, after),) * 3}
    assert wait_of(route(live, in_flight=ended), "cloud") == 3 * SERVICE_MS // 8  # 10 in flight
    # Finished before the probe: it did not count them, nothing to take away.
    long_gone = {("cloud", "small"): ((after, None),) * 6 + ((before - 5, before),) * 3}
    assert wait_of(route(live, BATCH, in_flight=long_gone), "cloud") == 6 * SERVICE_MS // 8
    # Unknown load: every unfinished request counts (on a cold, zero-replica cluster).
    unknown = {n: s for n, s in all_warm().items() if n != "cloud"}
    d = route(unknown, BATCH, in_flight={("cloud", "small"): ((before, None),) * 10})
    assert wait_of(d, "cloud") == 3 * SERVICE_MS // 8


def test_a_burst_from_one_ingress_spreads_before_the_next_probe() -> None:
    """16 requests at once, every cluster warm with one idle replica: the cheapest takes what it
    can start within the maximum, then the next cheapest, and so on."""
    clock = [START + 1.0]
    sent = InFlightRequests(clock=lambda: clock[0])
    live = {n: state(n, load_=busy(0, cold_start_ms=5000)) for n in all_warm()}
    chosen = []
    for _ in range(16):
        d = route(live, in_flight=sent.view())
        sent.begin(d.cluster, "small")
        chosen.append(d.cluster)
    # Each cluster: 4 slots free now, then 4 more within a second (its requests drain).
    assert Counter(chosen) == {"cloud": 8, "regional": 8}
    assert chosen[:8] == ["cloud"] * 8
    assert route(live, in_flight=sent.view()).cluster == "edge-a"


def test_the_ingress_remembers_finished_requests_for_a_while() -> None:
    now = [START + 1.0]
    sent = InFlightRequests(clock=lambda: now[0])
    tickets = [sent.begin("cloud", "small") for _ in range(3)]
    assert sent.view() == {("cloud", "small"): ((START + 1.0, None),) * 3}
    now[0] += 2
    tickets[0].end()
    tickets[0].end()  # twice is once
    assert sorted(sent.view()[("cloud", "small")], key=str) == [
        (START + 1.0, START + 3.0),
        (START + 1.0, None),
        (START + 1.0, None),
    ]
    for ticket in tickets[1:]:
        ticket.end()
    now[0] += 31  # finished long enough ago to matter to no probe
    assert sent.view() == {}
    late = sent.begin("cloud", "small", arrives_in_s=0.2)
    assert sent.view() == {("cloud", "small"): ((now[0] + 0.2, None),)}
    late.end()


def test_the_ingress_lists_unfinished_requests_first_then_the_finished_as_they_finished() -> None:
    """The order the policy reads them in: only those finished since a probe are looked at."""
    now = [START + 1.0]
    sent = InFlightRequests(clock=lambda: now[0])
    tickets = [sent.begin("cloud", "small", arrives_in_s=i) for i in range(3)]
    now[0] += 1
    tickets[2].end()
    now[0] += 1
    tickets[0].end()
    assert sent.view()[("cloud", "small")] == (
        (START + 2.0, None),
        (START + 3.0, START + 2.0),
        (START + 1.0, START + 3.0),
    )
