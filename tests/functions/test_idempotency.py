"""The runtime's idempotency utility: stored results, payload-hash mismatch, takeover, release."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from functions.errors import Conflict, Unavailable
from functions.idempotency import Idempotency, payload_hash
from functions.store import Store
from tests.clock import Clock


def test_payload_hash_ignores_key_order() -> None:
    assert payload_hash({"a": 1, "b": [1, 2]}) == payload_hash({"b": [1, 2], "a": 1})
    assert payload_hash({"a": 1}) != payload_hash({"a": 2})


def test_first_result_is_returned_on_replay_and_work_runs_once(any_store: Store) -> None:
    idem = Idempotency(any_store)
    calls: list[int] = []

    def work() -> dict[str, Any]:
        calls.append(1)
        return {"n": len(calls)}

    assert idem.run("src#1", {"x": 1}, work) == {"n": 1}
    assert idem.run("src#1", {"x": 1}, work) == {"n": 1}
    assert calls == [1]
    with pytest.raises(Conflict):
        idem.run("src#1", {"x": 2}, work)


def test_a_concurrent_duplicate_is_told_to_retry_and_a_dead_claim_is_taken_over(
    sqlite_store: Store,
) -> None:
    clock = Clock()
    idem = Idempotency(sqlite_store, in_progress_s=30, clock=clock)

    def nested() -> dict[str, Any]:
        with pytest.raises(Unavailable):
            idem.run("src#2", {}, lambda: {"inner": True})
        return {"outer": True}

    assert idem.run("src#2", {}, nested) == {"outer": True}

    # A claim left by a process that died: retried at once it waits, later it is taken over.
    def die() -> dict[str, Any]:
        raise SystemExit  # simulated crash; the release below does not run for os._exit

    from functions.store import Item

    sqlite_store.put(
        Item(
            "IDEM#src#3",
            "IDEM",
            1,
            {"status": "IN_PROGRESS", "hash": payload_hash({}), "started": 0},
        )
    )
    clock.now = 10
    with pytest.raises(Unavailable):
        idem.run("src#3", {}, lambda: {"late": True})
    clock.now = 31
    assert idem.run("src#3", {}, lambda: {"late": True}) == {"late": True}
    with pytest.raises(SystemExit):
        idem.run("src#4", {}, die)
    assert idem.run("src#4", {}, lambda: {"second": True}) == {"second": True}


def test_racing_deliveries_take_over_a_dead_claim_once(real_store: Store) -> None:
    """Eight redeliveries race for a claim whose process died: one runs the work; each other
    one is told to retry (503) or, if the winner finished first, gets the winner's result."""
    from functions.store import Item

    real_store.put(
        Item(
            "IDEM#src#9",
            "IDEM",
            1,
            {"status": "IN_PROGRESS", "hash": payload_hash({}), "started": 0},
        )
    )
    clock = Clock(now=100)
    deliveries = 8
    barrier = threading.Barrier(deliveries)
    ran: list[int] = []

    def deliver(n: int) -> dict[str, Any] | None:
        def work() -> dict[str, Any]:
            ran.append(n)
            return {"by": n}

        idem = Idempotency(real_store, in_progress_s=30, clock=clock)
        barrier.wait()
        try:
            return idem.run("src#9", {}, work)
        except Unavailable:
            return None

    with ThreadPoolExecutor(deliveries) as pool:
        results = list(pool.map(deliver, range(deliveries)))
    assert len(ran) == 1
    first = {"by": ran[0]}
    assert first in results and all(r in (None, first) for r in results)
    again = Idempotency(real_store, clock=clock).run("src#9", {}, lambda: {"again": True})
    assert again == first
