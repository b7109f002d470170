"""An account's state always fits one store item: a byte budget checked before commit, caps that
count refund lots and revocations, a checkpoint failure that is never an error, and a cache
bounded by bytes."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from functions.accounts import account_pk
from functions.errors import Conflict
from functions.store import Condition, Item, Store, StoreUnavailable
from functions.store.dynamodb import DynamoStore
from functions.store.port import MAX_DATA_BYTES, encode_data
from ledger_fn import footprint
from ledger_fn.ledger import STATE_BUDGET_BYTES, STATE_SK, Ledger
from ledger_fn.state import MAX_LOTS, MAX_REVOCATIONS_KEPT
from tests.clock import Clock
from tests.ledger.helpers import invariant

LONG_ACCOUNT = "a" * 64  # every field as long as its schema allows


def wide_grant(n: int) -> dict[str, Any]:
    return {
        "amount": 9_000_000_000_000_000_000,
        "expires_at": 9_000_000_000_000_000_000,
        "tiers": [f"t{i}-".ljust(128, "x") for i in range(16)],
        "models": [f"m{i}-".ljust(128, "x") for i in range(64)],
        "reference": f"r{n}-".ljust(128, "x"),
    }


def test_a_full_account_refuses_what_would_outgrow_its_item_on_dynamodb_local(
    dynamodb_store: DynamoStore,
) -> None:
    ledger = Ledger(dynamodb_store, clock=Clock(), checkpoint_every=8)
    ledger.open_account(LONG_ACCOUNT)
    ledger.execute(LONG_ACCOUNT, "grant", {"amount": 1000})
    holds = [
        ledger.execute(LONG_ACCOUNT, "authorize", {"amount": 10, "ttl_seconds": 600})["hold_id"]
        for _ in range(3)
    ]
    n = 0
    with pytest.raises(Conflict, match="is full") as refused:
        for n in range(200):  # ~9.6 KB a lot: the budget ends this long before the lot cap
            ledger.execute(LONG_ACCOUNT, "grant", wide_grant(n), key=f"wide-{n}")
    assert "nothing changed" in str(refused.value.message)
    assert 20 < n < MAX_LOTS
    state = ledger.state(LONG_ACCOUNT)
    journal_end = state.seq
    # Refused before commit: no journal entry, no claim, the same key is simply refused again.
    assert dynamodb_store.get(account_pk(LONG_ACCOUNT), f"J#{journal_end + 1:012d}") is None
    with pytest.raises(Conflict, match="is full"):
        ledger.execute(LONG_ACCOUNT, "grant", wide_grant(n), key=f"wide-{n}")
    size = len(encode_data(state.model_dump(mode="json")))
    assert size <= footprint.total(state, footprint.elements(state)) <= STATE_BUDGET_BYTES
    # The checkpoint DynamoDB Local keeps is such a state, well within the item limit.
    checkpoint = dynamodb_store.get(account_pk(LONG_ACCOUNT), STATE_SK)
    assert checkpoint is not None and len(encode_data(checkpoint.data)) <= MAX_DATA_BYTES
    with pytest.raises(Conflict, match="is full"):  # filled up with small lots, then even...
        for m in range(200):
            ledger.execute(
                LONG_ACCOUNT, "grant", {"amount": 1, "reference": f"f{m}-".ljust(128, "x")}
            )
    with pytest.raises(Conflict, match="is full"):  # ...a new hold would outgrow it
        ledger.execute(LONG_ACCOUNT, "authorize", {"amount": 1, "ttl_seconds": 60})
    # What shrinks it is always allowed: a full account still settles and voids.
    ledger.execute(LONG_ACCOUNT, "settle", {"hold_id": holds[0], "amount": 10})
    ledger.execute(LONG_ACCOUNT, "refund", {"hold_id": holds[1]})
    assert invariant(ledger, LONG_ACCOUNT)["held"] == 10
    assert Ledger(dynamodb_store).verify().ok


class _CheckpointsFail:
    """A store whose checkpoint writes fail (an oversized item, then an outage) while ``down``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = True
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def put(self, item: Item, condition: Condition | None = None) -> None:
        if self.down and item.sk == STATE_SK:
            self.failures += 1
            if self.failures % 2:
                raise ValueError("item data must be at most 350000 bytes of JSON")
            raise StoreUnavailable("checkpoint write timed out")
        self.store.put(item, condition)


def test_a_failed_checkpoint_is_never_an_error_and_is_retried(real_store: Store) -> None:
    flaky = _CheckpointsFail(real_store)
    ledger = Ledger(flaky, clock=Clock(), checkpoint_every=2)
    before = REGISTRY.get_sample_value("tollgate_ledger_checkpoint_failures_total") or 0
    ledger.open_account("acme")
    for n in range(8):  # every command answers its result although checkpoints fail
        assert ledger.execute("acme", "grant", {"amount": 1}, key=f"g{n}")["amount"] == 1
    assert flaky.failures >= 2
    assert real_store.get(account_pk("acme"), STATE_SK) is None
    after = REGISTRY.get_sample_value("tollgate_ledger_checkpoint_failures_total")
    assert after == before + flaky.failures
    flaky.down = False
    for n in range(3):
        ledger.execute("acme", "grant", {"amount": 1}, key=f"h{n}")
    checkpoint = real_store.get(account_pk("acme"), STATE_SK)
    assert checkpoint is not None and checkpoint.data["seq"] >= 10
    assert invariant(Ledger(real_store), "acme")["granted"] == 11


def test_refund_lots_count_against_the_lot_cap(sqlite_store: Store) -> None:
    ledger = Ledger(sqlite_store, clock=Clock())
    ledger.open_account("acme")
    ledger.execute("acme", "grant", {"amount": 100})
    held = ledger.execute("acme", "authorize", {"amount": 50, "ttl_seconds": 60})["hold_id"]
    ledger.execute("acme", "settle", {"hold_id": held, "amount": 50})
    for n in range(MAX_LOTS - 1):
        ledger.execute("acme", "grant", {"amount": 1}, key=f"g{n}")
    with pytest.raises(Conflict, match=f"{MAX_LOTS} live lots"):
        ledger.execute("acme", "refund", {"hold_id": held, "amount": 5})
    assert invariant(ledger, "acme")["refunded"] == 0


def test_revocations_are_capped_by_refusing_new_ones(sqlite_store: Store) -> None:
    ledger = Ledger(sqlite_store, clock=Clock())
    ledger.open_account("acme")
    lot = ledger.execute("acme", "grant", {"amount": 1000})["lot_id"]
    for n in range(MAX_REVOCATIONS_KEPT):
        ledger.execute("acme", "revoke", {"lot_id": lot, "amount": 1, "reference": f"r{n}"})
    with pytest.raises(Conflict, match="revocations"):
        ledger.execute("acme", "revoke", {"lot_id": lot, "amount": 1, "reference": "one-more"})
    # Every remembered revocation can still be restored (none was dropped to make room).
    ledger.execute("acme", "restore", {"reference": "r0"})
    assert invariant(ledger, "acme")["revoked"] == MAX_REVOCATIONS_KEPT - 1


def test_the_cache_is_bounded_by_bytes(sqlite_store: Store) -> None:
    ledger = Ledger(sqlite_store, clock=Clock(), cache_bytes=200_000)
    for n in range(40):
        ledger.open_account(f"c{n}")
        ledger.execute(f"c{n}", "grant", {"amount": 10})
        assert ledger.cached_bytes <= 200_000
    assert 0 < len(ledger._cache) < 40  # some were evicted to stay within the bound
    # Evicted accounts load again from the store, exactly.
    assert all(ledger.balance(f"c{n}")["available"] == 10 for n in range(40))
    assert ledger.cached_bytes <= 200_000
