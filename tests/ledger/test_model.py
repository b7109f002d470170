"""The ledger as a state machine (hypothesis), checked step by step against a simple model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

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
from functions.store.port import encode_data
from functions.store.sqlite import SqliteStore
from ledger_fn import footprint
from ledger_fn.ledger import Ledger
from tests.clock import Clock

amounts = st.integers(min_value=1, max_value=10_000)
references = st.sampled_from(["ref-a", "ref-b", "ref-c"])


@dataclass
class Hold:
    amount: int
    expires: float
    ended: str = "open"  # open | settled | voided | expired


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
        # The model: plain integers and the holds.
        self.available = self.spent = self.granted = self.shortfall = self.waived = 0
        self.hold: dict[str, Hold] = {}
        self.captured: dict[str, int] = {}
        self.references: dict[str, int] = {}  # grant reference -> amount granted under it
        self.refund_ids: set[str] = set()
        self.commands: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = []
        self.n = 0

    def run(self, kind: str, args: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        key = f"k{self.n}"
        result = self.ledger.execute("m", kind, args, key=key)  # type: ignore[arg-type]
        self.commands.append((kind, args, key, result))
        return result

    @rule(amount=amounts)
    def grant(self, amount: int) -> None:
        self.run("grant", {"amount": amount})
        self.available += amount
        self.granted += amount

    @rule(reference=references, amount=st.sampled_from([100, 200]))
    def grant_by_reference(self, reference: str, amount: int) -> None:
        """The same business reference under another event id grants once."""
        before = self.references.get(reference)
        try:
            result = self.run("grant", {"amount": amount, "reference": reference})
        except Conflict:
            assert before is not None and before != amount
            return
        assert before in (None, amount)
        assert result["amount"] == amount
        if before is None:
            self.references[reference] = amount
            self.available += amount
            self.granted += amount

    @rule(target=holds, amount=amounts, ttl=st.integers(1, 100))
    def authorize(self, amount: int, ttl: int) -> str:
        r = self.run("authorize", {"amount": amount, "ttl_seconds": ttl})
        if amount > self.available:
            assert r.get("declined"), r
            return "m:0"  # a declined request: later uses of it must fail
        self.available -= amount
        self.hold[r["hold_id"]] = Hold(amount, self.clock() + ttl)
        hold_id: str = r["hold_id"]
        return hold_id

    @rule(target=settled, hold=consumes(holds), amount=amounts)
    def settle(self, hold: str, amount: int) -> str:
        known = self.hold.get(hold)
        try:
            r = self.run("settle", {"hold_id": hold, "amount": amount})
        except (Conflict, NotFound):
            assert known is None or known.ended == "settled"
            return "m:0"
        assert known is not None and known.ended != "settled"
        owed = min(known.amount, amount)
        if known.ended == "open":
            captured = owed
            self.available += known.amount - captured
        elif known.ended == "expired":  # late: from what is there, the rest a shortfall
            captured = min(owed, self.available)
            self.available -= captured
            self.shortfall += owed - captured
            assert (r["late"], r["shortfall"]) == ("expired", owed - captured)
        else:  # voided: nothing charged
            captured = 0
            self.waived += owed
            assert (r["late"], r["waived"]) == ("voided", owed)
        assert r["captured"] == captured
        self.spent += captured
        known.ended = "settled"
        self.captured[hold] = captured
        return hold

    @rule(hold=holds)
    def void(self, hold: str) -> None:
        known = self.hold.get(hold)
        if known is None or known.ended != "open":
            return
        self.run("refund", {"hold_id": hold})
        self.available += known.amount
        known.ended = "voided"

    @rule(hold=st.one_of(holds, settled))
    def failure_report(self, hold: str) -> None:
        """inference.failed voids an open hold and never refunds a settled one."""
        known = self.hold.get(hold)
        try:
            r = self.run("refund", {"hold_id": hold, "void_only": True})
        except (Conflict, NotFound):
            assert known is None or known.ended != "open"
            return
        assert known is not None and known.ended == "open" and r["voided"]
        self.available += known.amount
        known.ended = "voided"

    @rule(hold=settled, amount=amounts, refund_id=st.sampled_from([None, "r1", "r2"]))
    def refund_settled(self, hold: str, amount: int, refund_id: str | None) -> None:
        left = self.captured.get(hold, 0)
        if hold == "m:0":
            return
        args: dict[str, Any] = {"hold_id": hold, "amount": amount}
        if refund_id is not None:
            args["refund_id"] = refund_id
        again = refund_id is not None and f"{hold}/{refund_id}" in self.refund_ids
        try:
            self.run("refund", args)
        except Conflict:
            assert again or amount > left
            return
        if again:
            return  # the same refund under another event id: refunded once
        assert amount <= left
        if refund_id is not None:
            self.refund_ids.add(f"{hold}/{refund_id}")
        self.captured[hold] = left - amount
        self.available += amount
        self.granted += amount  # a refund comes back as a refund lot

    @rule(seconds=st.integers(1, 120))
    def time_passes_and_sweep(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.ledger.sweep()
        for known in self.hold.values():
            if known.ended == "open" and known.expires <= self.clock():
                known.ended = "expired"
                self.available += known.amount

    @precondition(lambda self: self.commands)
    @rule(data=st.data())
    def redeliver_an_earlier_command(self, data: st.DataObject) -> None:
        """Any earlier command, delivered again under its key, gets its first result."""
        before = self.ledger.balance("m")
        kind, args, key, result = data.draw(st.sampled_from(self.commands))
        assert self.ledger.execute("m", kind, args, key=key) == result
        assert self.ledger.balance("m") == before

    @invariant()
    def matches_the_model(self) -> None:
        b = self.ledger.balance("m")
        held = sum(h.amount for h in self.hold.values() if h.ended == "open")
        assert (b["available"], b["held"], b["spent"], b["granted"]) == (
            self.available,
            held,
            self.spent,
            self.granted,
        )
        assert (b["shortfall"], b["waived"]) == (self.shortfall, self.waived)
        assert b["granted"] == b["available"] + b["held"] + b["spent"] + b["expired"]

    @invariant()
    def the_size_bound_holds_and_is_kept_exactly(self) -> None:
        loaded = self.ledger._load("m")
        assert loaded.elements == footprint.elements(loaded.state)
        assert loaded.bytes >= len(encode_data(loaded.state.model_dump(mode="json")))

    def teardown(self) -> None:
        report = Ledger(self.ledger.store).verify()
        assert report.ok, report.problems
        self.tmp.cleanup()


LedgerMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
