"""What the console computes from the journal: burn rate, the burn-down series, and each
entry's hash-chain status (a tampered entry is shown as such)."""

from __future__ import annotations

from functions.accounts import account_pk
from functions.store import Item, Store
from ledger_fn.console import readmodel
from ledger_fn.journal import entry_sk
from ledger_fn.ledger import Ledger
from tests.clock import Clock

DAY = 86_400


def _spend(ledger: Ledger, amount: int) -> None:
    hold = ledger.execute("acme", "authorize", {"amount": amount, "ttl_seconds": 60})
    ledger.execute("acme", "settle", {"hold_id": hold["hold_id"], "amount": amount})


def test_burn_rate_over_the_last_week_and_days_left(sqlite_store: Store) -> None:
    clock = Clock()
    ledger = Ledger(sqlite_store, clock=clock)
    ledger.open_account("acme")
    ledger.execute("acme", "grant", {"amount": 1_000_000})
    fresh = readmodel.account_row(ledger, "acme", int(clock()))
    assert fresh.burn.per_day is None  # too little history to say
    for _ in range(10):  # 10 days, 7,000 credits a day
        clock.advance(DAY)
        _spend(ledger, 7_000)
    clock.advance(DAY // 2)
    row = readmodel.account_row(ledger, "acme", int(clock()))
    assert row.burn.per_day == 7_000  # the last 7 days only
    assert row.burn.days_left_tenths == 930_000 * 10 // 7_000  # 132.8 days
    clock.advance(8 * DAY)
    quiet = readmodel.account_row(ledger, "acme", int(clock()))
    assert quiet.burn.per_day == 0 and quiet.burn.days_left_tenths is None


def test_burn_down_reaches_now(sqlite_store: Store) -> None:
    clock = Clock()
    ledger = Ledger(sqlite_store, clock=clock)
    ledger.open_account("acme")
    ledger.execute("acme", "grant", {"amount": 500})
    clock.advance(30)
    _spend(ledger, 200)
    series = readmodel.burn_down(readmodel.entries(ledger, "acme"), int(clock()) + 5)
    assert [p["available"] for p in series] == [0, 500, 300, 300, 300]
    assert series[-1]["t"] == (int(clock()) + 5) * 1000


def test_a_tampered_entry_shows_in_the_chain_status(sqlite_store: Store) -> None:
    ledger = Ledger(sqlite_store)
    ledger.open_account("acme")
    for amount in (100, 200, 300):
        ledger.execute("acme", "grant", {"amount": amount})
    rows = readmodel.journal_rows(ledger.keys, readmodel.entries(ledger, "acme"), shown=3)
    assert [r.status for r in rows] == ["intact"] * 3
    assert [(r.seq, r.kind, r.amount) for r in rows] == [
        (4, "grant", 300),
        (3, "grant", 200),
        (2, "grant", 100),
    ]
    item = sqlite_store.get(account_pk("acme"), entry_sk(3))
    assert item is not None
    forged = {**item.data, "result": {**item.data["result"], "amount": 2_000}}
    sqlite_store.put(Item(item.pk, item.sk, item.version, forged))
    rows = readmodel.journal_rows(ledger.keys, readmodel.entries(ledger, "acme"), shown=3)
    assert [r.status for r in rows] == ["intact", "hash mismatch", "intact"]
