"""Racing real threads and processes on one account, on sqlite and DynamoDB Local."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from typing import Any

import pytest

from functions.errors import Conflict, NotFound, Unavailable
from functions.store import Store, open_store
from ledger_fn.ledger import Ledger
from tests.ledger.helpers import invariant

GRANT = 5_000
OPS_PER_WORKER = 8


def worker(store: Store, seed: int, outcomes: list[tuple[str, str, int]]) -> None:
    """Authorize, then settle, refund or leave to expiry; record every resolution seen."""
    rng = random.Random(seed)
    ledger = Ledger(store, checkpoint_every=4)
    for i in range(OPS_PER_WORKER):
        result = ledger.execute(
            "race",
            "authorize",
            {"amount": rng.randint(50, 400), "ttl_seconds": 1},
            key=f"w{seed}-a{i}",
        )
        if result.get("declined"):
            continue
        hold = result["hold_id"]
        choice = rng.random()
        try:
            if choice < 0.5:
                r = ledger.execute(
                    "race",
                    "settle",
                    {"hold_id": hold, "amount": rng.randint(1, 400)},
                    key=f"w{seed}-s{i}",
                )
                outcomes.append(("settle", hold, r["captured"]))
            elif choice < 0.8:
                r = ledger.execute("race", "refund", {"hold_id": hold}, key=f"w{seed}-r{i}")
                outcomes.append(("refund", hold, r["refunded"]))
            else:
                ledger.sweep()  # races other workers' settles and refunds of their holds
                outcomes.append(("swept", hold, 0))
        except Conflict:
            outcomes.append(("conflict", hold, 0))  # the sweep of another worker was first


def check(ledger: Ledger, outcomes: list[tuple[str, str, int]]) -> None:
    resolutions: dict[str, int] = {}
    for kind, hold, _ in outcomes:
        if kind in ("settle", "refund"):
            resolutions[hold] = resolutions.get(hold, 0) + 1
    assert all(n == 1 for n in resolutions.values()), "a hold resolved twice"
    # Sweep as if the 1 s TTLs were over, so no hold is left open.
    Ledger(ledger.store, clock=lambda: time.time() + 5).sweep()
    b = invariant(ledger, "race")
    spent = sum(n for kind, _, n in outcomes if kind == "settle")
    assert b["spent"] == spent
    assert b["held"] == 0
    assert b["available"] + b["spent"] + b["expired"] == GRANT
    report = ledger.verify()
    assert report.ok, report.problems


def open_race_account(store: Store) -> Ledger:
    ledger = Ledger(store)
    ledger.open_account("race")
    ledger.execute("race", "grant", {"amount": GRANT})
    return ledger


@pytest.mark.slow
def test_sixteen_threads_never_overspend(real_store: Store) -> None:
    ledger = open_race_account(real_store)
    outcomes: list[tuple[str, str, int]] = []
    threads = [
        threading.Thread(target=worker, args=(real_store, seed, outcomes)) for seed in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(ledger, outcomes)


def _process(url: str, seed: int, queue: Any) -> None:
    outcomes: list[tuple[str, str, int]] = []
    threads = [
        threading.Thread(target=worker, args=(open_store(url), seed * 10 + n, outcomes))
        for n in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(outcomes)


@pytest.mark.slow
def test_four_processes_of_four_threads_never_overspend(
    real_store: Store, real_store_url: str
) -> None:
    ledger = open_race_account(real_store)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_process, args=(real_store_url, p, queue)) for p in range(4)]
    for p in procs:
        p.start()
    outcomes = [o for _ in procs for o in queue.get(timeout=300)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    check(ledger, outcomes)


def test_concurrent_profile_updates_lose_no_field(real_store: Store) -> None:
    """update_meta is a versioned read-modify-write: writers racing on one account's profile
    each keep their field. A writer told the profile is contended (503) retries, as a client
    of the admin API does."""
    Ledger(real_store).open_account("meta-race", {"plan": "basic"})
    workers, rounds = 8, 3
    barrier = threading.Barrier(workers)
    written: list[int] = []

    def work(i: int) -> None:
        ledger = Ledger(real_store)  # one per "function instance"
        barrier.wait()
        for r in range(rounds):
            while True:
                try:
                    ledger.update_meta("meta-race", {f"w{i}": r})
                except Unavailable:
                    continue
                written.append(1)
                break

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    meta = Ledger(real_store).meta("meta-race")
    assert meta.data == {"plan": "basic", **{f"w{i}": rounds - 1 for i in range(workers)}}
    assert meta.version == 1 + len(written) == 1 + workers * rounds
    with pytest.raises(NotFound):
        Ledger(real_store).update_meta("nobody", {"plan": "basic"})
