"""Crashes between writes: a real process dies mid-operation; nothing is lost or created.

A forked child runs a day of ledger commands on a store whose put() kills the process (os._exit,
no cleanup) right after its Nth write: the registry entry, journal entries, claim index records,
checkpoints. The parent then delivers the same commands again, under the same keys (what a
broker does after a crash), with a fresh Ledger, and checks every balance, the journal and
verify. Every write point on sqlite; a sample of them on DynamoDB Local, where writes are slow.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from functions.accounts import account_pk
from functions.store import Condition, Item, Store, open_store
from functions.store.sqlite import SqliteStore
from ledger_fn.ledger import Ledger
from tests.ledger.helpers import invariant

T0 = 1_800_000_000


def day(ledger: Ledger, now: list[float]) -> None:
    """The commands, each under its own key, as a broker (re)delivers them."""
    if not ledger.exists("crash"):
        ledger.open_account("crash")
    grant = {"amount": 1000, "origin": "top-up", "reference": "tu-1"}
    ledger.execute("crash", "grant", grant, key="g")
    ledger.execute("crash", "grant", grant, key="g-again")  # the same top-up, another event
    a = ledger.execute("crash", "authorize", {"amount": 300, "ttl_seconds": 60}, key="a")
    ledger.execute("crash", "settle", {"hold_id": a["hold_id"], "amount": 120}, key="s")
    refund = {"hold_id": a["hold_id"], "amount": 20, "refund_id": "r1"}
    ledger.execute("crash", "refund", refund, key="r")
    ledger.execute("crash", "refund", refund, key="r-again")  # the same refund, another event
    b = ledger.execute("crash", "authorize", {"amount": 100, "ttl_seconds": 60}, key="b")
    now[0] = T0 + 100
    ledger.sweep()
    ledger.execute("crash", "settle", {"hold_id": b["hold_id"], "amount": 80}, key="late")
    now[0] = T0


def _dying_store(url: str, die_after: int) -> Store:
    store = open_store(url)
    real_put = store.put
    writes = [0]

    def put(item: Item, condition: Condition | None = None) -> None:
        real_put(item, condition)
        writes[0] += 1
        if writes[0] == die_after:
            os._exit(17)

    store.put = put  # type: ignore[method-assign]
    return store


def _child(url: str, die_after: int) -> None:
    now = [float(T0)]
    day(Ledger(_dying_store(url, die_after), checkpoint_every=2, clock=lambda: now[0]), now)
    os._exit(0)


def run_child(url: str, die_after: int) -> int:
    process = multiprocessing.get_context("fork").Process(target=_child, args=(url, die_after))
    process.start()
    process.join(120)
    assert process.exitcode is not None
    return process.exitcode


def recover_and_finish(store: Store) -> Ledger:
    now = [float(T0)]
    ledger = Ledger(store, clock=lambda: now[0])
    day(ledger, now)
    return ledger


def check(ledger: Ledger) -> None:
    b = invariant(ledger, "crash")
    # granted 1000 + the 20 refunded (a refund lot); spent 120 + 80 (the late settle)
    assert (b["granted"], b["spent"], b["held"], b["available"]) == (1020, 200, 0, 820), b
    assert b["shortfall"] == 0
    kinds = [e["op"]["kind"] for e in ledger.journal("crash", limit=100)]
    assert kinds.count("grant") == 1 and kinds.count("refund") == 1  # once each, by reference
    assert kinds.count("settle") == 2
    report = Ledger(ledger.store).verify()
    assert report.ok and report.accounts == 1, report.problems


def writes_of_a_day(url: str) -> int:
    """How many writes the whole day takes, counted on a store of its own."""
    store = open_store(url)
    real_put = store.put
    count = [0]

    def put(item: Item, condition: Condition | None = None) -> None:
        real_put(item, condition)
        count[0] += 1

    store.put = put  # type: ignore[method-assign]
    now = [float(T0)]
    day(Ledger(store, checkpoint_every=2, clock=lambda: now[0]), now)
    return count[0]


@pytest.mark.skipif(sys.platform != "linux", reason="forks a child to kill it")
def test_a_crash_after_any_write_loses_and_creates_nothing(tmp_path: Path) -> None:
    total = writes_of_a_day(f"sqlite:///{tmp_path}/count.db")
    assert total > 20  # registry, journal, index records, checkpoints
    for die_after in range(1, total + 1):
        url = f"sqlite:///{tmp_path}/crash-{die_after}.db"
        assert run_child(url, die_after) == 17
        check(recover_and_finish(open_store(url)))


@pytest.mark.skipif(sys.platform != "linux", reason="forks a child to kill it")
def test_a_crash_on_dynamodb_local_loses_and_creates_nothing(
    dynamodb_local_endpoint: str, tmp_path: Path
) -> None:
    from functions.store.dynamodb import create_table

    def table(name: str) -> str:
        create_table(name, endpoint_url=dynamodb_local_endpoint)
        return f"dynamodb://{dynamodb_local_endpoint.split('://', 1)[1]}/{name}"

    total = writes_of_a_day(table("crashcount"))
    for die_after in range(1, total + 1, 6):  # every 6th write point (~10 s each here)
        url = table(f"crash{die_after}")
        assert run_child(url, die_after) == 17
        check(recover_and_finish(open_store(url)))


def test_verify_detects_a_tampered_journal(sqlite_store: SqliteStore) -> None:
    ledger = Ledger(sqlite_store)
    ledger.open_account("t")
    ledger.execute("t", "grant", {"amount": 500})
    ledger.execute("t", "grant", {"amount": 700})
    item = sqlite_store.get(account_pk("t"), "J#000000000002")
    assert item is not None
    item.data["op"]["args"]["amount"] = 5000  # an edited entry no longer matches its MAC
    sqlite_store.put(item)
    report = Ledger(sqlite_store).verify()
    assert not report.ok
    assert "entry 2 does not match its MAC" in report.problems[0]


def test_verify_cli_passes_and_fails(tmp_path: Path) -> None:
    import subprocess

    url = f"sqlite:///{tmp_path}/cli.db"
    ledger = Ledger(open_store(url))
    ledger.open_account("c")
    ledger.execute("c", "grant", {"amount": 5})
    cmd = [sys.executable, "-m", "infra.cli", "ledger", "verify", "--store", url]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "1 accounts, 2 journal entries: ok" in ok.stdout
    head = ok.stdout.split("registry head ", 1)[1].split()[0]
    assert subprocess.run([*cmd, "--expect-head", head], timeout=120).returncode == 0
    unkeyed = {k: v for k, v in os.environ.items() if k != "TOLLGATE_LEDGER_KEYS"}
    missing = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=unkeyed)
    assert missing.returncode == 1 and "TOLLGATE_LEDGER_KEYS is not set" in missing.stderr
    item = ledger.store.get(account_pk("c"), "J#000000000002")
    assert item is not None
    item.data["op"]["args"]["amount"] = 50
    ledger.store.put(item)
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "PROBLEM account c: entry 2" in bad.stderr
