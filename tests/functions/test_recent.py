"""The bounded log of recent activity: a ring per writer, newest first, written off the caller's
path, never failing the caller."""

from __future__ import annotations

import threading
import time

from functions.recent import RecentLog, partition
from functions.store import Item, Store, StoreUnavailable
from tests.clock import Clock


def test_records_come_back_newest_first_and_the_ring_stays_bounded(sqlite_store: Store) -> None:
    clock = Clock()
    log = RecentLog(sqlite_store, "things", slots=5, clock=clock)
    for i in range(12):
        clock.advance(1)
        log.add({"i": i})
    assert log.flush()
    assert [r["i"] for r in log.read(limit=3)] == [11, 10, 9]
    assert [r["i"] for r in log.read()] == [11, 10, 9, 8, 7]  # only the last 5 are kept
    assert len(sqlite_store.query(partition("things"), limit=100)) == 5


def test_several_writers_are_merged_and_old_rings_are_skipped(sqlite_store: Store) -> None:
    clock = Clock()
    first, second = (RecentLog(sqlite_store, "k", clock=clock, ttl_s=60) for _ in range(2))
    first.add({"who": "first"})
    clock.advance(1)
    second.add({"who": "second"})
    assert first.flush() and second.flush()
    assert [r["who"] for r in first.read()] == ["second", "first"]
    clock.advance(59.5)  # the first writer's record is past its TTL (a process long gone)
    assert [r["who"] for r in second.read()] == ["second"]


class _SlowStore:
    """A store whose writes block until released, and then fail."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.release = threading.Event()

    def put(self, item: Item, condition: object = None) -> None:
        self.release.wait(10)
        raise StoreUnavailable("down")

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_adding_never_waits_for_the_store_nor_fails(sqlite_store: Store) -> None:
    slow = _SlowStore(sqlite_store)
    log = RecentLog(slow, "k")  # type: ignore[arg-type]
    started = time.perf_counter()
    for i in range(50):
        log.add({"i": i})
    assert time.perf_counter() - started < 1.0  # the writes are stuck; adding is not
    slow.release.set()
    assert log.flush()
    assert log.dropped == 50
