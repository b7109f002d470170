"""What the ingress owes the ledger, durably (functions/outbox.py), so no fault loses it:

- the **void** of a hold (or of one request of a credit lease) whose attempt put nothing in
  front of the client (a failed attempt, a request the engine refused): tried at once; if the
  ledger cannot take it now, owed until it does
  — and the request is not failed over meanwhile, so a second hold is only ever authorized once
  the first is void (one request is captured at most once, whatever the timing);
- the **release** of a hold whose authorize answer was lost (a timeout, a 5xx): the same
  authorize is sent again under its event id until the ledger answers; the ledger's dedupe hands
  back the hold it made (or makes it now), and that hold is voided;
- the **stand-in metering of a relayed stream that did not end normally**: ``inference.completed``
  with the usage of the last chunk relayed (what reached the client), marked ``stand_in`` and
  owed to the broker. Infer owes its own event for the same hold and normally settles it: the
  ledger then answers the stand-in with nothing (a lease's request: the first report of it
  counts). It exists for the infer that died with the stream: at once when infer broke the
  stream off, ``STAND_IN_DELAY_S`` later when the client left (infer, if alive, meters what it
  made on noticing, and its number should win);
- the **return** of a credit lease (router_fn/lease.py): what the ingress admitted against it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from events import types
from events.ledger import (
    HoldAuthorize,
    HoldAuthorized,
    HoldRefund,
    InferenceCompleted,
    LeaseRequest,
    LeaseReturn,
    Timings,
)
from events.quote import Usage
from functions.emit import Emitter
from functions.errors import FunctionError, PaymentRequired, Unavailable
from functions.outbox import (
    SINK,
    Entry,
    Outbox,
    OutboxError,
    OutboxSettings,
    Outcome,
    Verdict,
    sink_route,
)
from router_fn import metrics
from router_fn.ledger_client import SOURCE, BadReply, LedgerClient

log = logging.getLogger(__name__)

VOID = "void"
RELEASE = "release"
REFUND = "refund"
VOID_TRIES = 2
# Far longer than infer takes to meter a closed stream and its broker to deliver it.
STAND_IN_DELAY_S = 30.0
VOID_PAUSE_S = 0.2
# The ledger's answers that mean "this hold can no longer be captured": it is already void,
# settled and now refunded, or expired (the ledger refuses later settles of a hold voided here).
RESOLVED = (404, 409)


def void_id(attempt: str) -> str:
    return f"{attempt}#void"


@dataclass(frozen=True)
class Relayed:
    """A stream the ingress meters itself: what reached the client of one attempt."""

    hold: HoldAuthorized
    tier: str
    cluster: str
    model: str
    usage: Usage
    started: float  # time.monotonic() when infer was called
    first_text: float | None  # when the first text was relayed
    capability: str  # the attempt's, which settle checks
    attempt: str  # the capability's attempt id (a per-request hold's: its hold id)
    client_left: bool  # the client closed the stream (else infer broke it off)


class Owed:
    def __init__(self, ledger: LedgerClient, emitter: Emitter, settings: OutboxSettings) -> None:
        self.ledger = ledger
        routes = {
            SINK: sink_route(emitter),
            VOID: self._void,
            RELEASE: self._release,
            REFUND: self._refund,
        }
        self.outbox: Outbox = settings.open("ingress", routes)

    @property
    def full(self) -> bool:
        return self.outbox.full

    # -- what the request path calls ------------------------------------------------------------

    def void(self, hold: HoldAuthorized, why: str, request: LeaseRequest | None = None) -> bool:
        """Void the hold (with ``request``: that request of the lease ``hold`` is) now; True
        once the ledger took it, else it is owed (False)."""
        command = HoldRefund(hold_id=hold.hold_id, request=request)
        event_id = void_id(hold.hold_id if request is None else request.request)
        for attempt in range(VOID_TRIES):
            outcome = self._refund_now(event_id, command)
            if outcome.verdict is not Verdict.RETRY:
                return True
            if attempt + 1 < VOID_TRIES:
                time.sleep(VOID_PAUSE_S)
        log.warning("void of %s (%s) owed: %s", event_id, why, outcome.detail)
        metrics.VOIDS_OWED.inc()
        self._owe(types.HOLD_REFUND, event_id, command.model_dump(mode="json"), REFUND)
        return False

    def return_lease(self, hold_id: str, returned: LeaseReturn) -> None:
        """Return a lease: owed until the ledger takes it (it expires at its TTL meanwhile)."""
        command = HoldRefund(hold_id=hold_id, lease_return=returned)
        self._owe(types.HOLD_REFUND, f"{hold_id}#return", command.model_dump(mode="json"), REFUND)

    def release(self, event_id: str, command: HoldAuthorize) -> None:
        """The authorize sent as ``event_id`` got no answer: find its hold and void it, later."""
        self._owe(types.HOLD_AUTHORIZE, event_id, command.model_dump(mode="json"), RELEASE)

    def relayed(self, metered: Relayed) -> None:
        """Stand in for infer's metering of a stream that did not end normally: what reached
        the client, owed to the broker."""
        started, ttft = metered.started, metered.first_text
        total_ms = round((time.monotonic() - started) * 1000)
        event = InferenceCompleted(
            hold_id=metered.hold.hold_id,
            account_id=metered.hold.account_id,
            model=metered.model,
            tier=metered.tier,
            cluster=metered.cluster,
            usage=metered.usage,
            # The engine time infer would have reported is unknown: the stream's time bounds it.
            timings=Timings(
                ttft_ms=None if ttft is None else round((ttft - started) * 1000),
                total_ms=total_ms,
                engine_ms=total_ms,
            ),
            capability=metered.capability,
            stand_in=True,
        )
        metrics.RELAYED_METERING.labels("left" if metered.client_left else "cut").inc()
        self._owe(
            types.INFERENCE_COMPLETED,
            f"{metered.attempt}#relayed",
            event.model_dump(mode="json"),
            SINK,
            delay_s=STAND_IN_DELAY_S if metered.client_left else 0.0,
        )

    def _owe(
        self, type: str, event_id: str, data: dict[str, Any], route: str, delay_s: float = 0.0
    ) -> None:
        try:
            self.outbox.put(type, SOURCE, data, id=event_id, route=route, delay_s=delay_s)
        except OutboxError:
            metrics.OWED_LOST.inc()
            log.exception("could not owe %s %s: it is lost", type, event_id)

    # -- the outbox's routes --------------------------------------------------------------------

    def _void_now(self, hold_id: str) -> Outcome:
        return self._refund_now(void_id(hold_id), HoldRefund(hold_id=hold_id))

    def _refund_now(self, event_id: str, command: HoldRefund) -> Outcome:
        try:
            self.ledger.refund(event_id, command)
        except Unavailable as exc:
            return Outcome(Verdict.RETRY, exc.message)
        except FunctionError as exc:
            if exc.status in RESOLVED:
                return Outcome(Verdict.DELIVERED, exc.message)
            return Outcome(Verdict.REFUSED, exc.message)
        return Outcome(Verdict.DELIVERED)

    def _void(self, entry: Entry) -> Outcome:  # voids owed before leases (same id and data)
        return self._void_now(str(entry.data["hold_id"]))

    def _refund(self, entry: Entry) -> Outcome:
        return self._refund_now(entry.id, HoldRefund.model_validate(entry.data))

    def _release(self, entry: Entry) -> Outcome:
        command = HoldAuthorize.model_validate(entry.data)
        try:
            hold = self.ledger.hold(entry.id, command)
        except PaymentRequired:
            return Outcome(Verdict.DELIVERED, "declined: nothing was held")
        except BadReply as exc:
            return Outcome(Verdict.REFUSED, exc.message)
        except Unavailable as exc:
            return Outcome(Verdict.RETRY, exc.message)
        except FunctionError as exc:
            return Outcome(Verdict.REFUSED, exc.message)
        log.info("found hold %s of lost authorize %s: voiding it", hold.hold_id, entry.id)
        self._owe(types.HOLD_REFUND, void_id(hold.hold_id), {"hold_id": hold.hold_id}, VOID)
        return Outcome(Verdict.DELIVERED)
