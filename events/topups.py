"""Top-ups bought on the phone bill (CAMARA Carrier Billing): what the ingress publishes when the
operator notifies a payment or refund, and the schedule that polls the ones left unanswered.

The ingress never decides anything about money: it authenticates the operator's notification,
maps it (events.carrier_billing) and publishes one of these; the ledger applies it idempotently."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from events.fields import AccountId, Count, EventData, Timestamp

TOPUP_PAYMENT_CHANGED: Final = "io.tollgate.topup.payment.changed.v1"
TOPUP_REFUND_CHANGED: Final = "io.tollgate.topup.refund.changed.v1"
TOPUPS_POLL: Final = "io.tollgate.topups.poll.v1"
TOPUPS_POLLED: Final = "io.tollgate.topups.polled.v1"

TopupId = Annotated[str, Field(pattern=r"^tu-[A-Za-z0-9]{8,40}$")]
OperatorId = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, Field(max_length=1024)]
SourceEvent = Annotated[str, Field(min_length=1, max_length=512)]


def sink_subject(account_id: str, topup_id: str) -> str:
    """What a top-up's sink credential is signed for (the ledger issues, the ingress checks)."""
    return f"{account_id}/{topup_id}"


class TopupPaymentChanged(EventData):
    """The operator says where a top-up's payment stands (CAMARA payment-* notifications).
    ``succeeded`` is the notification's status: a completed payment that succeeded is the only
    one that grants credits."""

    account_id: AccountId
    topup_id: TopupId
    payment_id: OperatorId
    event: Literal["pending-validation", "reserved", "completed", "cancelled", "denied"]
    succeeded: bool
    description: Text
    payment_date: Timestamp | None = None
    denial_reason: Text | None = None
    source_event: SourceEvent


class TopupRefundChanged(EventData):
    """The operator says where a top-up's refund stands (CAMARA refund-* notifications)."""

    account_id: AccountId
    topup_id: TopupId
    payment_id: OperatorId
    refund_id: OperatorId
    event: Literal["completed", "denied", "in-bill"]
    succeeded: bool
    description: Text
    refund_date: Timestamp | None = None
    denial_reason: Text | None = None
    source_event: SourceEvent


class TopupsPoll(EventData):
    """The schedule: ask the operator about payments and refunds no notification settled."""


class TopupsPolled(EventData):
    checked: Count
    granted: Count
    settled: Count  # payments and refunds that reached a final state


MODELS: Final[dict[str, type[EventData]]] = {
    TOPUP_PAYMENT_CHANGED: TopupPaymentChanged,
    TOPUP_REFUND_CHANGED: TopupRefundChanged,
    TOPUPS_POLL: TopupsPoll,
    TOPUPS_POLLED: TopupsPolled,
}
