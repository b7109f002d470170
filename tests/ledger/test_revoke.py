"""Revoking a refunded top-up's unspent credits, and restoring them when the refund is denied:
pure journal operations, checked against the invariant and replayed by verify."""

from __future__ import annotations

import pytest

from functions.errors import Conflict, NotFound
from functions.store import Store
from ledger_fn.ledger import Ledger
from tests.clock import Clock
from tests.ledger.helpers import invariant


@pytest.fixture
def ledger(sqlite_store: Store) -> Ledger:
    ledger = Ledger(sqlite_store, clock=Clock())
    ledger.open_account("a")
    ledger.execute("a", "grant", {"amount": 1000, "reference": "tu-1"})
    return ledger


def _lot(ledger: Ledger) -> str:
    [lot] = ledger.balance("a")["lots"]
    return str(lot["id"])


def test_a_revocation_takes_only_unspent_credits_and_keeps_the_invariant(ledger: Ledger) -> None:
    lot = _lot(ledger)
    hold = ledger.execute("a", "authorize", {"amount": 300, "ttl_seconds": 60})
    with pytest.raises(Conflict, match="700 unspent credits to take back, asked 800"):
        ledger.execute("a", "revoke", {"lot_id": lot, "amount": 800, "reference": "r1"})
    ledger.execute("a", "revoke", {"lot_id": lot, "amount": 700, "reference": "r1"})
    b = invariant(ledger, "a")
    assert (b["granted"], b["available"], b["held"], b["revoked"]) == (300, 0, 300, 700)
    ledger.execute("a", "settle", {"hold_id": hold["hold_id"], "amount": 300})
    assert invariant(ledger, "a")["spent"] == 300
    with pytest.raises(Conflict, match="already made"):
        ledger.execute("a", "revoke", {"lot_id": lot, "amount": 1, "reference": "r1"})
    assert ledger.verify().ok


def test_a_restore_gives_back_exactly_once_even_to_a_forgotten_lot(ledger: Ledger) -> None:
    lot = _lot(ledger)
    ledger.execute("a", "revoke", {"lot_id": lot, "amount": 1000, "reference": "r1"})
    assert ledger.balance("a")["lots"] == []  # fully revoked: forgotten
    ledger.execute("a", "restore", {"reference": "r1"})
    b = invariant(ledger, "a")
    assert (b["granted"], b["available"], b["revoked"]) == (1000, 1000, 0)
    assert ledger.balance("a")["lots"][0]["reference"] == "tu-1"
    with pytest.raises(Conflict, match="already restored"):
        ledger.execute("a", "restore", {"reference": "r1"})
    with pytest.raises(NotFound):
        ledger.execute("a", "restore", {"reference": "never"})
    assert ledger.verify().ok
