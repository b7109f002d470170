"""Latency-SLA observations in the store: one item per request that carried a latency budget.

The ingress writes them (after the response is closed, never on the client's path); the ledger's
monthly evaluation and ``tollgate sla report`` read them. This module is the one place that knows
the layout (events/sla.py says what a budget means):

    pk ``SLA#<account>#<YYYY-MM>``, sk ``<request id>``
    data {"budget_ms", "ttft_ms", "met", "cluster", "model", "at"}

Each write is a put-if-absent keyed by the request id (unique per request, whichever ingress
replica served it), so a retried write counts once and nothing is counted twice; a count is a
query of the month's partition. Items expire a year and a bit after their month (DynamoDB TTL),
long after the month is evaluated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from events.sla import period_end
from functions.store import Absent, ConditionFailed, Item, Store, query_all

KEEP_S = 400 * 86_400


def observations_pk(account_id: str, period: str) -> str:
    return f"SLA#{account_id}#{period}"


@dataclass(frozen=True, slots=True)
class Observation:
    request_id: str
    budget_ms: int
    ttft_ms: int
    cluster: str
    model: str
    at: int

    @property
    def met(self) -> bool:
        return self.ttft_ms <= self.budget_ms


def record(store: Store, account_id: str, period: str, obs: Observation) -> bool:
    """Record one request's outcome; False if it was recorded already (a retry)."""
    data: dict[str, Any] = {
        "budget_ms": obs.budget_ms,
        "ttft_ms": obs.ttft_ms,
        "met": obs.met,
        "cluster": obs.cluster,
        "model": obs.model,
        "at": obs.at,
    }
    item = Item(
        observations_pk(account_id, period),
        obs.request_id,
        1,
        data,
        expires_at=period_end(period) + KEEP_S,
    )
    try:
        store.put(item, Absent())
    except ConditionFailed:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Tally:
    """A month of one account's requests with a budget."""

    requests: int = 0
    met: int = 0

    @property
    def breached(self) -> int:
        return self.requests - self.met

    @property
    def attainment_bp(self) -> int:
        """Met / requests in basis points, rounded down (10000 when there were none)."""
        return self.met * 10_000 // self.requests if self.requests else 10_000

    def view(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "met": self.met,
            "breached": self.breached,
            "attainment_percent": f"{self.attainment_bp // 100}.{self.attainment_bp % 100:02d}",
        }


def tally(store: Store, account_id: str, period: str) -> Tally:
    requests = met = 0
    for item in query_all(store, observations_pk(account_id, period)):
        requests += 1
        met += bool(item.data["met"])
    return Tally(requests, met)
