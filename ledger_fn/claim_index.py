"""The claim index: one small item per claimed name (``ACCT#<id>`` / ``<claim name>``) pointing to
the journal entry that claimed it, with a TTL (the store's ``expires_at``: DynamoDB deletes it
some time after, the sqlite adapter when the sweep purges).

The journal entry is the truth; the index only finds it. It is written after the entry, and the
next committer of the account writes it first if the previous one could not (ledger.py), so every
entry before the journal's head is indexed: a reader that loaded the state at head H finds every
claim in the index or among the claims of entry H itself (``AccountState.last_claims``).

A record lives as long as its claim; a reader ignores a record past its ``expires_at`` by its
own clock (DynamoDB may keep it for a while), and a later entry claiming the same name replaces it
(the record always names the newest claimant).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from functions.accounts import account_pk
from functions.store import Absent, ConditionFailed, Item, Store, VersionIs

MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class Claimed:
    seq: int  # the journal entry that claimed the name
    digest: str  # what it asked (claims.py)


class ClaimIndex:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def find(self, account_id: str, name: str) -> Claimed | None:
        item = self.store.get(account_pk(account_id), name)
        if item is None or (item.expires_at is not None and item.expires_at <= self.clock()):
            return None
        return Claimed(int(item.data["seq"]), str(item.data["digest"]))

    def record(self, account_id: str, name: str, claimed: Claimed, expires_at: int) -> None:
        """Point ``name`` at ``claimed`` unless a newer entry claims it already (idempotent)."""
        pk = account_pk(account_id)
        data = {"seq": claimed.seq, "digest": claimed.digest}
        for _ in range(MAX_ATTEMPTS):
            try:
                self.store.put(Item(pk, name, 1, data, expires_at), Absent())
                return
            except ConditionFailed:
                pass
            current = self.store.get(pk, name)
            if current is None:
                continue  # deleted meanwhile (its TTL): write it again
            if int(current.data["seq"]) >= claimed.seq:
                return
            replaced = Item(pk, name, current.version + 1, data, expires_at)
            try:
                self.store.put(replaced, VersionIs(current.version))
                return
            except ConditionFailed:
                continue
        raise ConditionFailed(f"claim {name} of account {account_id} stays contended")
