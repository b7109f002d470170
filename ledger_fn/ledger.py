"""The token ledger over the store: load (with roll-forward), commit, accounts, sweep, verify.

Layout in the table (partition ``ACCT#<id>``):
  ``J#<seq>``   journal entries — the truth; entry N+1 is written with put-if-absent, so exactly one
                writer commits each step of an account, and a crash after that single write loses
                nothing: the next reader rolls the state forward from the journal;
  ``K#…`` ``B#…`` ``X#…`` ``L#…``  the claim index (claim_index.py): pointers from command keys,
                business references and resolved holds to the entries that claimed them, each
                with a TTL;
  ``STATE``     a checkpoint of the state every ``checkpoint_every`` entries (never authoritative,
                signed like the journal);
  ``META``      account metadata (plan, slices; see the admin API);
and the account registry, a chain in partition ``ACCOUNTS`` (registry.py).

Committing an operation on an account whose journal ends at entry N:
  1. load the state after N (cached or checkpointed, rolled forward through the journal);
  2. if a name it claims (claims.py) is claimed already: a replay gets the first result, a
     command with other data is refused (409);
  3. apply it, and refuse it (409, nothing written) if it would grow the state past its budget;
  4. make sure entry N's claims are indexed (its committer may have died right after it);
  5. put entry N+1 if absent (another writer was first: back to 1);
  6. index N+1's claims, and checkpoint now and then: failures there are logged and repaired
     later, never answered as errors, since the command is committed.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from functions.accounts import META_SK, account_pk
from functions.errors import BadRequest, Conflict, FunctionError, NotFound, Unavailable
from functions.store import (
    Absent,
    ConditionFailed,
    Contended,
    Item,
    Store,
    StoreUnavailable,
    VersionIs,
    query_all,
    update_item,
)
from ledger_fn import footprint
from ledger_fn.claim_index import Claimed, ClaimIndex
from ledger_fn.claims import KEY, LATE, digest, lasting, resolved_claim
from ledger_fn.config import CACHE_BYTES, DEDUPE_S, REFERENCE_S, LedgerSettings
from ledger_fn.journal import ENTRY_PREFIX, CorruptJournal, check_entry, entry_data, entry_sk
from ledger_fn.keys import LedgerKeys
from ledger_fn.metrics import (
    BUDGET_REFUSALS,
    CACHE_GAUGE,
    CHECKPOINT_FAILURES,
    INDEX_FAILURES,
    LATE_SETTLES,
    SHORTFALL,
    WAIVED,
)
from ledger_fn.registry import PK as REGISTRY_PK
from ledger_fn.registry import Registry
from ledger_fn.registry import entry_sk as registry_sk
from ledger_fn.state import (
    AccountState,
    LateTerms,
    Op,
    OpKind,
    account_of,
    apply,
    requested_claims,
)

log = logging.getLogger(__name__)

STATE_SK = "STATE"
MAX_COMMIT_ATTEMPTS = 200
COMMIT_TURNS = 64  # lock stripes: commits of accounts in one stripe take turns in a process
PAGE = 500
# The most a state may take as a STATE item (the store's own limit is 350,000 B of data,
# DynamoDB's 400 KB per item): an operation that would grow it past this is refused.
STATE_BUDGET_BYTES = 300_000
# Cached states take this many bytes of memory per byte of their JSON (bench/ledger_state.py).
MEMORY_PER_STATE_BYTE = 8
CACHE_ENTRY_OVERHEAD = 4096


@dataclass
class _Loaded:
    state: AccountState
    checkpoint_version: int  # 0: no checkpoint item yet
    checkpoint_seq: int
    elements: int  # footprint.elements(state)
    indexed: int = 0  # the newest entry whose claims this process knows are in the index
    next_checkpoint: int = 0  # after a failed checkpoint: not before this entry
    size: int | None = None  # footprint.total, once computed

    @property
    def bytes(self) -> int:
        if self.size is None:
            self.size = footprint.total(self.state, self.elements)
        return self.size


@dataclass
class VerifyReport:
    accounts: int = 0
    entries: int = 0
    head: tuple[int, str] = (0, "")  # the account registry's newest entry: number and MAC
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
        keys: LedgerKeys | None = None,
        dedupe_s: int = DEDUPE_S,
        reference_s: int = REFERENCE_S,
        budget_bytes: int = STATE_BUDGET_BYTES,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        """``keys`` default to TOLLGATE_LEDGER_KEYS; ``dedupe_s``: how long a command key stays
        claimed; ``reference_s``: a business reference; ``cache_bytes``: estimated memory."""
        assert checkpoint_every >= 1 and dedupe_s > 0 and reference_s > 0
        self.store = store
        self.clock = clock
        self.checkpoint_every = checkpoint_every
        self.keys = keys or LedgerKeys.from_env()
        self.dedupe_s = dedupe_s
        self.reference_s = reference_s
        self.budget_bytes = budget_bytes
        self.cache_bytes = cache_bytes
        self.index = ClaimIndex(store, clock)
        self.registry = Registry(store, self.keys, clock)
        # Last state seen per account: only a starting point, always rolled forward from the
        # journal before use, so it can be stale but never wrong. Bounded by estimated bytes.
        self._cache: OrderedDict[str, tuple[_Loaded, int]] = OrderedDict()
        self._cached_bytes = 0
        self._cache_lock = threading.Lock()
        self._turns = [threading.Lock() for _ in range(COMMIT_TURNS)]

    @classmethod
    def configured(cls, store: Store, settings: LedgerSettings) -> Ledger:
        return cls(
            store,
            keys=settings.keys,
            dedupe_s=settings.dedupe_s,
            cache_bytes=settings.cache_bytes,
        )

    # -- accounts -------------------------------------------------------------------------------

    def open_account(self, account_id: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create an account (journal entry 1), registered first: a registration whose journal
        never started (crash in between) is skipped by everything that walks the registry."""
        now = int(self.clock())
        # On a retry after a crash META exists already: the journal decides if the account does.
        with contextlib.suppress(ConditionFailed):
            self.store.put(Item(account_pk(account_id), META_SK, 1, dict(meta or {})), Absent())
        if self.exists(account_id):
            raise Conflict(f"account {account_id} already exists")
        self.registry.add(account_id)
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

    def accounts(self, after: int = 0) -> Iterator[str]:
        """Registered accounts in order of opening (a retried opening may come twice)."""
        return (registered.account_id for registered in self.registry.walk(after))

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
            "shortfall": state.shortfall,
            "waived": state.waived,
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
        """Apply one command once. ``key`` (e.g. a CloudEvent's source#id) makes it idempotent
        for ``dedupe_s``: a replay returns the first result; a replay with another ``payload``
        is a Conflict. Grants and refunds also dedupe on their business reference."""
        command_digest = digest(payload if payload is not None else args) if key else None
        clean = {name: value for name, value in args.items() if name != "late"}
        op = Op(kind=kind, at=0, key=key, digest=command_digest, args=clean)
        return self._commit(account_id, op)

    def _commit(self, account_id: str, op: Op, *, create: bool = False) -> dict[str, Any]:
        # Writers of one account in this process take turns: they would only collide on the
        # journal's next entry and retry (under load on one hot account, mostly retrying).
        # Other processes still race through put-if-absent, which alone decides.
        with self._turns[hash(account_id) % len(self._turns)]:
            return self._commit_now(account_id, op, create=create)

    def _commit_now(self, account_id: str, op: Op, *, create: bool) -> dict[str, Any]:
        pk = account_pk(account_id)
        for attempt in range(MAX_COMMIT_ATTEMPTS):
            loaded = self._load(account_id)
            state = loaded.state
            if state.seq == 0 and not create:
                raise NotFound(f"no account {account_id}")
            timed = self._with_late_terms(loaded, op.model_copy(update={"at": int(self.clock())}))
            first = self._first_result(loaded, timed)
            if first is not None:
                return first
            new, result = apply(state, timed)
            elements = loaded.elements + footprint.delta(state, new)
            size = self._check_budget(loaded, new, elements, timed.kind)
            self._index_head(loaded)
            data = entry_data(
                self.keys, state.head, new.seq, timed, result, new.balances(), new.last_claims
            )
            new.head = data["hash"]
            try:
                self.store.put(Item(pk, entry_sk(new.seq), 1, data), Absent())
            except ConditionFailed:
                if create:
                    raise
                # Another writer committed this step first: roll forward and try again.
                time.sleep(random.uniform(0, 0.001 * min(attempt, 20)))
                continue
            committed = _Loaded(
                new,
                loaded.checkpoint_version,
                loaded.checkpoint_seq,
                elements,
                indexed=state.seq,
                next_checkpoint=loaded.next_checkpoint,
                size=size,
            )
            self._remember(committed)
            _observe(result)
            self._index_committed(committed)
            self._maybe_checkpoint(committed)
            return result
        raise Unavailable(f"account {account_id} is too contended right now; retry")

    def _check_budget(self, loaded: _Loaded, new: AccountState, elements: int, kind: str) -> int:
        """The new state's size; Conflict if the operation would grow it past its budget (one
        that shrinks it is always allowed, so a full account can still settle, void, expire)."""
        size = footprint.total(new, elements)
        if size <= self.budget_bytes or size <= loaded.bytes or kind in _ALWAYS:
            return size
        BUDGET_REFUSALS.labels(kind).inc()
        raise Conflict(
            f"account {new.account_id} is full: this {kind} would grow its state to {size} "
            f"bytes, over its budget of {self.budget_bytes}; nothing changed. Settle or void "
            "open holds, or use up small lots, first."
        )

    # -- claims ---------------------------------------------------------------------------------

    def _claimed(self, loaded: _Loaded, name: str) -> Claimed | None:
        state = loaded.state
        if name in state.last_claims:  # the head entry's claims may not be indexed yet
            return Claimed(state.seq, state.last_claims[name])
        return self.index.find(state.account_id, name)

    def _first_result(self, loaded: _Loaded, op: Op) -> dict[str, Any] | None:
        """The result of the entry that claimed one of ``op``'s names first (a replay), or None
        if it claims nothing claimed yet; Conflict if it asks something else under them."""
        for name, wanted in requested_claims(op).items():
            hit = self._claimed(loaded, name)
            if hit is None:
                continue
            if name.startswith(LATE):
                raise Conflict(f"hold {op.args['hold_id']} was already settled after it expired")
            if hit.digest != wanted:
                if name.startswith(KEY):
                    raise Conflict(
                        f"command {op.key} was already applied with different data; "
                        "send changed data as a new command with a new id"
                    )
                reference = op.args.get("reference") or op.args.get("refund_id")
                raise Conflict(
                    f"{op.kind} reference {reference!r} was already applied with other terms "
                    f"(journal entry {hit.seq}); a different {op.kind} needs a new reference"
                )
            entry = self._entry(loaded.state.account_id, hit.seq)
            if name not in entry["claims"]:
                raise CorruptJournal(f"the claim index points {name} at entry {hit.seq} wrongly")
            result: dict[str, Any] = entry["result"]
            return result
        return None

    def _index_head(self, loaded: _Loaded) -> None:
        """Index the head entry's claims unless this process knows they are."""
        state = loaded.state
        if loaded.indexed >= state.seq:
            return
        if state.last_claims:
            try:
                self._index(state.account_id, state.seq, state.last_claims)
            except ConditionFailed as exc:
                raise Unavailable(f"account {state.account_id}: {exc}; retry") from exc
        loaded.indexed = state.seq

    def _index_committed(self, loaded: _Loaded) -> None:
        try:
            self._index_head(loaded)
        except (StoreUnavailable, Unavailable) as exc:
            INDEX_FAILURES.inc()
            log.warning(
                "account %s: claims of entry %d not indexed yet (the next commit will): %s",
                loaded.state.account_id,
                loaded.state.seq,
                exc,
            )

    def _index(self, account_id: str, seq: int, claims: dict[str, str]) -> None:
        now = int(self.clock())
        for name, claimed in claims.items():
            expires = now + (self.reference_s if lasting(name) else self.dedupe_s)
            self.index.record(account_id, name, Claimed(seq, claimed), expires)

    # -- late settles ---------------------------------------------------------------------------

    def _with_late_terms(self, loaded: _Loaded, op: Op) -> Op:
        """A settle of a hold that is no longer open and not settled gets, from the journal, how
        the hold ended and what it was authorized for (``apply`` then charges what it can)."""
        state = loaded.state
        hold_id = op.args.get("hold_id")
        if op.kind not in ("settle", "capture") or hold_id in state.holds:
            return op
        if hold_id in state.settled:
            return op
        assert isinstance(hold_id, str)
        seq = hold_id.rpartition(":")[2]
        if account_of(hold_id) != state.account_id or not seq.isdigit() or int(seq) >= state.seq:
            return op  # apply answers NotFound
        ended = self._claimed(loaded, resolved_claim(hold_id))
        if ended is None:
            return op  # settled or resolved longer ago than claims last: apply answers 409
        end = self._entry(state.account_id, ended.seq)
        authorized = self._entry(state.account_id, int(seq))
        if end["result"].get("hold_id") != hold_id or (
            authorized["op"]["kind"] != "authorize"
            or authorized["result"].get("hold_id") != hold_id
        ):
            raise CorruptJournal(f"the journal does not hold the ending of hold {hold_id}")
        args = authorized["op"]["args"]
        if bool(args.get("lease")) != (op.kind == "capture"):
            # A lease is captured request by request, never settled whole; a hold of one request
            # is settled, never captured as a lease request.
            what = "a credit lease" if args.get("lease") else "not a credit lease"
            raise Conflict(f"hold {hold_id} is {what}; this {op.kind} does not apply to it")
        terms = LateTerms(
            resolved=_ENDINGS.get(end["op"]["kind"], "returned"),
            amount=authorized["result"]["amount"],
            tier=args.get("tier"),
            model=args.get("model"),
            quote=args.get("quote"),
        )
        return op.model_copy(update={"args": {**op.args, "late": terms.model_dump(mode="json")}})

    def _entry(self, account_id: str, seq: int) -> dict[str, Any]:
        """One journal entry, its MAC checked."""
        item = self.store.get(account_pk(account_id), entry_sk(seq))
        if item is None:
            raise CorruptJournal(f"entry {seq} of account {account_id} is missing")
        check_entry(self.keys, item.data)
        return dict(item.data)

    # -- loading, cache and checkpoints ---------------------------------------------------------

    def _load(self, account_id: str) -> _Loaded:
        with self._cache_lock:
            hit = self._cache.get(account_id)
        cached = hit[0] if hit is not None else self._read_checkpoint(account_id)
        state, elements = cached.state, cached.elements
        for item in self._entries(account_id, after=state.seq):
            new = replay(self.keys, state, item.data)
            elements += footprint.delta(state, new)
            state = new
        if hit is not None and state is cached.state:
            return cached
        loaded = _Loaded(
            state,
            cached.checkpoint_version,
            cached.checkpoint_seq,
            elements,
            indexed=cached.indexed,
            next_checkpoint=cached.next_checkpoint,
        )
        self._remember(loaded)
        return loaded

    def _read_checkpoint(self, account_id: str) -> _Loaded:
        item = self.store.get(account_pk(account_id), STATE_SK)
        if item is None:
            return _Loaded(AccountState(account_id=account_id), 0, 0, 0)
        try:
            state = self._unseal(item.data)
        except CorruptJournal as exc:
            # Not trusted: start over from the journal (verify reports the checkpoint).
            log.error("account %s: checkpoint ignored: %s", account_id, exc)
            return _Loaded(AccountState(account_id=account_id), item.version, 0, 0)
        return _Loaded(state, item.version, state.seq, footprint.elements(state))

    def _seal(self, state: AccountState) -> dict[str, Any]:
        body = state.model_dump(mode="json")
        kid, mac = self.keys.sign(body)
        return {**body, "kid": kid, "mac": mac}

    def _unseal(self, data: dict[str, Any]) -> AccountState:
        body = {k: v for k, v in data.items() if k not in ("kid", "mac")}
        if not self.keys.verifies(data.get("kid"), body, str(data.get("mac"))):
            raise CorruptJournal("the checkpoint does not match its MAC")
        return AccountState.model_validate(body)

    def _remember(self, loaded: _Loaded) -> None:
        account_id = loaded.state.account_id
        size = CACHE_ENTRY_OVERHEAD + MEMORY_PER_STATE_BYTE * loaded.bytes
        with self._cache_lock:
            current = self._cache.get(account_id)
            if current is not None and current[0].state.seq > loaded.state.seq:
                return
            if current is not None:
                self._cached_bytes -= current[1]
            self._cache[account_id] = (loaded, size)
            self._cache.move_to_end(account_id)
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes and self._cache:
                _, (_, evicted) = self._cache.popitem(last=False)
                self._cached_bytes -= evicted
            CACHE_GAUGE.set(self._cached_bytes)

    @property
    def cached_bytes(self) -> int:
        """Estimated memory of the account cache (at most ``cache_bytes``)."""
        return self._cached_bytes

    def _maybe_checkpoint(self, loaded: _Loaded) -> None:
        """Checkpoint every ``checkpoint_every`` entries. Never fatal: the command committed; a
        failed checkpoint is tried again ``checkpoint_every`` entries later."""
        state = loaded.state
        due = max(loaded.checkpoint_seq + self.checkpoint_every, loaded.next_checkpoint)
        if state.seq < due:
            return
        version = loaded.checkpoint_version
        item = Item(account_pk(state.account_id), STATE_SK, version + 1, self._seal(state))
        try:
            try:
                self.store.put(item, VersionIs(version) if version else Absent())
                version, seq = version + 1, state.seq
            except ConditionFailed:
                # Someone else checkpointed; pick up their version.
                theirs = self._read_checkpoint(state.account_id)
                version, seq = theirs.checkpoint_version, theirs.checkpoint_seq
        except (StoreUnavailable, ValueError) as exc:
            CHECKPOINT_FAILURES.inc()
            loaded.next_checkpoint = state.seq + self.checkpoint_every
            log.warning("account %s: checkpoint at %d failed: %s", state.account_id, state.seq, exc)
            return
        fresh = _Loaded(
            state, version, seq, loaded.elements, indexed=loaded.indexed, size=loaded.size
        )
        self._remember(fresh)

    # -- sweep ----------------------------------------------------------------------------------

    def sweep(self) -> dict[str, Any]:
        """Expire overdue holds (their credits return to their lots) and overdue lots."""
        accounts = lots = 0
        expired: list[dict[str, Any]] = []
        now = int(self.clock())
        for account_id in self.accounts():
            state = self._load(account_id).state
            if state.seq == 0:
                continue  # registered, never opened
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

    def verify(self, expect_head: tuple[int, str] | None = None) -> VerifyReport:
        """Check the registry chain, every journal entry's link and MAC, recompute every result
        and balance from the journal alone, compare the checkpoint with the replay at its entry,
        and check that no name was claimed twice within its window. ``expect_head``: a registry
        head an earlier run reported, which must still be there."""
        registry = self.registry.check()
        report = VerifyReport(head=registry.head, problems=list(registry.problems))
        if expect_head is not None:
            n, mac = expect_head
            entry = self.store.get(REGISTRY_PK, registry_sk(n))
            if entry is None or entry.data.get("hash") != mac:
                report.problems.append(
                    f"registry entry {n} is not the one expected: the registry was cut or rewritten"
                )
        for account_id in registry.accounts:
            self._verify_account(account_id, report)
        return report

    def _verify_account(self, account_id: str, report: VerifyReport) -> None:
        checkpoint = self.store.get(account_pk(account_id), STATE_SK)
        saved: AccountState | None = None
        if checkpoint is not None:
            try:
                saved = self._unseal(checkpoint.data)
            except (CorruptJournal, ValueError) as exc:
                report.problems.append(f"account {account_id}: {exc}")
        state = AccountState(account_id=account_id)
        claims = _ClaimWindow(self.dedupe_s, self.reference_s)
        try:
            for item in self._entries(account_id, after=0):
                state = replay(self.keys, state, item.data, check_result=True)
                report.entries += 1
                for name in claims.repeated(state.last_claims, item.data["op"]["at"]):
                    report.problems.append(
                        f"account {account_id}: entry {state.seq} claims {name} again within "
                        "its window (a command applied twice)"
                    )
                if saved is not None and saved.seq == state.seq and saved != state:
                    report.problems.append(
                        f"account {account_id}: the checkpoint at entry {saved.seq} differs "
                        f"from the replay in {_differences(saved, state)}"
                    )
        except (CorruptJournal, AssertionError, FunctionError) as exc:
            report.problems.append(f"account {account_id}: {exc}")
            return
        if state.seq == 0:
            return  # registered, never opened
        report.accounts += 1
        if saved is not None and saved.seq > state.seq:
            report.problems.append(
                f"account {account_id}: checkpoint at {saved.seq} is past the journal end "
                f"{state.seq}"
            )


# Operations of a lease that never grow its hold's bound (footprint.hold_bytes), only the account's
# totals by a digit now and then: refusing one would lose a request's charge, and the store's item
# limit (350,000 B) leaves room far beyond the budget for digits.
_ALWAYS = frozenset({"capture", "return_lease"})

# How a hold ended, by the kind of the entry that ended it (a lease's last capture or its return
# closes it: "returned").
_ENDINGS: dict[str, Literal["expired", "voided"]] = {"expire_hold": "expired", "refund": "voided"}


class _ClaimWindow:
    """The names claimed within their windows, to spot one claimed twice."""

    def __init__(self, dedupe_s: int, reference_s: int) -> None:
        self.dedupe_s = dedupe_s
        self.reference_s = reference_s
        self.seen: dict[str, int] = {}

    def repeated(self, claims: dict[str, str], at: int) -> list[str]:
        again = []
        for name in claims:
            window = self.reference_s if lasting(name) else self.dedupe_s
            before = self.seen.get(name)
            if before is not None and at < before + window:
                again.append(name)
            self.seen[name] = at
        return again


def _differences(saved: AccountState, replayed: AccountState) -> str:
    a, b = saved.model_dump(), replayed.model_dump()
    return ", ".join(sorted(name for name in a if a[name] != b.get(name)))


def _observe(result: dict[str, Any]) -> None:
    """Count a committed late settle (its shortfall is also journaled and on the account)."""
    late = result.get("late")
    if late is None:
        return
    LATE_SETTLES.labels(late).inc()
    SHORTFALL.inc(result["shortfall"])
    WAIVED.inc(result["waived"])
    if result["shortfall"]:
        log.warning(
            "hold %s settled late: %d of %d credits were no longer there (shortfall)",
            result["hold_id"],
            result["shortfall"],
            result["captured"] + result["shortfall"],
        )


def replay(
    keys: LedgerKeys, state: AccountState, entry: dict[str, Any], *, check_result: bool = False
) -> AccountState:
    """Apply one stored journal entry, checking that it chains to ``state`` and its MAC."""
    seq = entry.get("seq")
    if seq != state.seq + 1 or entry.get("prev") != state.head:
        raise CorruptJournal(f"entry {seq} does not follow entry {state.seq}")
    check_entry(keys, entry)
    op = Op.model_validate(entry["op"])
    new, result = apply(state, op)
    if new.last_claims != entry["claims"]:
        raise CorruptJournal(f"entry {seq}: its claims are not the operation's")
    if check_result and (result != entry["result"] or new.balances() != entry["balances"]):
        raise CorruptJournal(
            f"entry {seq}: replay gives {new.balances()}, journal says {entry['balances']}"
        )
    new.head = entry["hash"]
    return new


__all__ = ["CorruptJournal", "Ledger", "VerifyReport", "replay"]
