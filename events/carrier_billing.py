"""CAMARA Carrier Billing notifications -> io.tollgate.topup.*.v1.

From carrier-billing.yaml and carrier-billing-refund.yaml (CarrierBillingCheckOut@ef4aa18, wip;
latest public 0.5.0 and 0.3.0): the operator posts structured CloudEvents to the ``sink`` Tollgate
gave when it created the payment (or refund), with the ``sinkCredential`` bearer. Payment events
carry BasicEvent data (paymentId, status succeeded|failed, description), plus paymentDate when
completed and denialReason when denied; refund events add refundId, refundDate, denialReason.
The sink names the top-up (``/events/carrier-billing/<account>/<topup>``): the notification's
paymentId is checked against the top-up by the ledger, which knows it."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from events import topups
from events.adapter import Mapped, NetworkEventError, mapped, parse
from events.camara import CamaraData, DateTime, envelope_of

PAYMENT_EVENTS: Final = {
    f"org.camaraproject.carrier-billing.v0.payment-{name}": name
    for name in ("pending-validation", "reserved", "completed", "cancelled", "denied")
}
REFUND_EVENTS: Final = {
    f"org.camaraproject.carrier-billing-refund.v0.refund-{name}": name
    for name in ("completed", "denied", "in-bill")
}
OperatorId = Annotated[str, Field(min_length=1, max_length=256)]


class PaymentEvent(CamaraData):
    """BasicEvent with PaymentCompleted's paymentDate and PaymentDenied's denialReason."""

    paymentId: OperatorId
    status: Literal["succeeded", "failed"]
    description: str
    paymentDate: DateTime | None = None
    denialReason: str | None = None


class RefundEvent(CamaraData):
    paymentId: OperatorId
    refundId: OperatorId
    status: Literal["succeeded", "failed"]
    description: str
    refundDate: DateTime | None = None
    denialReason: str | None = None


def _check(body: object, accepted: dict[str, str]) -> tuple[str, str, dict[str, object]]:
    event = envelope_of(body)
    name = accepted.get(event.type)
    if name is None:
        raise NetworkEventError(
            f"unknown event type {event.type} here; accepted: {', '.join(accepted)}"
        )
    return event.type, name, event.data


def from_payment_notification(body: object, *, account_id: str, topup_id: str) -> Mapped:
    event_type, name, data = _check(body, PAYMENT_EVENTS)
    payment = parse(PaymentEvent, data, f"{event_type} data")
    if name == "completed" and payment.paymentDate is None:
        raise NetworkEventError(f"invalid {event_type} data: paymentDate: Field required")
    changed = parse(
        topups.TopupPaymentChanged,
        {
            "account_id": account_id,
            "topup_id": topup_id,
            "payment_id": payment.paymentId,
            "event": name,
            "succeeded": payment.status == "succeeded",
            "description": payment.description[:1024],
            "payment_date": payment.paymentDate,
            "denial_reason": payment.denialReason and payment.denialReason[:1024],
            "source_event": event_type,
        },
        f"{event_type} data",
    )
    return mapped(topups.TOPUP_PAYMENT_CHANGED, changed, account_id)


def from_refund_notification(body: object, *, account_id: str, topup_id: str) -> Mapped:
    event_type, name, data = _check(body, REFUND_EVENTS)
    refund = parse(RefundEvent, data, f"{event_type} data")
    if name == "completed" and refund.refundDate is None:
        raise NetworkEventError(f"invalid {event_type} data: refundDate: Field required")
    changed = parse(
        topups.TopupRefundChanged,
        {
            "account_id": account_id,
            "topup_id": topup_id,
            "payment_id": refund.paymentId,
            "refund_id": refund.refundId,
            "event": name,
            "succeeded": refund.status == "succeeded",
            "description": refund.description[:1024],
            "refund_date": refund.refundDate,
            "denial_reason": refund.denialReason and refund.denialReason[:1024],
            "source_event": event_type,
        },
        f"{event_type} data",
    )
    return mapped(topups.TOPUP_REFUND_CHANGED, changed, account_id)
