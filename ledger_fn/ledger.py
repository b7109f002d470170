"""The token ledger over the store: load (with roll-forward), commit, accounts, sweep, verify.

Layout in the table (partition ``ACCT#<id>``):
  ``J#<seq>``  journal entries — the truth; entry N+1 is written with put-if-absent, so exactly one
               writer commits each step of an account, and a crash after that single write loses
               nothing: the next reader rolls the state forward from the journal;
  ``STATE``    a checkpoint of the state every ``checkpoint_every`` entries (never authoritative);
  ``META``     account metadata (plan, slices; see the admin API).
and ``ACCOUNTS``/``<id>``, the registry the sweep walks.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from functions.accounts import META_SK, account_pk
from functions.errors import BadRequest, Conflict, NotFound, Unavailable
from functions.idempotency import payload_hash
from functions.store import (
    Absent,
    ConditionFailed,
    Contended,
    Item,
    Store,
    VersionIs,
    query_all,
    update_item,
)
from ledger_fn.journal import ENTRY_PREFIX, chain_hash, entry_data, entry_sk
from ledger_fn.state import AccountState, Op, OpKind, apply

REGISTRY = "ACCOUNTS"
STATE_SK = "STATE"
MAX_COMMIT_ATTEMPTS = 200
CACHE_ACCOUNTS = 4096
PAGE = 500


class CorruptJournal(Exception):
    """A journal entry does not chain to its predecessor: the journal was tampered with."""


@dataclass
class _Loaded:
    state: AccountState
    checkpoint_version: int  # 0: no checkpoint item yet
    checkpoint_seq: int


@dataclass
class VerifyReport:
    accounts: int = 0
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Ledger:
    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        checkpoint_every: int = 64,
    ) -> None:
        assert checkpoint_every >= 1
        self.store = store
        self.clock = clock
        self.checkpoint_every = checkpoint_every
        # Last state seen per account: only a starting point, always rolled forward from the
        # journal before use, so it can be stale but never wrong.
        self._cache: OrderedDict[str, _Loaded] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- accounts -------------------------------------------------------------------------------

    def open_account(self, account_id: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create an account (journal entry 1). Its registry item is written first: an orphan
        registry item (crash before the journal write) is harmless, the sweep skips it."""
        now = int(self.clock())
        self.store.put(Item(REGISTRY, account_id, 1, {"created": now}))
        # On a retry after a crash META exists already: the journal decides if the account does.
        with contextlib.suppress(ConditionFailed):
            self.store.put(Item(account_pk(account_id), META_SK, 1, dict(meta or {})), Absent())
        try:
            self._commit(account_id, Op(kind="open", at=now), create=True)
        except ConditionFailed:
            raise Conflict(f"account {account_id} already exists") from None
        return self.balance(account_id)

    def exists(self, account_id: str) -> bool:
        return self.store.get(account_pk(account_id), entry_sk(1)) is not None

    def meta(self, account_id: str) -> Item:
        item = self.store.get(account_pk(account_id), META_SK)
        if item is None or not self.exists(account_id):
            raise NotFound(f"no account {account_id}")
        return item

    def update_meta(self, account_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        if not self.exists(account_id):
            raise NotFound(f"no account {account_id}")

        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            if data is None:
                raise NotFound(f"no account {account_id}")
            return {**data, **changes}

        try:
            return update_item(self.store, account_pk(account_id), META_SK, change).data
        except Contended:
            raise Unavailable(f"account {account_id} metadata is contended; retry") from None

    def accounts(self) -> Iterator[str]:
        return (item.sk for item in query_all(self.store, REGISTRY, page_size=PAGE))

    def state(self, account_id: str) -> AccountState:
        loaded = self._load(account_id)
        if loaded.state.seq == 0:
            raise NotFound(f"no account {account_id}")
        return loaded.state

    def balance(self, account_id: str) -> dict[str, Any]:
        state = self.state(account_id)
        return {
            "account_id": account_id,
            **state.balances(),
            "refunded": state.refunded,
            "revoked": state.revoked,
            "open_holds": len(state.holds),
            "lots": [lot.model_dump() for lot in state.lots.values() if lot.remaining > 0],
        }

    # -- commands -------------------------------------------------------------------------------

    def execute(
        self,
        account_id: str,
        kind: OpKind,
        args: dict[str, Any],
        *,
        key: str | None = None,
        payload: Any = None,
    ) -> dict[str, Any]:
        """Apply one command once. ``key`` (e.g. a CloudEvent's source#id) makes it idempotent:
        a replay returns the first result; a replay with another ``payload`` is a Conflict."""
        digest = payload_hash(payload if payload is not None else args) if key else None
        return self._commit(account_id, Op(kind=kind, at=0, key=key, digest=digest, args=args))

    def _commit(self, account_id: str, op: Op, *, create: bool = False) -> dict[str, Any]:
        pk = account_pk(account_id)
        for attempt in range(MAX_COMMIT_ATTEMPTS):
            loaded = self._load(account_id)
            state = loaded.state
            if state.seq == 0 and not create:
                raise NotFound(f"no account {account_id}")
            if op.key is not None and op.key in state.recent:
                seen = state.recent[op.key]
                if seen.digest != op.digest:
                    raise Conflict(
                        f"command {op.key} was already applied with different data; "
                        "send changed data as a new command with a new id"
                    )
                return self._result_at(account_id, seen.seq)
            timed = op.model_copy(update={"at": int(self.clock())})
            new, result = apply(state, timed)
            data = entry_data(state.head, new.seq, timed, result, new.balances())
            new.head = data["hash"]
            try:
                self.store.put(Item(pk, entry_sk(new.seq), 1, data), Absent())
            except ConditionFailed:
                if create:
                    raise
                # Another writer committed this step first: roll forward and try again.
                time.sleep(random.uniform(0, 0.001 * min(attempt, 20)))
                continue
            self._remember(_Loaded(new, loaded.checkpoint_version, loaded.checkpoint_seq))
            self._maybe_checkpoint(account_id)
            return result
        raise Unavailable(f"account {account_id} is too contended right now; retry")

    def _result_at(self, account_id: str, seq: int) -> dict[str, Any]:
        item = self.store.get(account_pk(account_id), entry_sk(seq))
        assert item is not None, f"journal entry {seq} of {account_id} vanished"
        result: dict[str, Any] = item.data["result"]
        return result

    # -- loading and checkpoints ----------------------------------------------------------------

    def _load(self, account_id: str) -> _Loaded:
        with self._cache_lock:
            cached = self._cache.get(account_id)
        if cached is None:
            cached = self._read_checkpoint(account_id)
        state = cached.state
        for item in self._entries(account_id, after=state.seq):
            state = replay(state, item.data)
        loaded = _Loaded(state, cached.checkpoint_version, cached.checkpoint_seq)
        self._remember(loaded)
        return loaded

    def _read_checkpoint(self, account_id: str) -> _Loaded:
        item = self.store.get(account_pk(account_id), STATE_SK)
        if item is None:
            return _Loaded(AccountState(account_id=account_id), 0, 0)
        state = AccountState.model_validate(item.data)
        return _Loaded(state, item.version, state.seq)

    def _remember(self, loaded: _Loaded) -> None:
        account_id = loaded.state.account_id
        with self._cache_lock:
            current = self._cache.get(account_id)
            if current is None or current.state.seq <= loaded.state.seq:
                self._cache[account_id] = loaded
                self._cache.move_to_end(account_id)
            while len(self._cache) > CACHE_ACCOUNTS:
                self._cache.popitem(last=False)

    def _maybe_checkpoint(self, account_id: str) -> None:
        with self._cache_lock:
            loaded = self._cache.get(account_id)
        if loaded is None or loaded.state.seq - loaded.checkpoint_seq < self.checkpoint_every:
            return
        version = loaded.checkpoint_version
        item = Item(
            account_pk(account_id), STATE_SK, version + 1, loaded.state.model_dump(mode="json")
        )
        try:
            self.store.put(item, VersionIs(version) if version else Absent())
            fresh = _Loaded(loaded.state, version + 1, loaded.state.seq)
        except ConditionFailed:
            # Someone else checkpointed; pick up their version next time we load.
            fresh = self._read_checkpoint(account_id)
        with self._cache_lock:
            current = self._cache.get(account_id)
            if current is not None and current.state.seq >= fresh.state.seq:
                fresh = _Loaded(current.state, fresh.checkpoint_version, fresh.checkpoint_seq)
            self._cache[account_id] = fresh

    # -- sweep ----------------------------------------------------------------------------------

    def sweep(self) -> dict[str, Any]:
        """Expire overdue holds (their credits return to their lots) and overdue lots."""
        accounts = lots = 0
        expired: list[dict[str, Any]] = []
        now = int(self.clock())
        for account_id in self.accounts():
            state = self._load(account_id).state
            if state.seq == 0:
                continue  # an orphan registry item
            accounts += 1
            for hold in [h for h in state.holds.values() if h.expires_at <= now]:
                result = self._try(account_id, "expire_hold", {"hold_id": hold.id})
                if result is not None:
                    expired.append(result)
            for lot in [
                lot
                for lot in state.lots.values()
                if lot.remaining > 0 and lot.expires_at is not None and lot.expires_at <= now
            ]:
                lots += self._try(account_id, "expire_lot", {"lot_id": lot.id}) is not None
        return {
            "accounts": accounts,
            "holds_expired": len(expired),
            "lots_expired": lots,
            "expired": expired,
        }

    def _try(self, account_id: str, kind: OpKind, args: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return self._commit(account_id, Op(kind=kind, at=0, args=args))
        except Conflict:
            return None  # resolved meanwhile by someone else: nothing to expire

    # -- journal --------------------------------------------------------------------------------

    def journal(self, account_id: str, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        if not 1 <= limit <= PAGE:
            raise BadRequest(f"limit must be 1..{PAGE}")
        self.state(account_id)  # NotFound for unknown accounts
        items = self.store.query(
            account_pk(account_id), ENTRY_PREFIX, after=entry_sk(after), limit=limit
        )
        return [item.data for item in items]

    def _entries(self, account_id: str, *, after: int) -> Iterator[Item]:
        """The journal entries of an account after entry ``after``, in order, page by page."""
        return query_all(
            self.store, account_pk(account_id), ENTRY_PREFIX, after=entry_sk(after), page_size=PAGE
        )

    def verify(self) -> VerifyReport:
        """Check every chain link and recompute every balance from the journal alone."""
        report = VerifyReport()
        for account_id in self.accounts():
            state = AccountState(account_id=account_id)
            try:
                for item in self._entries(account_id, after=0):
                    state = replay(state, item.data, check_result=True)
                    report.entries += 1
            except (CorruptJournal, AssertionError) as exc:
                report.problems.append(f"account {account_id}: {exc}")
                continue
            if state.seq == 0:
                continue
            report.accounts += 1
            checkpoint = self.store.get(account_pk(account_id), STATE_SK)
            if checkpoint is not None:
                saved = AccountState.model_validate(checkpoint.data)
                if saved.seq > state.seq:
                    report.problems.append(
                        f"account {account_id}: checkpoint at {saved.seq} is past the journal"
                        f" end {state.seq}"
                    )
                elif saved.seq == state.seq and saved.balances() != state.balances():
                    report.problems.append(
                        f"account {account_id}: checkpoint balances differ from the journal"
                    )
        return report


def replay(
    state: AccountState, entry: dict[str, Any], *, check_result: bool = False
) -> AccountState:
    """Apply one stored journal entry, checking that it chains to ``state``."""
    seq = entry["seq"]
    if seq != state.seq + 1 or entry["prev"] != state.head:
        raise CorruptJournal(f"entry {seq} does not follow entry {state.seq}")
    op = Op.model_validate(entry["op"])
    if chain_hash(state.head, seq, op, entry["result"], entry["balances"]) != entry["hash"]:
        raise CorruptJournal(f"entry {seq} does not match its hash")
    new, result = apply(state, op)
    if check_result and (result != entry["result"] or new.balances() != entry["balances"]):
        raise CorruptJournal(
            f"entry {seq}: replay gives {new.balances()}, journal says {entry['balances']}"
        )
    new.head = entry["hash"]
    return new


__all__ = ["Ledger", "VerifyReport", "replay"]
