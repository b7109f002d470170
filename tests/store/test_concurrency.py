"""Conditional writes under real concurrency (threads and processes): sqlite and DynamoDB Local.

moto is left out on purpose: its server lets concurrent conditional updates both succeed.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from functions.store import Absent, ConditionFailed, Item, Store, VersionIs, open_store

THREADS = 16
PROCESSES = 4
INCREMENTS = 8  # per thread / process: modest, the machine is small


def increment(store: Store, pk: str, sk: str, times: int) -> list[int]:
    """Read-increment-put(VersionIs) ``times`` times, retrying lost races; the values written."""
    written: list[int] = []
    for _ in range(times):
        while True:
            current = store.get(pk, sk)
            assert current is not None
            value = int(current.data["n"]) + 1
            try:
                store.put(
                    Item(pk, sk, version=current.version + 1, data={"n": value}),
                    VersionIs(current.version),
                )
            except ConditionFailed:
                continue
            written.append(value)
            break
    return written


def _process_worker(url: str, times: int) -> list[int]:
    store = open_store(url)
    try:
        return increment(store, "counter", "c", times)
    finally:
        store.close()


def check_counter(store: Store, results: list[list[int]], total: int) -> None:
    final = store.get("counter", "c")
    assert final is not None
    assert final.data["n"] == total
    assert final.version == total + 1
    # Every successful write is observed exactly once: no two writers won the same version.
    assert sorted(v for r in results for v in r) == list(range(1, total + 1))


def test_threads_race_versioned_counter(real_store: Store) -> None:
    real_store.put(Item("counter", "c", version=1, data={"n": 0}), Absent())
    start = threading.Barrier(THREADS)

    def run() -> list[int]:
        start.wait()
        return increment(real_store, "counter", "c", INCREMENTS)

    with ThreadPoolExecutor(THREADS) as pool:
        results = [f.result() for f in [pool.submit(run) for _ in range(THREADS)]]
    check_counter(real_store, results, THREADS * INCREMENTS)


def test_threads_race_absent_one_wins(real_store: Store) -> None:
    start = threading.Barrier(THREADS)

    def run(n: int) -> bool:
        start.wait()
        try:
            real_store.put(Item("acct", "create", data={"winner": n}), Absent())
        except ConditionFailed:
            return False
        return True

    with ThreadPoolExecutor(THREADS) as pool:
        won = list(pool.map(run, range(THREADS)))
    assert won.count(True) == 1
    stored = real_store.get("acct", "create")
    assert stored is not None and stored.data == {"winner": won.index(True)}


@pytest.mark.slow
def test_processes_race_versioned_counter(real_store: Store, real_store_url: str) -> None:
    real_store.put(Item("counter", "c", version=1, data={"n": 0}), Absent())
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(_process_worker, [(real_store_url, INCREMENTS)] * PROCESSES)
    check_counter(real_store, results, PROCESSES * INCREMENTS)
