"""The account registry: a keyed chain of account openings that the sweep, the monthly renewal,
the admin listing and ``verify`` walk.

The store port reads only by key and prefix, so accounts (each in its own partition) can only be
found from a list; a list of plain items is one that deleting an item shortens silently. The
registry is therefore a journal of its own, in partition ``ACCOUNTS``: entry ``A#<n>`` names the
account opened n-th and carries the MAC (ledger_fn/keys.py) of its number, account, time and its
predecessor's MAC. Deleting or editing an entry breaks the chain where it was, which ``verify``
reports; forging one needs a ledger key. The newest entry is the one a table writer could delete
without a trace in the chain: ``verify`` prints the head (number and MAC) so that a later run can
be held to it (``--expect-head``).

An opening is registered before its account's first journal entry: a crash in between leaves a
registered account with no journal, which every walker skips. A retried opening may register the
same account twice; walkers meet it twice and the second visit finds nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from functions.store import Absent, ConditionFailed, Item, Store, query_all
from ledger_fn.keys import LedgerKeys

PK = "ACCOUNTS"
PREFIX = "A#"
GENESIS = "0" * 64
PAGE = 500
MAX_ATTEMPTS = 200


def entry_sk(n: int) -> str:
    return f"{PREFIX}{n:012d}"


@dataclass(frozen=True)
class Registered:
    n: int
    account_id: str


@dataclass
class RegistryReport:
    accounts: list[str] = field(default_factory=list)  # in order of opening, each once
    head: tuple[int, str] = (0, GENESIS)  # the newest entry's number and MAC
    problems: list[str] = field(default_factory=list)


class Registry:
    def __init__(self, store: Store, keys: LedgerKeys, clock: Callable[[], float]) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock

    def add(self, account_id: str) -> int:
        """Register an opening at the end of the chain; returns its number."""
        for _ in range(MAX_ATTEMPTS):
            tail = self.store.query(PK, PREFIX, limit=1, descending=True)
            n, prev = (tail[0].data["n"], tail[0].data["hash"]) if tail else (0, GENESIS)
            body = {"n": n + 1, "account_id": account_id, "at": int(self.clock()), "prev": prev}
            kid, mac = self.keys.sign(body)
            try:
                item = Item(PK, entry_sk(n + 1), 1, {**body, "kid": kid, "hash": mac})
                self.store.put(item, Absent())
            except ConditionFailed:
                continue
            return n + 1
        raise ConditionFailed("the account registry stays contended")

    def walk(self, after: int = 0) -> Iterator[Registered]:
        """Registered openings after number ``after``, in order (an account may come twice)."""
        for item in query_all(self.store, PK, PREFIX, after=entry_sk(after), page_size=PAGE):
            yield Registered(int(item.data["n"]), str(item.data["account_id"]))

    def check(self) -> RegistryReport:
        """Walk the whole chain checking every link and MAC."""
        report = RegistryReport()
        seen: set[str] = set()
        prev, expected = GENESIS, 1
        for item in query_all(self.store, PK, PREFIX, page_size=PAGE):
            data = dict(item.data)
            n = data.get("n")
            if n != expected:
                report.problems.append(f"registry entry {expected} is missing (next is {n})")
            body = {k: data.get(k) for k in ("n", "account_id", "at", "prev")}
            if not self.keys.verifies(data.get("kid"), body, str(data.get("hash"))):
                report.problems.append(f"registry entry {n} does not match its MAC")
            elif data["prev"] != prev and n == expected:
                report.problems.append(f"registry entry {n} does not follow entry {n - 1}")
            account = str(data.get("account_id"))
            if account not in seen:
                seen.add(account)
                report.accounts.append(account)
            prev, expected = str(data.get("hash")), int(n or expected) + 1
            report.head = (expected - 1, prev)
        return report
