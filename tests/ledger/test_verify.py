"""``verify`` checks what it used to trust: a keyed chain (with rotation), every checkpoint
against the replay, accounts found from the keyed registry, claims never taken twice."""

from __future__ import annotations

import hashlib
import json

import pytest

from functions.accounts import account_pk
from functions.store import Item, Store
from ledger_fn.claims import key_claim
from ledger_fn.journal import CorruptJournal
from ledger_fn.keys import LedgerKeys
from ledger_fn.ledger import STATE_SK, Ledger
from ledger_fn.registry import PK as REGISTRY
from ledger_fn.registry import entry_sk as registry_sk
from ledger_fn.state import AccountState
from tests.clock import Clock

K1 = LedgerKeys.parse("k1:first-ledger-key-0123456789abcdefghij")
K2_THEN_K1 = LedgerKeys.parse(
    "k2:second-ledger-key-0123456789abcdefghij,k1:first-ledger-key-0123456789abcdefghij"
)
ATTACKER = LedgerKeys.parse("k1:a-guess-at-the-key-0123456789abcdefghi")


def opened(store: Store, keys: LedgerKeys = K1, accounts: tuple[str, ...] = ("acme",)) -> Ledger:
    ledger = Ledger(store, keys=keys, clock=Clock(), checkpoint_every=2)
    for account in accounts:
        ledger.open_account(account)
        for amount in (500, 700, 100):
            ledger.execute(account, "grant", {"amount": amount})
    return ledger


def entry(store: Store, account: str, seq: int) -> Item:
    item = store.get(account_pk(account), f"J#{seq:012d}")
    assert item is not None
    return item


def test_a_writer_without_the_key_cannot_rewrite_a_chain_that_verifies(real_store: Store) -> None:
    ledger = opened(real_store)
    item = entry(real_store, "acme", 2)
    data = dict(item.data)
    data["op"] = {**data["op"], "args": {**data["op"]["args"], "amount": 500_000}}
    data["result"] = {**data["result"], "amount": 500_000}
    # Re-sealed as an unkeyed SHA-256 chain would be, and with a guessed key: neither verifies.
    body = {k: data[k] for k in ("prev", "seq", "op", "result", "balances", "claims")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    for kid, mac in (("k1", hashlib.sha256(canonical).hexdigest()), ATTACKER.sign(body)):
        real_store.put(Item(item.pk, item.sk, item.version, {**data, "kid": kid, "hash": mac}))
        report = Ledger(real_store, keys=K1).verify()
        assert any("entry 2 does not match its MAC" in p for p in report.problems), report
    # The running ledger starts from its signed checkpoint; entries after it are checked as
    # they are read (the forgery test below), entries before it by verify.
    assert ledger.balance("acme")["granted"] == 1300


def test_an_appended_forgery_stops_the_account_instead_of_granting(real_store: Store) -> None:
    opened(real_store)
    head = entry(real_store, "acme", 4)
    body = {
        "prev": head.data["hash"],
        "seq": 5,
        "op": {"kind": "grant", "at": 0, "key": None, "digest": None, "args": {"amount": 10**9}},
        "result": {},
        "balances": {},
        "claims": {},
    }
    kid, mac = ATTACKER.sign(body)
    real_store.put(Item(account_pk("acme"), "J#000000000005", 1, {**body, "kid": kid, "hash": mac}))
    with pytest.raises(CorruptJournal, match="entry 5"):
        Ledger(real_store, keys=K1).execute("acme", "authorize", {"amount": 1, "ttl_seconds": 5})
    assert not Ledger(real_store, keys=K1).verify().ok


def test_keys_rotate_old_entries_verify_while_their_key_is_listed(real_store: Store) -> None:
    opened(real_store, K1)
    rotated = Ledger(real_store, keys=K2_THEN_K1, clock=Clock())
    rotated.execute("acme", "grant", {"amount": 1})
    assert entry(real_store, "acme", 5).data["kid"] == "k2"
    assert entry(real_store, "acme", 4).data["kid"] == "k1"
    assert rotated.verify().ok
    only_new = LedgerKeys.parse("k2:second-ledger-key-0123456789abcdefghij")
    report = Ledger(real_store, keys=only_new).verify()
    assert any("key 'k1'" in p for p in report.problems), report.problems


def test_every_checkpoint_is_checked_against_the_replay(real_store: Store) -> None:
    ledger = opened(real_store)
    ledger.execute("acme", "grant", {"amount": 1})  # the checkpoint is now behind the head
    item = real_store.get(account_pk("acme"), STATE_SK)
    assert item is not None
    state = AccountState.model_validate(
        {k: v for k, v in item.data.items() if k not in ("kid", "mac")}
    )
    assert state.seq < ledger.state("acme").seq
    # A checkpoint sealed with the key but wrong (a bug, not an attacker): caught at its entry.
    wrong = state.model_copy(
        update={"available": state.available + 1, "granted": state.granted + 1}
    )
    real_store.put(Item(item.pk, item.sk, item.version + 1, ledger._seal(wrong)))
    report = Ledger(real_store, keys=K1).verify()
    assert any(f"checkpoint at entry {state.seq} differs" in p for p in report.problems), report
    assert "available, granted" in " ".join(report.problems)
    # Edited without the key: refused by verify, ignored by the ledger (it replays instead).
    edited = {**item.data, "available": item.data["available"] + 10**6}
    real_store.put(Item(item.pk, item.sk, item.version + 2, edited))
    assert any(
        "checkpoint does not match" in p for p in Ledger(real_store, keys=K1).verify().problems
    )
    assert Ledger(real_store, keys=K1).balance("acme")["available"] == 1301


def test_deleting_an_account_from_the_registry_does_not_hide_it(real_store: Store) -> None:
    ledger = opened(real_store, accounts=("a", "b", "c"))
    clean = ledger.verify()
    assert clean.ok and clean.accounts == 3 and clean.head[0] == 3
    second = real_store.get(REGISTRY, registry_sk(2))
    assert second is not None
    real_store_delete(real_store, REGISTRY, registry_sk(2))
    report = Ledger(real_store, keys=K1).verify()
    assert "registry entry 2 is missing (next is 3)" in report.problems
    # The newest entry leaves no gap: an earlier run's head catches its removal.
    real_store.put(second)
    real_store_delete(real_store, REGISTRY, registry_sk(3))
    unchecked = Ledger(real_store, keys=K1).verify()
    assert unchecked.ok and unchecked.accounts == 2
    held = Ledger(real_store, keys=K1).verify(expect_head=clean.head)
    assert any("registry entry 3 is not the one expected" in p for p in held.problems)


def test_an_unkeyed_legacy_journal_is_refused(real_store: Store) -> None:
    opened(real_store)
    item = entry(real_store, "acme", 3)
    legacy = {k: v for k, v in item.data.items() if k not in ("kid", "claims")}
    real_store.put(Item(item.pk, item.sk, item.version, legacy))
    report = Ledger(real_store, keys=K1).verify()
    assert any("entry 3 is unkeyed" in p for p in report.problems), report.problems


def test_a_command_applied_twice_because_its_claim_vanished_is_reported(real_store: Store) -> None:
    ledger = opened(real_store)
    ledger.execute("acme", "grant", {"amount": 5}, key="k")
    ledger.execute("acme", "grant", {"amount": 1})  # "k" is indexed, no longer the head
    real_store_delete(real_store, account_pk("acme"), key_claim("k"))  # lost or deleted
    Ledger(real_store, keys=K1).execute("acme", "grant", {"amount": 5}, key="k")
    report = Ledger(real_store, keys=K1).verify()
    assert any("again within its window" in p for p in report.problems), report.problems


def real_store_delete(store: Store, pk: str, sk: str) -> None:
    """Delete one item as a table writer could (the port has no delete; each adapter can)."""
    from functions.store.dynamodb import DynamoStore
    from functions.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        store._conn().execute("DELETE FROM items WHERE pk = ? AND sk = ?", (pk, sk))
    else:
        assert isinstance(store, DynamoStore)
        store._client.delete_item(TableName=store.table, Key={"pk": {"S": pk}, "sk": {"S": sk}})
