"""Live tier state through the store, on sqlite and DynamoDB Local: reads, the cache, staleness,
degradation expiry and renewal, and no lost update under concurrent writers."""

from __future__ import annotations

import json
import threading
from typing import Any, cast

import pytest

from functions.store import Item, Store, StoreUnavailable
from router_fn.tierstate import TierStates
from router_fn.tierview import tiers_view
from tests.clock import START, Clock
from tests.router.helpers import topology


def states(store: Store, clock: Clock) -> TierStates:
    return TierStates(store, clock, cache_s=0.25, load_stale_s=15, health_stale_s=60)


def test_nothing_reported_is_an_empty_snapshot(real_store: Store) -> None:
    assert states(real_store, Clock()).snapshot() == {}


def test_health_and_load_per_model(real_store: Store) -> None:
    clock = Clock()
    s = states(real_store, clock)
    s.report_health("edge-a", "small", True)
    s.report_load("edge-a", "small", queue_depth=2, running=1, warm=True, cold_start_ms=900)
    s.report_health("edge-a", "mid", False, "readyz 503")
    snap = s.snapshot()
    small = snap["edge-a"].endpoint("small")
    assert small.health is not None and small.health.healthy
    assert small.load is not None
    assert (small.load.queue_depth, small.load.running, small.load.warm) == (2, 1, True)
    assert small.load.cold_start_ms == 900 and small.load.updated_at == START
    mid = snap["edge-a"].endpoint("mid")
    assert mid.health is not None and not mid.health.healthy and mid.load is None
    assert mid.health.detail == "readyz 503"
    assert snap["edge-a"].endpoint("big").health is None  # never probed: unknown


def test_since_moves_only_when_the_verdict_changes(real_store: Store) -> None:
    clock = Clock()
    s = states(real_store, clock)
    s.report_health("edge-a", "small", True)
    clock.advance(5)
    again = s.report_health("edge-a", "small", True)
    assert (again.since, again.checked_at) == (START, START + 5)
    clock.advance(5)
    down = s.report_health("edge-a", "small", False, "timeout")
    assert down.since == START + 10


def test_a_cold_start_time_is_kept_until_a_newer_one(real_store: Store) -> None:
    s = states(real_store, Clock())
    s.report_load("c", "small", queue_depth=0, running=0, warm=False, cold_start_ms=1200)
    kept = s.report_load("c", "small", queue_depth=0, running=0, warm=True)
    assert kept.cold_start_ms == 1200
    newer = s.report_load("c", "small", queue_depth=0, running=0, warm=True, cold_start_ms=800)
    assert newer.cold_start_ms == 800


def test_stale_evidence_reads_as_unknown(real_store: Store) -> None:
    clock = Clock()
    s = states(real_store, clock)
    s.report_health("c", "small", False, "down")
    s.report_load("c", "small", queue_depth=0, running=0, warm=True)
    clock.advance(16)
    endpoint = s.snapshot()["c"].endpoint("small")
    assert endpoint.load is None  # stale load is unknown, not an idle queue
    assert endpoint.health is not None
    clock.advance(45)
    assert s.snapshot()["c"].endpoint("small").health is None  # a lost prober cannot strand it


def test_snapshot_is_cached_briefly_and_own_writes_show_at_once(real_store: Store) -> None:
    clock = Clock()
    reader, writer = states(real_store, clock), states(real_store, clock)
    assert reader.snapshot() == {}
    writer.report_health("c", "small", True)
    assert reader.snapshot() == {}  # another instance's write: within the cache window
    clock.advance(0.3)
    assert "c" in reader.snapshot()
    reader.report_health("d", "small", True)
    assert "d" in reader.snapshot()


def test_degradation_expires_by_itself(real_store: Store) -> None:
    clock = Clock()
    s = states(real_store, clock)
    s.degrade("edge-a", "packet delay budget not met", START + 300, "/camara/q1")
    d = s.snapshot()["edge-a"].degraded
    assert d is not None and d.cause == "packet delay budget not met" and d.until == START + 300
    clock.advance(301)
    assert s.snapshot()["edge-a"].degraded is None


def test_renewal_extends_never_shortens_and_keeps_since(real_store: Store) -> None:
    clock = Clock()
    s = states(real_store, clock)
    s.degrade("edge-a", "congestion", START + 300, "/nwdaf")
    clock.advance(200)
    renewed = s.degrade("edge-a", "congestion", START + 500, "/nwdaf")
    assert (renewed.since, renewed.until) == (START, START + 500)
    shorter = s.degrade("edge-a", "congestion", START + 400, "/nwdaf")
    assert shorter.until == START + 500
    clock.advance(400)  # expired: a new degradation starts afresh
    fresh = s.degrade("edge-a", "congestion", START + 1000, "/nwdaf")
    assert fresh.since == START + 600


def test_restore_lifts_only_its_own_source(real_store: Store) -> None:
    clock = Clock()
    s = states(real_store, clock)
    s.degrade("edge-a", "quality", START + 300, "/camara/q1")
    s.degrade("edge-a", "congestion", START + 200, "/nwdaf")
    assert [d.source for d in s.snapshot()["edge-a"].degradations] == ["/camara/q1", "/nwdaf"]
    assert s.restore("edge-a", "/camara/q1")
    remaining = s.snapshot()["edge-a"].degraded
    assert remaining is not None and remaining.source == "/nwdaf"
    assert s.restore("edge-a", "/nwdaf")
    assert not s.restore("edge-a", "/nwdaf")  # a duplicate restore is harmless
    assert s.snapshot()["edge-a"].degraded is None
    assert not s.restore("never-degraded", "/x")


def test_concurrent_writers_lose_no_update(real_store: Store) -> None:
    clock = Clock()
    workers = 8
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        s = states(real_store, clock)  # one instance per "function instance"
        try:
            barrier.wait()
            for round_ in range(3):
                s.degrade("edge-a", f"cause {i}", START + 100 + round_, f"/source/{i}")
                s.report_load("edge-a", "small", queue_depth=i, running=0, warm=True)
                s.report_health("edge-a", "small", True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    snap = states(real_store, clock).snapshot()["edge-a"]
    assert {d.source for d in snap.degradations} == {f"/source/{i}" for i in range(workers)}
    assert all(d.until == START + 102 for d in snap.degradations)
    load = snap.endpoint("small").load
    assert load is not None and load.queue_depth in range(workers)


def test_the_json_view_lists_every_cluster_with_unknowns_as_null(real_store: Store) -> None:
    clock = Clock()
    s = states(real_store, clock)
    s.report_health("edge-a", "small", True)
    s.report_load("edge-a", "small", queue_depth=1, running=2, warm=False, cold_start_ms=700)
    s.degrade("edge-b", "packet delay budget not met", START + 600, "/camara/q")
    view = {c["cluster"]: c for c in tiers_view(topology(), s.snapshot())}
    assert list(view) == ["edge-a", "edge-b", "regional", "cloud"]
    small = view["edge-a"]["models"]["small"]
    assert (small["healthy"], small["warm"], small["queue_depth"], small["cold_start_ms"]) == (
        True,
        False,
        1,
        700,
    )
    assert view["edge-a"]["models"]["mid"]["healthy"] is None
    [degraded] = view["edge-b"]["degraded"]
    assert degraded["cause"] == "packet delay budget not met"
    assert degraded["until"] == "2027-01-15T08:10:00Z"
    assert view["cloud"]["degraded"] == [] and view["cloud"]["models"]["big"]["warm"] is None
    json.dumps(list(view.values()))


class FlakyStore:
    """A store whose reads can be made to fail as an unreachable DynamoDB does."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def query(self, *args: Any, **kwargs: Any) -> list[Item]:
        if self.down:
            raise StoreUnavailable("connection refused")
        return self.inner.query(*args, **kwargs)


def test_a_store_blip_serves_the_last_view(sqlite_store: Store) -> None:
    clock = Clock()
    flaky = FlakyStore(sqlite_store)
    s = TierStates(cast(Store, flaky), clock)
    flaky.down = True
    with pytest.raises(StoreUnavailable):
        s.snapshot()  # nothing to fall back on
    flaky.down = False
    s.report_health("edge-a", "small", True)
    first = s.snapshot()
    flaky.down = True
    clock.advance(5)
    assert s.snapshot() is first
