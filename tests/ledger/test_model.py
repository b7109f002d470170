"""The ledger as a state machine (hypothesis), checked step by step against a simple model."""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from functions.errors import Conflict, NotFound
from functions.store.sqlite import SqliteStore
from ledger_fn.ledger import Ledger
from tests.clock import Clock

amounts = st.integers(min_value=1, max_value=10_000)


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")
    settled = Bundle("settled")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = TemporaryDirectory()
        self.clock = Clock()
        self.ledger = Ledger(
            SqliteStore(Path(self.tmp.name) / "m.db"), clock=self.clock, checkpoint_every=3
        )
        self.ledger.open_account("m")
        # The model: plain integers and a dict of open holds.
        self.available = self.spent = self.expired = self.granted = 0
        self.open: dict[str, tuple[int, float]] = {}  # hold id -> (amount, expires at)
        self.captured: dict[str, int] = {}
        self.n = 0

    def key(self) -> str:
        self.n += 1
        return f"k{self.n}"

    @rule(amount=amounts)
    def grant(self, amount: int) -> None:
        self.ledger.execute("m", "grant", {"amount": amount}, key=self.key())
        self.available += amount
        self.granted += amount

    @rule(target=holds, amount=amounts, ttl=st.integers(1, 100))
    def authorize(self, amount: int, ttl: int) -> str:
        r = self.ledger.execute(
            "m", "authorize", {"amount": amount, "ttl_seconds": ttl}, key=self.key()
        )
        if amount > self.available:
            assert r.get("declined"), r
            return "m:0"  # a declined request: later uses of it must fail
        self.available -= amount
        self.open[r["hold_id"]] = (amount, self.clock() + ttl)
        hold_id: str = r["hold_id"]
        return hold_id

    @rule(target=settled, hold=consumes(holds), amount=amounts)
    def settle(self, hold: str, amount: int) -> str:
        try:
            r = self.ledger.execute(
                "m", "settle", {"hold_id": hold, "amount": amount}, key=self.key()
            )
        except (Conflict, NotFound):
            assert hold not in self.open  # declined, voided or expired before
            return "m:0"
        held, _ = self.open.pop(hold)
        captured = min(held, amount)
        assert r["captured"] == captured
        self.spent += captured
        self.available += held - captured
        self.captured[hold] = captured
        return hold

    @rule(hold=consumes(holds))
    def void(self, hold: str) -> None:
        if hold not in self.open:
            return
        self.ledger.execute("m", "refund", {"hold_id": hold}, key=self.key())
        held, _ = self.open.pop(hold)
        self.available += held

    @rule(hold=settled, amount=amounts)
    def refund_settled(self, hold: str, amount: int) -> None:
        left = self.captured.get(hold, 0)
        if hold == "m:0":
            return
        try:
            self.ledger.execute("m", "refund", {"hold_id": hold, "amount": amount}, key=self.key())
        except Conflict:
            assert amount > left
            return
        assert amount <= left
        self.captured[hold] = left - amount
        self.available += amount
        self.granted += amount  # a refund comes back as a refund lot

    @rule(seconds=st.integers(1, 120))
    def time_passes_and_sweep(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.ledger.sweep()
        for hold, (held, expires) in list(self.open.items()):
            if expires <= self.clock():
                del self.open[hold]
                self.available += held

    @precondition(lambda self: self.n > 0)
    @rule()
    def replay_the_last_command_changes_nothing(self) -> None:
        before = self.ledger.balance("m")
        entry = self.ledger.journal("m", after=max(0, before_seq(self.ledger) - 1), limit=1)[0]
        op = entry["op"]
        if op["key"] is not None:
            again = self.ledger.execute("m", op["kind"], op["args"], key=op["key"])
            assert again == entry["result"]
        assert self.ledger.balance("m") == before

    @invariant()
    def matches_the_model(self) -> None:
        b = self.ledger.balance("m")
        held = sum(amount for amount, _ in self.open.values())
        assert (b["available"], b["held"], b["spent"], b["granted"]) == (
            self.available,
            held,
            self.spent,
            self.granted,
        )
        assert b["granted"] == b["available"] + b["held"] + b["spent"] + b["expired"]

    def teardown(self) -> None:
        assert Ledger(self.ledger.store).verify().ok
        self.tmp.cleanup()


def before_seq(ledger: Ledger) -> int:
    return ledger.state("m").seq


LedgerMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
