"""Conditional writes under real concurrency (threads and processes): sqlite and DynamoDB Local.

moto is left out on purpose: its server lets concurrent conditional updates both succeed.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from functions.store import (
    Absent,
    ConditionFailed,
    Contended,
    Item,
    Store,
    VersionIs,
    open_store,
    update_item,
)

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


def test_threads_race_update_item_and_lose_no_update(real_store: Store) -> None:
    """The versioned read-modify-write helper with its default retries and backoff. Sixteen
    writers hammering one item may exhaust a writer's attempts: that writer is told (Contended)
    and wrote nothing, so the count still equals the successful writes exactly."""
    start = threading.Barrier(THREADS)

    def add_one(data: dict[str, Any] | None) -> dict[str, Any]:
        return {"n": 1 if data is None else data["n"] + 1}

    def run(worker: int) -> tuple[list[int], int]:
        start.wait()  # the first writes race to create the item (Absent), then to update it
        written: list[int] = []
        refused = 0
        for _ in range(INCREMENTS):
            try:
                written.append(update_item(real_store, "counter", "c", add_one).data["n"])
            except Contended:
                refused += 1
        return written, refused

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(run, range(THREADS)))
    written = sorted(v for r, _ in results for v in r)
    assert written, "no write succeeded"
    assert len(written) + sum(refused for _, refused in results) == THREADS * INCREMENTS
    final = real_store.get("counter", "c")
    assert final is not None
    # Every successful write is observed exactly once; the refused ones left no trace.
    assert written == list(range(1, len(written) + 1))
    assert final.data["n"] == final.version == len(written)  # created at version 1
