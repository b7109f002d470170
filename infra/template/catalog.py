"""The one table of what each function kind consumes and emits.

Validation ("a trigger for an event type nobody emits", "a trigger to a function that does not
consume that type") and rendering read it; nothing else may restate it. A template entry can add
types on top (``consumes``/``emits``), which is how network-slice consumers get declared without a
code change here.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from events import network, sla, topups
from events import types as t
from events.catalogue import MODELS
from functions.app import PING_TYPE
from functions.app import PING_TYPE_EXTENSION as PING_EXTENSION


@dataclass(frozen=True)
class FunctionKind:
    consumes: frozenset[str]
    emits: frozenset[str]


def _kind(consumes: tuple[str, ...] = (), emits: tuple[str, ...] = ()) -> FunctionKind:
    return FunctionKind(frozenset(consumes), frozenset(emits))


FUNCTION_KINDS: Final = MappingProxyType(
    {
        "authorize": _kind((t.HOLD_AUTHORIZE,), (t.HOLD_AUTHORIZED, t.HOLD_DECLINED)),
        "settle": _kind(
            (t.HOLD_SETTLE, t.INFERENCE_COMPLETED, t.INFERENCE_USAGE), (t.HOLD_SETTLED,)
        ),
        "refund": _kind((t.HOLD_REFUND, t.INFERENCE_FAILED), (t.HOLD_REFUNDED,)),
        "grant": _kind(
            (
                t.CREDITS_GRANT,
                t.PLANS_RENEW,
                t.PLANS_RENEW_ACCOUNT,
                network.SLICE_BOOKED,
                topups.TOPUP_PAYMENT_CHANGED,
                topups.TOPUP_REFUND_CHANGED,
                topups.TOPUPS_POLL,
                sla.SLA_EVALUATE,
            ),
            (
                t.CREDITS_GRANTED,
                t.PLANS_RENEWED,
                # The renewal fans out one event per account, and continues itself page by page.
                t.PLANS_RENEW,
                t.PLANS_RENEW_ACCOUNT,
                topups.TOPUPS_POLLED,
                sla.SLA_EVALUATED,
                sla.SLA_CREDITED,
            ),
        ),
        "sweep": _kind((t.HOLDS_SWEEP,), (t.HOLD_EXPIRED, t.HOLDS_SWEPT)),
        "ledger-admin": _kind(),
        # Keeps what the broker gave up delivering (any type; its own cluster-local sink).
        "deadletters": _kind(),
        "route": _kind(
            (
                t.ROUTE_REQUESTED,
                t.TIERS_WARM,
                network.SITE_DEGRADED,
                network.SITE_RESTORED,
                network.SLICE_BOOKED,
                network.QOS_CHANGED,
                network.ROAMING_CHANGED,
                network.SUBSCRIPTION_CHANGED,
            ),
            (t.ROUTE_DECIDED,),
        ),
        # The ingress asks authorize with CloudEvents, voids a failed attempt's hold itself
        # (hold.refund, to the refund function), meters a stream whose infer died (completed,
        # to the broker); its events endpoints publish what network systems tell us and what
        # the other clusters' infer report (completed, usage batches, failed).
        "ingress": _kind(
            (),
            (
                t.HOLD_AUTHORIZE,
                t.HOLD_REFUND,
                t.INFERENCE_COMPLETED,
                t.INFERENCE_USAGE,
                t.INFERENCE_FAILED,
                *network.MODELS,
                topups.TOPUP_PAYMENT_CHANGED,
                topups.TOPUP_REFUND_CHANGED,
            ),
        ),
        # Infer's outbox batches its completed reports as inference.usage; a batch refused for
        # good is sent again one inference.completed at a time (functions/outbox.py).
        "infer": _kind((), (t.INFERENCE_COMPLETED, t.INFERENCE_USAGE, t.INFERENCE_FAILED)),
    }
)

# Deployed once per cluster x hosted model rather than once per platform.
INFER: Final = "infer"

# Commands one function sends another directly (a synchronous CloudEvent over HTTP, not through
# the broker): (caller, callee, type). The callee's event policy admits exactly these.
DIRECT_CALLS: Final = (
    ("ingress", "authorize", t.HOLD_AUTHORIZE),
    ("ingress", "refund", t.HOLD_REFUND),
)

# Knative's PingSource always sends its own type; a scheduled command carries its Tollgate type
# in an extension instead (see infra/knative/render.py), which the function runtime reads.
PING_EVENT_TYPE: Final = PING_TYPE
PING_TYPE_EXTENSION: Final = PING_EXTENSION


def known_event_types() -> frozenset[str]:
    """Every event type the catalogue has a model for."""
    return frozenset(MODELS)
