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

from events import network, topups
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
        "settle": _kind((t.HOLD_SETTLE, t.INFERENCE_COMPLETED), (t.HOLD_SETTLED,)),
        "refund": _kind((t.HOLD_REFUND, t.INFERENCE_FAILED), (t.HOLD_REFUNDED,)),
        "grant": _kind(
            (
                t.CREDITS_GRANT,
                t.PLANS_RENEW,
                network.SLICE_BOOKED,
                topups.TOPUP_PAYMENT_CHANGED,
                topups.TOPUP_REFUND_CHANGED,
                topups.TOPUPS_POLL,
            ),
            (t.CREDITS_GRANTED, t.PLANS_RENEWED, topups.TOPUPS_POLLED),
        ),
        "sweep": _kind((t.HOLDS_SWEEP,), (t.HOLD_EXPIRED, t.HOLDS_SWEPT)),
        "ledger-admin": _kind(),
        # Keeps what the broker gave up delivering (any type; its own cluster-local sink).
        "deadletters": _kind(),
        "route": _kind(
            (t.ROUTE_REQUESTED, network.SITE_DEGRADED, network.SITE_RESTORED), (t.ROUTE_DECIDED,)
        ),
        # The ingress asks authorize with CloudEvents and reports a failed attempt itself when
        # it fails over; its events endpoint publishes what network systems tell us.
        "ingress": _kind(
            (),
            (
                t.HOLD_AUTHORIZE,
                t.INFERENCE_COMPLETED,
                t.INFERENCE_FAILED,
                *network.MODELS,
                topups.TOPUP_PAYMENT_CHANGED,
                topups.TOPUP_REFUND_CHANGED,
            ),
        ),
        "infer": _kind((), (t.INFERENCE_COMPLETED, t.INFERENCE_FAILED)),
    }
)

# Deployed once per cluster x hosted model rather than once per platform.
INFER: Final = "infer"

# Commands one function sends another directly (a synchronous CloudEvent over HTTP, not through
# the broker): (caller, callee, type). The callee's event policy admits exactly these.
DIRECT_CALLS: Final = (
    ("ingress", "authorize", t.HOLD_AUTHORIZE),
    ("ingress", "refund", t.INFERENCE_FAILED),
)

# Knative's PingSource always sends its own type; a scheduled command carries its Tollgate type
# in an extension instead (see infra/knative/render.py), which the function runtime reads.
PING_EVENT_TYPE: Final = PING_TYPE
PING_TYPE_EXTENSION: Final = PING_EXTENSION


def known_event_types() -> frozenset[str]:
    """Every event type the catalogue has a model for."""
    return frozenset(MODELS)
