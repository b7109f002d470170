"""Credit leases: the ingress admits a request against credit it already holds, in memory.

A lease is an ordinary ledger hold per account x price basis (tier, model, quote), opened with
``hold.authorize`` + ``lease`` (events/ledger.py). Admitting a request reserves its worst case
(its *bound*) from the lease: microseconds, no network. Each request is still captured on its
own (infer's ``inference.completed`` names the lease and the attempt, one journal record per
request), at most its bound, so what the ledger can capture never exceeds what the ingress
admitted, and the ingress admits only within the hold:

    admitted bounds not yet counted by the ledger + this bound <= the hold's amount.

The ingress knows the hold's amount, its captures and the bounds of the requests the ledger has
counted (``LeaseState``) as of its last renewal. A capture lowers the amount by at most what it
adds to the counted bounds, so a stale view only ever under-states what may be admitted.

In the background (requests never wait for it): a lease is opened on an account's first request
(that request is held on its own, as at low balance), renewed (topped up and extended) when what
is free falls under a low-water mark or its TTL runs short, and returned when idle or when the
account runs low. A return says what was admitted; the ledger keeps what the requests it has not
counted yet may still capture, releases the rest, and closes the lease once they are counted.
A lease of a replica that dies expires at its TTL (the ledger's sweep), and captures arriving
after that are charged from what the account has (a late settle).

Sizing: a new lease asks ``OPEN_WORST_CASES`` worst cases; then enough for ``HORIZON_S`` of the
spend rate (bounds admitted per second), at least ``MIN_WORST_CASES`` worst cases, at most a
quarter of what the account had left at the last reply (the ledger itself grants a lease at most
half). An account with less than
``LOW_WORST_CASES`` worst cases left is held per request, exact to the credit, until a reply
shows it has plenty again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from events.ledger import HoldAuthorize, HoldAuthorized, LeaseAsk, LeaseReturn
from events.quote import Quote
from functions.errors import FunctionError, PaymentRequired, Unavailable
from router_fn import metrics
from router_fn.ledger_client import LedgerClient
from router_fn.owed import Owed
from router_fn.upkeep import Upkeep

log = logging.getLogger(__name__)

LEASE_TTL_S = 60
HORIZON_S = 2.0
MIN_WORST_CASES = 2
OPEN_WORST_CASES = 4  # a new lease asks for this many worst cases (then the spend rate decides)
LOW_WORST_CASES = 4
IDLE_S = 5.0
LOW_WATER = 0.5  # renew when less than this share of the target is free
RENEW_BEFORE = 0.5  # ... or when less than this share of the TTL is left
TICK_S = 0.25
WAIT_S = 5.0  # as long as a per-request authorize may take (the ledger client timeout)


@dataclass(frozen=True)
class Basis:
    """What a lease is for: one account at one price."""

    account_id: str
    tier: str
    model: str
    quote: Quote


@dataclass
class Lease:
    basis: Basis
    hold_id: str
    expires_at: float
    amount: int  # the hold's amount, as of the last reply
    counted: int  # the bounds of the requests the ledger had counted, as of the last reply
    admitted: int = 0  # bounds of every request admitted here
    requests: int = 0
    worst: int = 0  # the largest bound admitted (sizes the lease)
    used_at: float = 0.0
    rate: float = 0.0  # bounds admitted per second, smoothed
    since: float = 0.0  # when ``rate`` was last folded
    since_admitted: int = 0
    busy: bool = False  # a renewal is in flight
    available: int | None = None  # what the account had outside holds, at the last reply

    def free(self) -> int:
        return self.amount - (self.admitted - self.counted)


@dataclass(frozen=True)
class Slot:
    """One request admitted against a lease: the capability carries ``request`` and ``bound``."""

    hold: HoldAuthorized  # the lease's hold, ``amount`` being this request's bound
    request: str
    bound: int


@dataclass
class _Low:
    until: float  # per-request holds for this account until then (or a reply shows plenty)


@dataclass
class Leases:
    ledger: LedgerClient
    owed: Owed
    ttl_s: int = LEASE_TTL_S
    return_ttl_s: int = 900  # how long a returned lease waits for captures still in flight
    clock: Callable[[], float] = time.time
    _leases: dict[Basis, Lease] = field(default_factory=dict)
    _opening: dict[Basis, int] = field(default_factory=dict)  # with the worst case that asked
    _pending: set[Basis] = field(default_factory=set)  # requests wait for these to open or renew
    _low: dict[str, _Low] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)  # a lease opened, renewed or refused
    _upkeep: Upkeep = field(init=False)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)
        self._upkeep = Upkeep("leases", self.tick, TICK_S)

    # -- the request path (no network) ----------------------------------------------------------

    def admit(self, basis: Basis, bound: int, request: str) -> Slot | None:
        """A slot of ``bound`` on the basis's lease, or None: hold this request on its own (the
        account is low, or the lease could not take it even after the next opening or renewal,
        which a request waits for, at most ``WAIT_S``: what its own hold would take at least)."""
        with self._lock:
            lease = self._fitting(basis, bound)
            deadline = self.clock() + WAIT_S
            while lease is None and basis in self._pending:
                left = deadline - self.clock()
                if left <= 0 or self._is_low(basis.account_id, self.clock()):
                    break
                self._changed.wait(left)
                lease = self._fitting(basis, bound, again=True)
            if lease is None:
                metrics.LEASE_ADMISSIONS.labels("own hold").inc()
                return None
            lease.admitted += bound
            lease.requests += 1
            lease.since_admitted += bound
            lease.worst = max(lease.worst, bound)
            lease.used_at = self.clock()
            if lease.free() < self._target(lease) * LOW_WATER:
                self._poke()
            hold = HoldAuthorized(
                hold_id=lease.hold_id,
                account_id=basis.account_id,
                amount=bound,
                expires_at=_moment(lease.expires_at),
            )
        metrics.LEASE_ADMISSIONS.labels("lease").inc()
        return Slot(hold, request, bound)

    def _fitting(self, basis: Basis, bound: int, *, again: bool = False) -> Lease | None:
        """The basis's lease if it has room for ``bound`` now; else asks for one (once)."""
        now = self.clock()
        if self._is_low(basis.account_id, now):
            return None
        lease = self._leases.get(basis)
        if lease is None:
            if not again:
                self._opening[basis] = max(bound, self._opening.get(basis, 0))
                self._pending.add(basis)
                self._poke()
            return None
        # Never admit on a lease that could expire before the request is captured.
        if lease.free() < bound or lease.expires_at - now < self.ttl_s * RENEW_BEFORE / 2:
            if not again:
                lease.since_admitted += bound  # demand the lease could not meet sizes it too
                self._pending.add(basis)
                self._poke()
            return None
        return lease

    def _is_low(self, account_id: str, now: float) -> bool:
        low = self._low.get(account_id)
        return low is not None and low.until > now

    def observe(self, account_id: str, available: int | None, bound: int) -> None:
        """A per-request hold's reply: is the account still low (``available`` after it)?"""
        if available is None:
            return
        with self._lock:
            if available >= 2 * LOW_WORST_CASES * bound:
                self._low.pop(account_id, None)
            elif available < LOW_WORST_CASES * bound:
                self._low[account_id] = _Low(self.clock() + IDLE_S)

    # -- the background ---------------------------------------------------------------------------

    def start(self) -> None:
        self._upkeep.start()

    def stop(self) -> None:
        """Return every lease (owed through the outbox) and stop renewing."""
        self._upkeep.stop()
        with self._lock:
            leases = list(self._leases.values())
            self._leases.clear()
        for lease in leases:
            self._return(lease)

    def _poke(self) -> None:
        self._upkeep.poke()

    def tick(self) -> None:
        """Open what was asked for, renew what runs low or short, return what is idle or low."""
        now = self.clock()
        with self._lock:
            opening, self._opening = self._opening, {}
            for account_id in [a for a in self._low if not self._is_low(a, now)]:
                del self._low[account_id]
            renew = [
                lease
                for lease in self._leases.values()
                if not lease.busy
                and (
                    lease.basis in self._pending
                    or lease.free() < self._target(lease) * LOW_WATER
                    or lease.expires_at - now < self.ttl_s * RENEW_BEFORE
                )
            ]
            idle = [
                lease
                for lease in self._leases.values()
                if not lease.busy
                and (now - lease.used_at > IDLE_S or self._is_low(lease.basis.account_id, now))
            ]
            for lease in idle:
                del self._leases[lease.basis]
                self._pending.discard(lease.basis)
            for lease in renew:
                lease.busy = True
        for lease in idle:
            self._return(lease)
        for basis, worst in opening.items():
            if basis not in self._leases:
                self._open(basis, worst)
            with self._lock:  # opened or not: requests waiting for it decide now
                self._pending.discard(basis)
                self._changed.notify_all()
        for lease in renew:
            if lease not in idle:
                self._renew(lease)

    def _target(self, lease: Lease) -> int:
        now = self.clock()
        elapsed = now - lease.since
        if elapsed >= 1.0:  # fold the last second(s) of demand into the rate
            lease.rate = 0.5 * lease.rate + 0.5 * lease.since_admitted / elapsed
            lease.since, lease.since_admitted = now, 0
        floor = MIN_WORST_CASES * max(lease.worst, 1)
        wanted = int(lease.rate * HORIZON_S)
        if lease.available is not None:  # never lock much of a balance in one replica
            wanted = min(wanted, lease.available // 4)
        return max(floor, wanted)

    def _open(self, basis: Basis, worst: int) -> None:
        event_id = f"lease:{uuid.uuid4().hex}"
        command = HoldAuthorize(
            account_id=basis.account_id,
            amount=OPEN_WORST_CASES * worst,
            ttl_seconds=self.ttl_s,
            tier=basis.tier,
            model=basis.model,
            quote=basis.quote,
            lease=LeaseAsk(min_amount=MIN_WORST_CASES * worst),
        )
        try:
            hold = self.ledger.hold(event_id, command)
        except PaymentRequired:
            self._mark_low(basis.account_id)
            return
        except Unavailable:
            self.owed.release(event_id, command)  # it may exist: find it and void it
            return
        except FunctionError as exc:
            log.warning("lease for %s refused: %s", basis.account_id, exc.message)
            return
        now = self.clock()
        lease = Lease(
            basis,
            hold.hold_id,
            hold.expires_at.timestamp(),
            hold.amount,
            hold.lease.bounds if hold.lease else 0,
            worst=worst,
            used_at=now,
            since=now,
            available=hold.available,
        )
        with self._lock:
            self._leases[basis] = lease
            self._changed.notify_all()
        metrics.LEASES.labels("opened").inc()
        self._after(basis.account_id, hold, worst)

    def _renew(self, lease: Lease) -> None:
        try:
            with self._lock:
                want = max(0, self._target(lease) - lease.free())
                # The ledger cannot top up by nothing: an extension alone asks for one credit.
                ask = max(1, want)
            command = HoldAuthorize(
                account_id=lease.basis.account_id,
                amount=ask,
                ttl_seconds=self.ttl_s,
                tier=lease.basis.tier,
                model=lease.basis.model,
                quote=lease.basis.quote,
                lease=LeaseAsk(renew=lease.hold_id, min_amount=1),
            )
            try:
                hold = self.ledger.hold(f"lease:{uuid.uuid4().hex}", command)
            except Unavailable as exc:
                log.warning("lease %s not renewed yet: %s", lease.hold_id, exc.message)
                return
            except FunctionError as exc:  # returned or expired meanwhile: forget it
                log.warning("lease %s is gone: %s", lease.hold_id, exc.message)
                with self._lock:
                    if self._leases.get(lease.basis) is lease:
                        del self._leases[lease.basis]
                return
            with self._lock:
                lease.amount = hold.amount
                lease.counted = hold.lease.bounds if hold.lease else lease.counted
                lease.expires_at = hold.expires_at.timestamp()
                lease.available = hold.available
                self._changed.notify_all()
            metrics.LEASES.labels("renewed").inc()
            self._after(lease.basis.account_id, hold, max(lease.worst, 1))
        finally:
            with self._lock:
                lease.busy = False
                self._pending.discard(lease.basis)
                self._changed.notify_all()

    def _after(self, account_id: str, hold: HoldAuthorized, worst: int) -> None:
        if hold.available is not None and hold.available < LOW_WORST_CASES * worst:
            self._mark_low(account_id)

    def _mark_low(self, account_id: str) -> None:
        with self._lock:
            self._low[account_id] = _Low(self.clock() + IDLE_S)
            self._changed.notify_all()
        self._poke()  # its leases go back at the next tick

    def _return(self, lease: Lease) -> None:
        returned = LeaseReturn(
            requests=lease.requests, bounds=lease.admitted, ttl_seconds=self.return_ttl_s
        )
        self.owed.return_lease(lease.hold_id, returned)
        metrics.LEASES.labels("returned").inc()


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
