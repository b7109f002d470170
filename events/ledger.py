"""Data of the ledger's commands and facts (types in events/types.py).

One capture per hold — the rule infer, the ingress and the ledger keep between them:

- A hold resolves once: the first of settle (``inference.completed``, ``hold.settle``, or
  ``inference.failed`` with output), void (``hold.refund`` of an open hold, ``inference.failed``
  with no output) and expiry wins; any later settle of it is refused (409), however late it
  comes and whatever its idempotency key — the hold's state refuses it, not only the dedupe.
- Two meters may report one hold: infer's own event, and the ingress's ``inference.completed``
  (source ``/tollgate/ingress``, id ``<hold>#relayed``) for a stream infer broke off. The first to
  arrive settles; the second is refused.
- ``inference.failed`` whose usage has completion tokens settles by that usage (the output
  reached the client before the engine failed); without completion tokens it voids the hold.
- The ingress voids the hold of an attempt that put nothing in front of the client with
  ``hold.refund`` {hold_id} (id ``<hold>#void``): an open hold is voided; a hold its infer settled
  meanwhile gets its whole capture back (a refund lot). A hold voided this way is never captured
  afterwards — a late settle of an expired hold included: if the void arrives after the hold
  expired, the ledger keeps that it was voided and refuses the late settle.
- The ingress authorizes another cluster's hold for the same request only after the ledger took
  the previous hold's void, so a request is captured at most once.

Credit leases (router_fn/lease.py) are holds too: ``hold.authorize`` with ``lease`` opens one
(or tops one up), and many requests are captured against it, each once, under its own request
reference (the capability's attempt id) and never above its own bound (the capability's
``credits``): ``inference.completed`` of a lease attempt is one journal record per request. A
void of one lease request is ``hold.refund`` with ``request`` (id ``<attempt>#void``); a capture
of that request arriving later charges nothing, and a void arriving after its capture returns
the capture as a refund lot. ``hold.refund`` with ``lease_return`` returns the lease: the ledger
keeps only what the requests it has not seen yet may still capture and releases the rest, then
closes the hold when the last of them arrives (or at its TTL). A capture that arrives after its
lease closed is charged from what the account has, as a late settle is."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from events.fields import AccountId, Amount, Count, EventData, HoldId, Name, Timestamp
from events.quote import Quote, Usage

Origin = Literal[
    "plan", "top-up", "subscription", "refund", "promotion", "adjustment", "sla-credit"
]
MAX_TTL_SECONDS = 24 * 3600


class CreditsGrant(EventData):
    account_id: AccountId
    amount: Amount
    expires_at: Timestamp | None = None
    tiers: list[Name] | None = Field(default=None, min_length=1, max_length=16)
    models: list[Name] | None = Field(default=None, min_length=1, max_length=64)
    origin: Origin = "top-up"
    reference: Name | None = None  # e.g. the plan period or slice booking this grant is for


class LeaseAsk(EventData):
    """Authorize as a credit lease: ``amount`` is what the ingress would like; the ledger grants
    less when the account has less (at most half of what it could spend, so one replica never
    locks a whole balance), down to ``min_amount``, below which it declines."""

    renew: HoldId | None = None  # the lease to top up and extend; None: open a new one
    min_amount: Amount


class HoldAuthorize(EventData):
    account_id: AccountId
    amount: Amount
    ttl_seconds: int = Field(default=300, strict=True, ge=1, le=MAX_TTL_SECONDS)
    tier: Name | None = None
    model: Name | None = None
    quote: Quote | None = None
    lease: LeaseAsk | None = None


class HoldSettle(EventData):
    """Capture ``amount`` of a hold (at most the hold), as an operator's own flow decides it;
    metered inference settles by ``inference.completed`` and the hold's quote instead."""

    hold_id: HoldId
    amount: Amount


class LeaseRequest(EventData):
    """One request admitted against a lease: its reference and the most it may capture."""

    request: Name
    bound: Amount


class LeaseReturn(EventData):
    """What the returning ingress admitted against the lease, all told."""

    requests: Count
    bounds: Count
    # How long captures still in flight may take before the sweep closes the lease.
    ttl_seconds: int = Field(default=300, strict=True, ge=1, le=MAX_TTL_SECONDS)


class HoldRefund(EventData):
    hold_id: HoldId
    request: LeaseRequest | None = None  # void this one request of a lease
    lease_return: LeaseReturn | None = None  # return the lease
    amount: Amount | None = None  # for a settled hold: how much to return (default: all of it)
    # The operator's own id of this refund: the same refund_id twice (under any event id)
    # refunds once. Without one, each event is a refund of its own.
    refund_id: Name | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> HoldRefund:
        asked = [
            name
            for name in ("request", "lease_return", "amount", "refund_id")
            if getattr(self, name) is not None
        ]
        if ("request" in asked or "lease_return" in asked) and len(asked) > 1:
            raise ValueError(
                f"{' and '.join(asked)} cannot go together: a refund voids one lease request, "
                "returns a lease, or refunds a hold"
            )
        return self


class HoldsSweep(EventData):
    pass


Period = Annotated[str, Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")]  # YYYY-MM, UTC


class PlansRenew(EventData):
    """The monthly schedule: grant every account its plan's credits for the period (default:
    the current one). It fans out one ``plans.renew.account`` per registered account, a page at
    a time; a page that is not the last ends by sending this command again, ``after`` it."""

    period: Period | None = None
    after: Count = 0  # registry position to continue after


class PlansRenewAccount(EventData):
    """One account's renewal for one period (its own event, so its failure is its own)."""

    account_id: AccountId
    period: Period


class PlansRenewed(EventData):
    period: Period
    accounts: Count  # renewals sent by this page
    next_after: Count | None = None  # where the next page starts; None: this was the last


class Timings(EventData):
    ttft_ms: Count | None = None
    total_ms: Count = 0
    engine_ms: Count = 0


class InferenceOutcome(EventData):
    """What infer reports of every held request, however it ended. ``capability`` is the
    ingress's signed capability for the attempt (events/capability.py): settle and refund move
    credits only for the hold and account it names, so whoever merely knows a hold id cannot
    settle or refund it. A durable outbox keeps it with the event."""

    hold_id: HoldId
    account_id: AccountId
    model: Name
    tier: Name | None = None
    cluster: Name | None = None
    usage: Usage
    timings: Timings = Timings()
    capability: str = Field(min_length=16, max_length=8192)


class InferenceCompleted(InferenceOutcome):
    # The ingress's metering of a stream it relayed that did not end normally, sent in case
    # infer's own never comes (infer died with it): it settles a hold nothing settled yet, and
    # is answered with nothing (204, no change) once the hold was settled.
    stand_in: bool = False


class InferenceError(EventData):
    type: str = Field(max_length=128)
    message: str = Field(max_length=4096)


class InferenceFailed(InferenceOutcome):
    # An attempt that failed before any output (the ingress's own report) used nothing.
    usage: Usage = Usage(prompt_tokens=0, completion_tokens=0)
    error: InferenceError


# At most this many reports per ``inference.usage`` event: ~1 KB each (the capability is most of
# it), so a batch stays far below the 1 MiB a function takes, and one batch is handled well
# within a delivery's timeout.
MAX_USAGE_REPORTS = 64
MAX_REPORT_ID_BYTES = 256  # as a CloudEvent id (functions/cloudevent.py)


def _report_id(value: str) -> str:
    if len(value.encode(errors="surrogatepass")) > MAX_REPORT_ID_BYTES:
        raise ValueError(f"a report id is at most {MAX_REPORT_ID_BYTES} bytes")
    return value


class UsageReport(EventData):
    """One request's usage in an ``inference.usage`` batch: the data of the ``inference.completed``
    event infer would have sent alone, under that event's id. Settle processes it exactly as that
    event (idempotency key: the batch's source + this id), so a report delivered in a batch and
    again alone, or in another batch, is charged once.

    Only ``completed`` reports ride in batches: ``inference.failed`` goes to the refund function
    and is rare (it is not the hot path), so it stays one event per request."""

    id: Annotated[str, Field(min_length=1), AfterValidator(_report_id)]
    kind: Literal["completed"]
    data: InferenceCompleted

    @model_validator(mode="after")
    def _infer_own(self) -> UsageReport:
        if self.data.stand_in:
            raise ValueError(
                "a stand-in report (the ingress's metering of a broken relay) is sent alone as "
                "inference.completed, never in a batch"
            )
        return self


class InferenceUsage(EventData):
    """Usage of many requests in one event (infer's outbox sends what is due in one go), each
    report still its own journal record."""

    reports: list[UsageReport] = Field(min_length=1, max_length=MAX_USAGE_REPORTS)

    @model_validator(mode="after")
    def _distinct(self) -> InferenceUsage:
        ids = [report.id for report in self.reports]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"report ids must be distinct in a batch; repeated: {twice[:5]}")
        return self


def usage_batch(reports: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The data of an ``inference.usage`` event carrying these ``(id, inference.completed data)``
    reports, in InferenceUsage's shape (built as JSON: each report's data was made by
    InferenceCompleted already, and the receiver validates the whole)."""
    return {"reports": [{"id": id_, "kind": "completed", "data": data} for id_, data in reports]}


class CreditsGranted(EventData):
    account_id: AccountId
    lot_id: str
    amount: Amount
    origin: Origin
    expires_at: Timestamp | None = None
    available: Count


class LeaseState(EventData):
    """A lease as the ledger has it: captured so far, and the bounds of the requests counted
    (captured or voided) — what the ingress needs to know how much it may still admit."""

    captured: Count
    bounds: Count
    requests: Count


class HoldAuthorized(EventData):
    hold_id: HoldId
    account_id: AccountId
    amount: Count  # what the hold holds now (a lease: after its captures, possibly 0)
    expires_at: Timestamp
    available: Count | None = None  # what the account has left to spend after this hold
    lease: LeaseState | None = None


class HoldDeclined(EventData):
    account_id: AccountId
    amount: Amount
    reason: str
    available: Count


class HoldSettled(EventData):
    hold_id: HoldId
    account_id: AccountId
    captured: Count
    released: Count
    # A settle after the hold ended: "expired" (charged from what the account had, the rest a
    # shortfall) or "voided" (nothing charged, all waived).
    # "returned": a lease request captured after its lease closed (charged as "expired").
    late: Literal["expired", "voided", "returned"] | None = None
    shortfall: Count = 0
    waived: Count = 0


class HoldRefunded(EventData):
    hold_id: HoldId
    account_id: AccountId
    refunded: Count


class HoldExpired(EventData):
    hold_id: HoldId
    account_id: AccountId
    released: Count


class HoldsSwept(EventData):
    accounts: Count
    holds_expired: Count
    lots_expired: Count
