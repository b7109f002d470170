"""Records of recent activity the router keeps for ops (functions/recent.py stores them; the ops
console reads them): what each route decision chose and why, and what each network event did.
Written by router_fn, read by ledger_fn's console: the shape lives here, once.

Text fields are cut to a bound when built (``clip``), so one record stays small whatever a
sender or a failure message holds."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from events.fields import EventData

ROUTE_DECISIONS = "route-decisions"
NETWORK_EVENTS = "network-events"
MAX_TEXT = 500
MAX_EVENTS = 16


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ActivityRecord(EventData):
    at: float | None = None  # epoch seconds, set when the record is queued (functions.recent)


class RouteDecisionRecord(ActivityRecord):
    """One request's route: where it went and why, or why no tier could serve it (with the
    attempts that failed first)."""

    request_id: str = Field(max_length=64)
    account_id: str = Field(max_length=64)
    model: str = Field(max_length=128)
    outcome: Literal["routed", "no_route", "full"]  # full: refused, every cluster at capacity
    cluster: str | None = Field(default=None, max_length=64)
    tier: str | None = Field(default=None, max_length=64)
    reason: str = Field(max_length=MAX_TEXT)  # x-tollgate-route-reason, or why no tier could
    latency_budget_ms: int | None = None


class PublishedEvent(EventData):
    type: str = Field(max_length=128)
    subject: str | None = Field(default=None, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)


class NetworkEventRecord(ActivityRecord):
    """A notification a network system posted to the ingress, and what it did: published our
    events, was a replay, held nothing for Tollgate, or was refused (with the reason)."""

    path: str = Field(max_length=200)
    kind: str = Field(max_length=200)  # the sender's type (CAMARA type, NWDAF, MOI)
    notification_id: str | None = Field(default=None, max_length=300)
    status: int
    outcome: Literal["published", "duplicate", "ignored", "refused"]
    detail: str = Field(default="", max_length=MAX_TEXT)
    events: tuple[PublishedEvent, ...] = Field(default=(), max_length=MAX_EVENTS)
