"""An account's token state and the pure transition function over it.

``apply(state, op)`` is the whole ledger: given the state after journal entry N and the operation
of entry N+1, it returns the state after N+1 and the operation's result. It reads no clock and no
store, so replaying the journal (recovery, ``tollgate ledger verify``, the hypothesis model test)
recomputes exactly what was committed.

Invariants, asserted after every operation:
  granted == available + held + spent + expired; nothing negative;
  available == sum of lots' remaining; held == sum of open holds' amounts.

A revocation (a refunded top-up's unspent credits taken back) reverses part of a grant: granted
and available both drop by the revoked amount, so the invariant reads the same, and ``revoked``
counts what was reversed (as ``refunded`` counts what came back as refund lots). Only a lot's
unspent, unexpired remainder can be revoked, never credits held or spent. A revocation whose
refund the operator denied is restored once, to the same lot.

A hold resolves once: settled, voided (refunded while open) or expired. A settle that arrives
after its hold expired is still owed: it charges what was used from what the account has now, on
lots the hold could have drawn from, and journals any part that is not there as a ``shortfall``
(never a negative balance). A settle after a void charges nothing and journals what it asked as
``waived``: a voided attempt served nobody (the ingress voids only attempts that failed before
their first byte). The ledger supplies what such a settle needs from the journal (``late``: how
the hold ended and its terms), so ``apply`` stays pure.

A credit lease is a hold with ``lease`` counts (events/ledger.py): ``authorize`` with ``lease``
opens one (at most half of what the account could spend) or tops one up and extends it;
``capture`` takes one request's usage from it (at most the request's bound, once per request:
the claim ``R#``), or voids a request (counted, nothing taken); ``return_lease`` releases all
but what the requests not yet counted may still capture, and the lease closes when the last of
them is counted (or at its TTL, like any hold). A capture after the lease closed is charged like
a late settle; ``refund_capture`` gives back a request captured before its void arrived.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from events.quote import Quote, Usage
from functions.errors import BadRequest, Conflict, NotFound
from ledger_fn.claims import (
    key_claim,
    late_claim,
    reference_claims,
    request_claim,
    resolved_claim,
)

# Explicit limits on what one account's state remembers; with the byte budget checked before
# every commit (ledger_fn/footprint.py) they keep it within a single store item.
MAX_OPEN_HOLDS = 256
MAX_LOTS = 256  # live lots, refund lots included
MAX_SETTLED_KEPT = 512  # settled holds remembered for later refunds
MAX_REVOCATIONS_KEPT = 256  # revocations remembered for a restore (a new one is refused beyond)
REFUND_WINDOW_S = 30 * 24 * 3600
LEASE_SHARE = 2  # a lease takes at most 1/LEASE_SHARE of what the account could spend
GENESIS = "0" * 64  # the "previous hash" of journal entry 1: where every chain starts


class Lot(BaseModel):
    id: str
    amount: int
    remaining: int
    origin: str
    expires_at: int | None = None
    tiers: list[str] | None = None
    models: list[str] | None = None
    reference: str | None = None
    seq: int  # journal entry that granted it: the tie-breaker in draw order

    def buys(self, tier: str | None, model: str | None) -> bool:
        return (self.tiers is None or tier in self.tiers) and (
            self.models is None or model in self.models
        )

    @property
    def restricted(self) -> bool:
        return self.tiers is not None or self.models is not None


class LeaseCounts(BaseModel):
    """What a lease has taken: captured credits, and the bounds and number of the requests
    counted (captured or voided). ``closing``/``returned_bounds``: what the returning ingress
    said it admitted (the lease closes once that many requests are counted)."""

    captured: int = 0
    bounds: int = 0
    requests: int = 0
    closing: int | None = None
    returned_bounds: int = 0


class OpenHold(BaseModel):
    id: str
    amount: int
    expires_at: int
    allocations: list[tuple[str, int]]  # (lot id, amount) in draw order
    tier: str | None = None
    model: str | None = None
    quote: Quote | None = None
    seq: int
    lease: LeaseCounts | None = None  # set: a credit lease, captured request by request


class Settled(BaseModel):
    captured: int
    refunded: int = 0
    at: int


class Revocation(BaseModel):
    lot: Lot  # the lot as it was revoked from (to restore into, even once it is forgotten)
    amount: int
    restored: bool = False
    at: int


class LateTerms(BaseModel):
    """How a hold no longer open ended and what it was authorized for (from the journal)."""

    resolved: Literal["expired", "voided", "returned"]
    amount: int
    tier: str | None = None
    model: str | None = None
    quote: Quote | None = None


class AccountState(BaseModel):
    account_id: str
    seq: int = 0
    head: str = GENESIS  # hash of the last journal entry
    granted: int = 0
    available: int = 0
    held: int = 0
    spent: int = 0
    expired: int = 0
    refunded: int = 0  # informational: part of granted that came back as refund lots
    revoked: int = 0  # informational: granted credits taken back (net of restores)
    shortfall: int = 0  # informational: used after a hold expired, but no longer there to charge
    waived: int = 0  # informational: asked by settles of voided holds, not charged
    lots: dict[str, Lot] = Field(default_factory=dict)
    holds: dict[str, OpenHold] = Field(default_factory=dict)
    settled: dict[str, Settled] = Field(default_factory=dict)
    revocations: dict[str, Revocation] = Field(default_factory=dict)
    last_claims: dict[str, str] = Field(default_factory=dict)  # the claims of entry ``seq``

    def balances(self) -> dict[str, int]:
        return {
            "granted": self.granted,
            "available": self.available,
            "held": self.held,
            "spent": self.spent,
            "expired": self.expired,
        }

    def check(self) -> None:
        """Assert the invariants; a failure here is a bug, never a user error."""
        assert self.granted == self.available + self.held + self.spent + self.expired, self
        assert min(self.granted, self.available, self.held, self.spent, self.expired) >= 0
        assert min(self.shortfall, self.waived) >= 0
        assert self.available == sum(lot.remaining for lot in self.lots.values())
        assert self.held == sum(hold.amount for hold in self.holds.values())
        assert all(lot.remaining >= 0 for lot in self.lots.values())


OpKind = Literal[
    "open",
    "grant",
    "authorize",
    "settle",
    "refund",
    "expire_hold",
    "expire_lot",
    "revoke",
    "restore",
    "capture",
    "return_lease",
    "refund_capture",
]


class Op(BaseModel):
    """One journaled operation: what was asked, when, and under which idempotency key."""

    kind: OpKind
    at: int
    key: str | None = None
    digest: str | None = None  # digest of the command's payload behind ``key`` (claims.digest)
    args: dict[str, Any] = Field(default_factory=dict)


def requested_claims(op: Op) -> dict[str, str]:
    """The names an op must be the first to claim (checked by the ledger before it commits)."""
    claims = {}
    if op.key is not None:
        assert op.digest is not None
        claims[key_claim(op.key)] = op.digest
    claims.update(reference_claims(op.kind, op.args))
    if op.kind == "capture":
        claims[request_claim(op.args["hold_id"], op.args["request"])] = ""
    if op.kind == "settle" and op.args.get("late"):
        claims[late_claim(op.args["hold_id"])] = ""
    return claims


def claims_of(op: Op, result: dict[str, Any]) -> dict[str, str]:
    """Every name the committed op claims: what it requested, and the hold it expired or voided
    (indexed so that a late settle can find how its hold ended)."""
    claims = requested_claims(op)
    ended = op.kind == "expire_hold" or result.get("closed")
    if ended or (op.kind == "refund" and result.get("voided")):
        claims[resolved_claim(result["hold_id"])] = op.kind
    return claims


def hold_id_for(account_id: str, seq: int) -> str:
    return f"{account_id}:{seq}"


def account_of(hold_id: str) -> str:
    """The account a hold id belongs to; BadRequest if it is not a hold id at all."""
    account_id, sep, seq = hold_id.rpartition(":")
    if not sep or not account_id or not seq.isdigit():
        raise BadRequest(f"{hold_id!r} is not a hold id (expected <account_id>:<number>)")
    return account_id


def apply(state: AccountState, op: Op) -> tuple[AccountState, dict[str, Any]]:
    """The state after ``op`` and its result. Raises a FunctionError (and changes nothing) when
    the op cannot apply; a declined authorization is a result, not an error."""
    new = _copy(state)
    new.seq = state.seq + 1
    result = _APPLY[op.kind](new, op)
    _forget_old(new, op)
    new.last_claims = claims_of(op, result)
    new.check()
    return new, result


def _copy(state: AccountState) -> AccountState:
    """A copy that ``apply`` may change. Its lots, holds, settled entries and revocations are
    shared with ``state`` and only ever replaced, never changed in place (a lot is copied by
    ``_own`` before its ``remaining`` moves), so an operation's cost does not grow with how
    many of them the account remembers."""
    return state.model_copy(
        update={
            "lots": Tracked(state.lots),
            "holds": Tracked(state.holds),
            "settled": Tracked(state.settled),
            "revocations": Tracked(state.revocations),
        }
    )


class Tracked(dict[str, Any]):
    """A state's collection that remembers the keys an operation set or deleted (``apply``
    changes collections only by item assignment and ``del``), so that the state's size can be
    kept up to date from those alone (ledger_fn/footprint.py)."""

    __slots__ = ("changed",)

    def __init__(self, items: dict[str, Any]) -> None:
        super().__init__(items)
        self.changed: set[str] = set()

    def __setitem__(self, key: str, value: Any) -> None:
        self.changed.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.changed.add(key)
        super().__delitem__(key)


def _open(state: AccountState, op: Op) -> dict[str, Any]:
    if state.seq != 1:
        raise Conflict(f"account {state.account_id} is already open")
    return {"account_id": state.account_id}


def _grant(state: AccountState, op: Op) -> dict[str, Any]:
    a = op.args
    amount = int(a["amount"])
    assert amount > 0
    expires_at = a.get("expires_at")
    if expires_at is not None and expires_at <= op.at:
        raise BadRequest("expires_at is in the past; a grant must expire in the future")
    _room_for_a_lot(state)
    lot = Lot(
        id=f"lot-{state.seq}",
        amount=amount,
        remaining=amount,
        origin=a.get("origin", "top-up"),
        expires_at=expires_at,
        tiers=a.get("tiers"),
        models=a.get("models"),
        reference=a.get("reference"),
        seq=state.seq,
    )
    state.lots[lot.id] = lot
    state.granted += amount
    state.available += amount
    if lot.origin == "refund":
        state.refunded += amount
    return {
        "account_id": state.account_id,
        "lot_id": lot.id,
        "amount": amount,
        "origin": lot.origin,
        "expires_at": expires_at,
        "available": state.available,
    }


def _own(state: AccountState, lot: Lot) -> Lot:
    """The lot as this state may change it (a copy of the one shared with the previous state)."""
    mine = lot.model_copy()
    state.lots[lot.id] = mine
    return mine


def _room_for_a_lot(state: AccountState) -> None:
    live = sum(1 for lot in state.lots.values() if lot.remaining > 0)
    if live >= MAX_LOTS:
        raise Conflict(
            f"account {state.account_id} has {MAX_LOTS} live lots, the limit; spend or let "
            "some run out first"
        )


def _draw_order(lot: Lot) -> tuple[int, int, int]:
    # Restricted lots first (use the narrow credits while they fit), then the soonest to expire.
    never = 2**63
    return (0 if lot.restricted else 1, lot.expires_at or never, lot.seq)


def spendable(state: AccountState, tier: str | None, model: str | None, at: int) -> list[Lot]:
    lots = [
        lot
        for lot in state.lots.values()
        if lot.remaining > 0
        and (lot.expires_at is None or lot.expires_at > at)
        and lot.buys(tier, model)
    ]
    return sorted(lots, key=_draw_order)


def _authorize(state: AccountState, op: Op) -> dict[str, Any]:
    a = op.args
    amount, tier, model = int(a["amount"]), a.get("tier"), a.get("model")
    assert amount > 0
    lots = spendable(state, tier, model, op.at)
    usable = sum(lot.remaining for lot in lots)
    lease = a.get("lease")
    if lease is not None and lease.get("renew"):
        return _renew_lease(state, op, lots, usable)
    if lease is not None:
        # A lease takes at most half of what could be spent: other replicas need some too.
        amount = min(amount, usable // LEASE_SHARE)
    reason = None
    if lease is not None and amount < int(lease["min_amount"]):
        reason = (
            f"a credit lease needs at least {lease['min_amount']}; the account has {usable} to "
            "spend here (at low balance every request is held on its own)"
        )
    elif len(state.holds) >= MAX_OPEN_HOLDS:
        reason = f"too many open holds ({MAX_OPEN_HOLDS}); settle or refund some first"
    elif usable < amount:
        scope = f" for tier {tier or 'any'} / model {model or 'any'}" if (tier or model) else ""
        reason = f"insufficient credits: {usable} available{scope}, {amount} needed"
    if reason is not None:
        return {
            "declined": True,
            "account_id": state.account_id,
            "amount": amount,
            "reason": reason,
            "available": usable,
        }
    hold = OpenHold(
        id=hold_id_for(state.account_id, state.seq),
        amount=amount,
        expires_at=op.at + int(a["ttl_seconds"]),
        allocations=_draw(state, lots, amount),
        tier=tier,
        model=model,
        quote=Quote.model_validate(a["quote"]) if a.get("quote") else None,
        seq=state.seq,
        lease=LeaseCounts() if lease is not None else None,
    )
    state.holds[hold.id] = hold
    state.available -= amount
    state.held += amount
    return _authorized(state, hold)


def _draw(state: AccountState, lots: list[Lot], amount: int) -> list[tuple[str, int]]:
    """Take ``amount`` from ``lots`` in order (they hold enough): the allocations."""
    allocations: list[tuple[str, int]] = []
    left = amount
    for lot in lots:
        if left == 0:
            break
        take = min(lot.remaining, left)
        _own(state, lot).remaining -= take
        allocations.append((lot.id, take))
        left -= take
    return allocations


def _authorized(state: AccountState, hold: OpenHold) -> dict[str, Any]:
    result: dict[str, Any] = {
        "hold_id": hold.id,
        "account_id": state.account_id,
        "amount": hold.amount,
        "expires_at": hold.expires_at,
        "available": state.available,
    }
    if hold.lease is not None:
        counts = hold.lease
        result["lease"] = {
            "captured": counts.captured,
            "bounds": counts.bounds,
            "requests": counts.requests,
        }
    return result


def _open_lease(state: AccountState, hold_id: str) -> OpenHold:
    hold = open_hold(state, hold_id)
    if hold.lease is None:
        raise BadRequest(f"hold {hold_id} is not a credit lease")
    return hold


def _renew_lease(state: AccountState, op: Op, lots: list[Lot], usable: int) -> dict[str, Any]:
    """Top a lease up by what it asks (at most half of what could be spent; possibly nothing)
    and extend it to a full TTL from now. A returned lease is not renewed."""
    a = op.args
    hold = _open_lease(state, a["lease"]["renew"])
    if hold.lease is not None and hold.lease.closing is not None:
        raise Conflict(f"lease {hold.id} was returned; open a new one")
    more = min(int(a["amount"]), usable // LEASE_SHARE)
    allocations = _merged(hold.allocations, _draw(state, lots, more))
    state.available -= more
    state.held += more
    renewed = hold.model_copy(
        update={
            "amount": hold.amount + more,
            "allocations": allocations,
            "expires_at": max(hold.expires_at, op.at + int(a["ttl_seconds"])),
        }
    )
    state.holds[hold.id] = renewed
    return {**_authorized(state, renewed), "granted": more}


def _merged(
    allocations: list[tuple[str, int]], more: list[tuple[str, int]]
) -> list[tuple[str, int]]:
    """Allocations with ``more`` added, one entry per lot (a lease's stays as short as its lots)."""
    amounts = dict(allocations)
    for lot_id, amount in more:
        amounts[lot_id] = amounts.get(lot_id, 0) + amount
    return [(lot_id, amount) for lot_id, amount in amounts.items() if amount > 0]


def open_hold(state: AccountState, hold_id: str) -> OpenHold:
    hold = state.holds.get(hold_id)
    if hold is not None:
        return hold
    if hold_id in state.settled:
        raise Conflict(f"hold {hold_id} is already settled")
    seq = hold_id.rpartition(":")[2]
    if seq.isdigit() and int(seq) < state.seq:
        raise Conflict(f"hold {hold_id} is no longer open (settled, refunded or expired)")
    raise NotFound(f"no hold {hold_id}")


def _release(state: AccountState, hold: OpenHold, keep: int, at: int) -> int:
    """Close ``hold``: ``keep`` credits become spent, the rest go back to their lots (or to
    expired, for lots that have expired meanwhile). Returns the amount released."""
    assert 0 <= keep <= hold.amount
    _, back = _split(hold.allocations, keep)
    released = _give_back(state, back, at)
    del state.holds[hold.id]
    state.held -= hold.amount
    state.spent += keep
    return released


def _charge(op: Op, hold_id: str, quote: Quote | None) -> int:
    """What the settle asks: its amount, or its usage priced by the hold's quote."""
    if "usage" in op.args and op.args.get("amount") is None:
        if quote is None:
            raise BadRequest(
                f"hold {hold_id} carries no quote to price usage by; settle it with "
                "io.tollgate.hold.settle.v1 and an amount"
            )
        usage = Usage.model_validate(op.args["usage"])
        return quote.charge(usage, int(op.args.get("engine_ms", 0)))
    return int(op.args["amount"])


def _settle(state: AccountState, op: Op) -> dict[str, Any]:
    hold_id = op.args["hold_id"]
    late = op.args.get("late")
    if hold_id not in state.holds and hold_id not in state.settled and late is not None:
        return _settle_late(state, op, LateTerms.model_validate(late))
    hold = open_hold(state, hold_id)
    if hold.lease is not None:
        raise BadRequest(
            f"hold {hold_id} is a credit lease: its requests are captured one by one, each "
            "under its own request reference"
        )
    wanted = _charge(op, hold.id, hold.quote)
    captured = min(wanted, hold.amount)  # a settle captures at most the hold
    released = _release(state, hold, captured, op.at)
    state.settled[hold.id] = Settled(captured=captured, at=op.at)
    return {
        "hold_id": hold.id,
        "account_id": state.account_id,
        "captured": captured,
        "released": released,
        "requested": wanted,
        "shortfall": 0,
        "waived": 0,
    }


def _settle_late(state: AccountState, op: Op, terms: LateTerms) -> dict[str, Any]:
    """A settle of a hold that expired (charge what was used from what is there now, on lots the
    hold could have drawn from) or was voided (charge nothing)."""
    hold_id = op.args["hold_id"]
    seq = hold_id.rpartition(":")[2]
    assert seq.isdigit() and int(seq) < state.seq, hold_id
    wanted = _charge(op, hold_id, terms.quote)
    owed = min(wanted, terms.amount)  # as on time: at most what was held
    result = _charge_late(state, op, terms, owed)
    state.settled[hold_id] = Settled(captured=result["captured"], at=op.at)
    return {**result, "requested": wanted}


def _charge_late(state: AccountState, op: Op, terms: LateTerms, owed: int) -> dict[str, Any]:
    """Charge ``owed`` for a hold that ended: from what the account has now, on lots the hold
    could have drawn from, the rest a shortfall; nothing (all waived) if it was voided."""
    captured = 0
    if terms.resolved != "voided":
        for lot in spendable(state, terms.tier, terms.model, op.at):
            take = min(lot.remaining, owed - captured)
            _own(state, lot).remaining -= take
            captured += take
            if captured == owed:
                break
        state.available -= captured
        state.spent += captured
    shortfall = owed - captured if terms.resolved != "voided" else 0
    waived = owed if terms.resolved == "voided" else 0
    state.shortfall += shortfall
    state.waived += waived
    return {
        "hold_id": op.args["hold_id"],
        "account_id": state.account_id,
        "captured": captured,
        "released": 0,
        "shortfall": shortfall,
        "waived": waived,
        "late": terms.resolved,
    }


def _capture(state: AccountState, op: Op) -> dict[str, Any]:
    """One request of a lease: its usage (at most its bound) captured, or with ``void`` only
    counted. A returned lease releases what it no longer needs, and closes at its last request."""
    a = op.args
    hold_id, request, bound = a["hold_id"], a["request"], int(a["bound"])
    void = bool(a.get("void"))
    if hold_id not in state.holds and a.get("late") is not None:
        terms = LateTerms.model_validate(a["late"])
        wanted = 0 if void else min(_charge(op, hold_id, terms.quote), bound)
        return {**_charge_late(state, op, terms, wanted), "requested": wanted, "request": request}
    hold = _open_lease(state, hold_id)
    wanted = 0 if void else min(_charge(op, hold_id, hold.quote), bound)
    captured = min(wanted, hold.amount)  # never above the hold; the ingress admits within it
    shortfall = wanted - captured
    state.shortfall += shortfall
    assert hold.lease is not None
    counts = hold.lease.model_copy(
        update={
            "captured": hold.lease.captured + captured,
            "bounds": hold.lease.bounds + bound,
            "requests": hold.lease.requests + 1,
        }
    )
    taken, kept = _split(hold.allocations, captured)
    state.held -= captured
    state.spent += captured
    del taken  # spent: the credits stay out of their lots
    hold = hold.model_copy(update={"amount": hold.amount - captured, "allocations": kept})
    released, closed = _settle_down(state, hold, counts, op.at)
    return {
        "hold_id": hold_id,
        "account_id": state.account_id,
        "request": request,
        "captured": captured,
        "released": released,
        "requested": wanted,
        "shortfall": shortfall,
        "waived": 0,
        "closed": closed,
    }


def _return_lease(state: AccountState, op: Op) -> dict[str, Any]:
    a = op.args
    hold = _open_lease(state, a["hold_id"])
    assert hold.lease is not None
    if hold.lease.closing is not None:
        raise Conflict(f"lease {hold.id} was already returned")
    counts = hold.lease.model_copy(
        update={"closing": int(a["requests"]), "returned_bounds": int(a["bounds"])}
    )
    hold = hold.model_copy(update={"expires_at": op.at + int(a["ttl_seconds"])})
    released, closed = _settle_down(state, hold, counts, op.at)
    return {
        "hold_id": hold.id,
        "account_id": state.account_id,
        "refunded": released,
        "released": released,
        "voided": False,
        "closed": closed,
        "outstanding": 0 if closed else counts.closing - counts.requests,  # type: ignore[operator]
    }


def _settle_down(
    state: AccountState, hold: OpenHold, counts: LeaseCounts, at: int
) -> tuple[int, bool]:
    """Store the lease with ``counts``; once returned, release what the requests not counted
    yet can no longer capture, and close it when none is left. (released, closed)"""
    if counts.closing is None:
        state.holds[hold.id] = hold.model_copy(update={"lease": counts})
        return 0, False
    if counts.requests >= counts.closing:
        return _release(state, hold, 0, at), True
    outstanding = max(0, counts.returned_bounds - counts.bounds)
    spare = max(0, hold.amount - outstanding)
    kept, back = _split(hold.allocations, hold.amount - spare)
    released = _give_back(state, back, at)
    state.held -= spare
    state.holds[hold.id] = hold.model_copy(
        update={"amount": hold.amount - spare, "allocations": kept, "lease": counts}
    )
    return released, False


def _split(
    allocations: list[tuple[str, int]], first: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Allocations cut after ``first`` credits: (the first ones, the rest)."""
    head: list[tuple[str, int]] = []
    tail: list[tuple[str, int]] = []
    left = first
    for lot_id, amount in allocations:
        take = min(amount, left)
        left -= take
        if take:
            head.append((lot_id, take))
        if amount - take:
            tail.append((lot_id, amount - take))
    assert left == 0, (allocations, first)
    return head, tail


def _give_back(state: AccountState, allocations: list[tuple[str, int]], at: int) -> int:
    """Return held credits to their lots (or to expired, for lots that expired meanwhile); the
    caller takes them off ``held``. Returns what went back to lots."""
    released = 0
    for lot_id, amount in allocations:
        lot = state.lots[lot_id]
        if lot.expires_at is not None and lot.expires_at <= at:
            state.expired += amount
        else:
            _own(state, lot).remaining += amount
            state.available += amount
            released += amount
    return released


def _refund_capture(state: AccountState, op: Op) -> dict[str, Any]:
    """A lease request captured before its void arrived: its capture comes back as a refund lot
    (the request is charged on the attempt that served it, never twice)."""
    a = op.args
    amount = int(a["amount"])
    assert amount > 0
    _room_for_a_lot(state)
    lot = _refund_lot(state, amount, f"{a['hold_id']}/{a['request']}")
    return {
        "hold_id": a["hold_id"],
        "account_id": state.account_id,
        "request": a["request"],
        "refunded": amount,
        "voided": False,
        "lot_id": lot.id,
    }


def _refund(state: AccountState, op: Op) -> dict[str, Any]:
    hold_id, amount = op.args["hold_id"], op.args.get("amount")
    if op.args.get("void_only") and hold_id not in state.holds:
        seq = hold_id.rpartition(":")[2]
        if hold_id not in state.settled and not (seq.isdigit() and int(seq) < state.seq):
            raise NotFound(f"no hold {hold_id}")
        how = "settled" if hold_id in state.settled else "no longer open"
        raise Conflict(
            f"hold {hold_id} is {how}; a failure report voids only an open hold and never "
            "undoes a capture"
        )
    if hold_id in state.holds:
        hold = state.holds[hold_id]
        if amount is not None and amount != hold.amount:
            raise BadRequest(
                f"hold {hold_id} is open and is voided whole ({hold.amount}); omit amount"
            )
        released = _release(state, hold, 0, op.at)
        return {
            "hold_id": hold_id,
            "account_id": state.account_id,
            "refunded": hold.amount,
            "voided": True,
            "released": released,
        }
    settled = state.settled.get(hold_id)
    if settled is None:
        open_hold(state, hold_id)  # raises the precise NotFound / Conflict
        raise AssertionError("unreachable: the hold is not open")
    refundable = settled.captured - settled.refunded
    amount = refundable if amount is None else int(amount)
    if amount <= 0 or amount > refundable:
        raise Conflict(f"hold {hold_id} has {refundable} refundable credits, asked {amount}")
    _room_for_a_lot(state)
    state.settled[hold_id] = settled.model_copy(update={"refunded": settled.refunded + amount})
    lot = _refund_lot(state, amount, hold_id)
    return {
        "hold_id": hold_id,
        "account_id": state.account_id,
        "refunded": amount,
        "voided": False,
        "lot_id": lot.id,
    }


def _refund_lot(state: AccountState, amount: int, reference: str) -> Lot:
    """Captured credits given back, as a lot of their own."""
    lot = Lot(
        id=f"lot-{state.seq}",
        amount=amount,
        remaining=amount,
        origin="refund",
        reference=reference,
        seq=state.seq,
    )
    state.lots[lot.id] = lot
    state.granted += amount
    state.available += amount
    state.refunded += amount
    return lot


def _expire_hold(state: AccountState, op: Op) -> dict[str, Any]:
    hold = open_hold(state, op.args["hold_id"])
    if hold.expires_at > op.at:
        raise Conflict(f"hold {hold.id} is not due to expire until {hold.expires_at}")
    released = _release(state, hold, 0, op.at)
    return {"hold_id": hold.id, "account_id": state.account_id, "released": released}


def _expire_lot(state: AccountState, op: Op) -> dict[str, Any]:
    lot = state.lots.get(op.args["lot_id"])
    if lot is None or lot.remaining == 0:
        raise Conflict(f"lot {op.args['lot_id']} has nothing left to expire")
    if lot.expires_at is None or lot.expires_at > op.at:
        raise Conflict(f"lot {lot.id} is not due to expire")
    amount = lot.remaining
    _own(state, lot).remaining = 0
    state.available -= amount
    state.expired += amount
    return {"account_id": state.account_id, "lot_id": lot.id, "expired": amount}


def _revoke(state: AccountState, op: Op) -> dict[str, Any]:
    lot_id, amount, reference = op.args["lot_id"], int(op.args["amount"]), op.args["reference"]
    assert amount > 0
    if reference in state.revocations:
        raise Conflict(f"revocation {reference} was already made")
    if len(state.revocations) >= MAX_REVOCATIONS_KEPT:
        raise Conflict(
            f"account {state.account_id} remembers {MAX_REVOCATIONS_KEPT} revocations, the "
            "limit; they are forgotten after the refund window"
        )
    lot = state.lots.get(lot_id)
    live = lot is not None and (lot.expires_at is None or lot.expires_at > op.at)
    remaining = lot.remaining if lot is not None and live else 0
    if lot is None or amount > remaining:
        raise Conflict(f"lot {lot_id} has {remaining} unspent credits to take back, asked {amount}")
    state.revocations[reference] = Revocation(lot=lot.model_copy(), amount=amount, at=op.at)
    _own(state, lot).remaining -= amount
    state.available -= amount
    state.granted -= amount
    state.revoked += amount
    return {
        "account_id": state.account_id,
        "lot_id": lot_id,
        "revoked": amount,
        "reference": reference,
        "available": state.available,
    }


def _restore(state: AccountState, op: Op) -> dict[str, Any]:
    reference = op.args["reference"]
    revocation = state.revocations.get(reference)
    if revocation is None:
        raise NotFound(f"no revocation {reference} to restore")
    if revocation.restored:
        raise Conflict(f"revocation {reference} was already restored")
    amount = revocation.amount
    lot = state.lots.get(revocation.lot.id)
    if lot is None:  # fully revoked (or spent) and forgotten since: bring it back empty
        lot = revocation.lot.model_copy(update={"remaining": 0})
        state.lots[lot.id] = lot
    else:
        lot = _own(state, lot)
    state.revocations[reference] = revocation.model_copy(update={"restored": True})
    state.granted += amount
    state.revoked -= amount
    if lot.expires_at is not None and lot.expires_at <= op.at:
        state.expired += amount  # it would have expired meanwhile
        restored = 0
    else:
        lot.remaining += amount
        state.available += amount
        restored = amount
    return {
        "account_id": state.account_id,
        "lot_id": lot.id,
        "restored": restored,
        "expired": amount - restored,
        "reference": reference,
        "available": state.available,
    }


def _forget_old(state: AccountState, op: Op) -> None:
    """Drop what no later operation can need, oldest first, within the explicit limits."""
    held_lots = {lot_id for hold in state.holds.values() for lot_id, _ in hold.allocations}
    for lot_id in [k for k, lot in state.lots.items() if lot.remaining == 0]:
        if lot_id not in held_lots:
            del state.lots[lot_id]
    _trim(state.settled, op.at - REFUND_WINDOW_S, MAX_SETTLED_KEPT)
    _trim(state.revocations, op.at - REFUND_WINDOW_S, MAX_REVOCATIONS_KEPT)


def _trim(entries: dict[str, Any], oldest: int, limit: int) -> None:
    # Dicts keep insertion order, which is commit order: the oldest entries come first.
    while entries and (len(entries) > limit or next(iter(entries.values())).at < oldest):
        del entries[next(iter(entries))]


_APPLY = {
    "open": _open,
    "grant": _grant,
    "authorize": _authorize,
    "settle": _settle,
    "refund": _refund,
    "expire_hold": _expire_hold,
    "expire_lot": _expire_lot,
    "revoke": _revoke,
    "restore": _restore,
    "capture": _capture,
    "return_lease": _return_lease,
    "refund_capture": _refund_capture,
}
