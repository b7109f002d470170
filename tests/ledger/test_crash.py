"""Crashes between writes: a real process dies mid-operation; nothing is lost or created."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from functions.accounts import account_pk
from functions.store import Store, open_store
from functions.store.sqlite import SqliteStore
from ledger_fn.ledger import Ledger
from tests.ledger.helpers import invariant

# The child runs ledger commands on a store whose put() kills the process (os._exit, no cleanup)
# right after the Nth write, then the parent recovers with a fresh Ledger and checks everything.
CHILD = textwrap.dedent("""
    import os, sys
    from functions.store import open_store
    from ledger_fn.ledger import Ledger

    store = open_store(sys.argv[1])
    die_after = int(sys.argv[2])
    writes = 0
    real_put = store.put
    def put(item, condition=None):
        global writes
        real_put(item, condition)
        writes += 1
        if writes == die_after:
            os._exit(17)
    store.put = put
    ledger = Ledger(store, checkpoint_every=2)
    ledger.open_account("crash")
    ledger.execute("crash", "grant", {"amount": 1000}, key="g")
    hold = ledger.execute("crash", "authorize", {"amount": 300, "ttl_seconds": 60}, key="a")
    ledger.execute("crash", "settle", {"hold_id": hold["hold_id"], "amount": 120}, key="s")
    ledger.execute("crash", "refund", {"hold_id": hold["hold_id"], "amount": 20}, key="r")
    os._exit(0)
""")


def run_child(url: str, die_after: int) -> int:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-c", CHILD, url, str(die_after)], env=env, timeout=120
    ).returncode


def recover_and_finish(store: Store) -> Ledger:
    """What a redelivery does after the crash: the same commands under the same keys."""
    ledger = Ledger(store)
    if not ledger.exists("crash"):
        ledger.open_account("crash")
    ledger.execute("crash", "grant", {"amount": 1000}, key="g")
    hold = ledger.execute("crash", "authorize", {"amount": 300, "ttl_seconds": 60}, key="a")
    ledger.execute("crash", "settle", {"hold_id": hold["hold_id"], "amount": 120}, key="s")
    ledger.execute("crash", "refund", {"hold_id": hold["hold_id"], "amount": 20}, key="r")
    return ledger


@pytest.mark.parametrize("die_after", range(1, 10))
def test_a_crash_after_any_write_loses_and_creates_nothing(tmp_path: Path, die_after: int) -> None:
    url = f"sqlite:///{tmp_path}/crash.db"
    assert run_child(url, die_after) in (0, 17)
    store = open_store(url)
    ledger = recover_and_finish(store)
    b = invariant(ledger, "crash")
    assert (b["granted"], b["spent"], b["held"], b["available"]) == (1020, 120, 0, 900)
    report = ledger.verify()
    assert report.ok and report.accounts == 1, report.problems


def test_verify_detects_a_tampered_journal(sqlite_store: SqliteStore) -> None:
    ledger = Ledger(sqlite_store)
    ledger.open_account("t")
    ledger.execute("t", "grant", {"amount": 500})
    ledger.execute("t", "grant", {"amount": 700})
    item = sqlite_store.get(account_pk("t"), "J#000000000002")
    assert item is not None
    item.data["op"]["args"]["amount"] = 5000  # an edited entry no longer matches its hash
    sqlite_store.put(item)
    report = Ledger(sqlite_store).verify()
    assert not report.ok
    assert "entry 2 does not match its MAC" in report.problems[0]


def test_verify_cli_passes_and_fails(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    ledger = Ledger(open_store(url))
    ledger.open_account("c")
    ledger.execute("c", "grant", {"amount": 5})
    cmd = [sys.executable, "-m", "infra.cli", "ledger", "verify", "--store", url]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "1 accounts, 2 journal entries: ok" in ok.stdout
