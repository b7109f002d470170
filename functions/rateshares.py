"""The authoritative counters of rate limits: who holds which share, in the shared table.

One item per limited subject (an API key) and window, ``RATE#<subject>``/``W#<seconds>#<n>``
(requests and tokens of the n-th window of that length since the epoch), and one for its
requests running at once, ``RATE#<subject>``/``RUNNING``. Each lists its holders (ingress
replicas) and what each holds until when:

    {"holders": {"<replica>": {"until": <epoch s>, "requests": 12, "tokens": 4000}}}

A replica sets its own entry to a *target* with one conditional write (``update_item``: a
versioned read-modify-write, retried on a race), granted only what the other live holders leave
under the limit: ``mine = min(target, limit - others)``. So the holders together never exceed the
limit, whatever replicas race, and a write whose outcome was lost can simply be repeated (a
target, not an increment). Taking more, giving back and renewing are the same write. An entry
past its ``until`` no longer counts (a dead replica's share frees itself): window shares end
with their window, running shares at a short TTL their replica renews while it lives.

Why here and not in the ledger: a rate limit is not money. It needs one atomic counter, not the
hash-linked journal (a ledger commit is a journal entry, ~1 ms of Python on sqlite and ~100 ms on
DynamoDB Local here), and the ingress already reads this table for every key it resolves, so no
new dependency and no second hop. The items expire (DynamoDB TTL) soon after their last holder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from functions.store import Store, update_item

RUNNING_SK = "RUNNING"
EXPIRY_SLACK_S = 300  # the store may drop an item this long after its last holder's share ends


def subject_pk(subject: str) -> str:
    return f"RATE#{subject}"


def window_sk(window_s: int, index: int) -> str:
    return f"W#{window_s}#{index}"


@dataclass(frozen=True)
class Held:
    """After a write: what this replica holds, and what all live holders hold, per kind."""

    mine: Mapping[str, int]
    total: Mapping[str, int]


def claim(
    holders: dict[str, Any],
    replica: str,
    targets: Mapping[str, int],
    limits: Mapping[str, int],
    until: float,
    now: float,
) -> dict[str, Any]:
    """The holders after ``replica`` asked to hold ``targets`` (per kind) until ``until``: as
    much of each as the other live holders leave under its limit; expired entries dropped."""
    live = {r: h for r, h in holders.items() if r != replica and h["until"] > now}
    mine: dict[str, Any] = {"until": until}
    for kind, target in targets.items():
        others = sum(int(h.get(kind, 0)) for h in live.values())
        mine[kind] = max(0, min(target, limits[kind] - others))
    if any(mine[kind] for kind in targets):
        live[replica] = mine
    return live


def totals(holders: Mapping[str, Any], kinds: Mapping[str, int], now: float) -> dict[str, int]:
    return {
        kind: sum(int(h.get(kind, 0)) for h in holders.values() if h["until"] > now)
        for kind in kinds
    }


class RateShares:
    """One replica's writes to the counters (its ``replica`` id names its entries)."""

    def __init__(
        self, store: Store, replica: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.replica = replica
        self.clock = clock

    def hold(
        self,
        subject: str,
        sk: str,
        targets: Mapping[str, int],
        limits: Mapping[str, int],
        until: float,
    ) -> Held:
        """Hold ``targets`` of the limits in item ``sk`` until ``until``; what was granted.
        Raises ``Contended`` or ``StoreUnavailable`` (nothing known to be written)."""
        now = self.clock()
        if until <= now:  # a window that is over: its holders no longer count, so none is given
            return Held({kind: 0 for kind in targets}, {kind: 0 for kind in targets})

        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            holders = (data or {}).get("holders", {})
            return {"holders": claim(holders, self.replica, targets, limits, until, now)}

        def expiry(data: dict[str, Any]) -> int:
            ends = [h["until"] for h in data["holders"].values()]
            return int(max(ends, default=now)) + EXPIRY_SLACK_S

        item = update_item(self.store, subject_pk(subject), sk, change, expires_at=expiry)
        holders = item.data["holders"]
        entry = holders.get(self.replica, {})
        return Held(
            {kind: int(entry.get(kind, 0)) for kind in targets}, totals(holders, targets, now)
        )
