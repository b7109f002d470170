"""CloudEvent handlers of the ledger functions: validate, apply once, reply with the fact.

Each command is applied under its event's source + id as idempotency key, claimed by the same
journal write as its effect (ledger_fn/ledger.py), so a redelivery — even one after a crash, for
as long as the dedupe window — returns the first result and a redelivery with different data is
refused (409).

``inference.usage`` carries many ``inference.completed`` reports (infer's outbox sends what is due
at once): each is taken exactly as that event alone would be, under its own key (the batch's
source + the report's id), so a report seen in a batch and again alone or in another batch is
charged once. A report refused for good (bad capability, a hold already resolved...) does not
hold back the others: it is kept as a dead letter, where the broker keeps a refused single event,
logged and counted; a transient failure (store down) fails the whole batch, which is retried and
dedupes what was done."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from events import types
from events.capability import Capability, CapabilityError, verify
from events.fields import EventData
from events.ledger import (
    CreditsGrant,
    CreditsGranted,
    HoldAuthorize,
    HoldAuthorized,
    HoldDeclined,
    HoldExpired,
    HoldRefund,
    HoldRefunded,
    HoldSettle,
    HoldSettled,
    HoldsSweep,
    HoldsSwept,
    InferenceCompleted,
    InferenceFailed,
    InferenceOutcome,
    InferenceUsage,
    LeaseRequest,
    LeaseState,
    PlansRenew,
    PlansRenewAccount,
    PlansRenewed,
)
from events.network import SLICE_BOOKED, SliceBooked
from functions.accounts import account_for_slice
from functions.app import Handler
from functions.auth.keys import VerifyKeys
from functions.cloudevent import Incoming, Reply
from functions.deadletters import DeadLetters
from functions.emit import Emitter
from functions.errors import BadRequest, Conflict, Forbidden, FunctionError, Unavailable
from functions.validation import validate
from ledger_fn.ledger import Ledger
from ledger_fn.metrics import USAGE_REPORTS
from ledger_fn.plans import Plans
from ledger_fn.state import OpKind, account_of

log = logging.getLogger(__name__)


def iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def epoch(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def moment(epoch: int | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def reply(event_type: str, fact: EventData, subject: str | None = None) -> Reply:
    """A reply event built from its catalogue model, so what we send is what the type says."""
    return Reply(event_type, fact.model_dump(mode="json"), subject=subject)


def granted_reply(r: dict[str, Any]) -> Reply:
    """The ``credits.granted`` fact of a committed grant's result."""
    granted = CreditsGranted(
        account_id=r["account_id"],
        lot_id=r["lot_id"],
        amount=r["amount"],
        origin=r["origin"],
        expires_at=moment(r["expires_at"]),
        available=r["available"],
    )
    return reply(types.CREDITS_GRANTED, granted, subject=granted.account_id)


class LedgerHandlers:
    def __init__(
        self,
        ledger: Ledger,
        plans: Plans,
        emitter: Emitter,
        capability_keys: VerifyKeys | None = None,
        source: str = "/tollgate/ledger",
    ) -> None:
        self.ledger = ledger
        self.plans = plans
        self.emitter = emitter
        self.capability_keys = capability_keys
        self.source = source
        self.dead_letters = DeadLetters(ledger.store)

    def _run(
        self, event: Incoming, account_id: str, kind: OpKind, args: dict[str, Any]
    ) -> dict[str, Any]:
        return self.ledger.execute(account_id, kind, args, key=event.key, payload=event.data)

    def grant(self, event: Incoming) -> Reply:
        cmd = validate(CreditsGrant, event.data, f"{event.type} data")
        args = cmd.model_dump(exclude={"account_id"}, exclude_none=True)
        args["expires_at"] = epoch(cmd.expires_at)
        return granted_reply(self._run(event, cmd.account_id, "grant", args))

    def slice_booked(self, event: Incoming) -> Reply | None:
        """A network slice booked for an enterprise: its account gets its plan's bundle, once."""
        booked = validate(SliceBooked, event.data, f"{event.type} data")
        account_id = account_for_slice(self.ledger.store, booked.slice_id)
        if account_id is None:
            log.info("slice %s is bound to no account; nothing to grant", booked.slice_id)
            return None
        ends = booked.service_time.end if booked.service_time else None
        result = self.plans.grant_slice(account_id, booked.slice_id, epoch(ends))
        return None if result is None else granted_reply(result)

    def renew(self, event: Incoming) -> Reply:
        """The monthly schedule: one renewal event per registered account, a page at a time
        (a page that is not the last sends this command again for the next). Event ids derive
        from the period and account, so a re-run sends the same events."""
        cmd = validate(PlansRenew, event.data, f"{event.type} data")
        if self.emitter.sink is None:
            raise Unavailable("the renewal sends one event per account to K_SINK, which is not set")
        period = cmd.period or self.plans.current_period()
        page, next_after = self.plans.renewal_page(cmd.after)
        for registered in page:
            renewal = PlansRenewAccount(account_id=registered.account_id, period=period)
            self.emitter.emit(
                types.PLANS_RENEW_ACCOUNT,
                self.source,
                renewal.model_dump(mode="json"),
                id=f"renew:{period}:{registered.account_id}",
                subject=registered.account_id,
            )
        if next_after is not None:
            more = PlansRenew(period=period, after=next_after)
            self.emitter.emit(
                types.PLANS_RENEW,
                self.source,
                more.model_dump(mode="json"),
                id=f"renew:{period}:after:{next_after}",
            )
        renewed = PlansRenewed(period=period, accounts=len(page), next_after=next_after)
        return reply(types.PLANS_RENEWED, renewed)

    def renew_account(self, event: Incoming) -> Reply | None:
        """One account's renewal; granted once per period (the grant's reference)."""
        cmd = validate(PlansRenewAccount, event.data, f"{event.type} data")
        if not self.ledger.exists(cmd.account_id):
            log.info("account %s was registered but never opened; nothing to renew", cmd.account_id)
            return None
        result = self.plans.grant_period(cmd.account_id, cmd.period, key=event.key)
        return None if result is None else granted_reply(result)

    def authorize(self, event: Incoming) -> Reply:
        cmd = validate(HoldAuthorize, event.data, f"{event.type} data")
        args = cmd.model_dump(mode="json", exclude={"account_id"}, exclude_none=True)
        r = self._run(event, cmd.account_id, "authorize", args)
        if r.get("declined"):
            declined = HoldDeclined(
                account_id=cmd.account_id,
                amount=cmd.amount,
                reason=r["reason"],
                available=r["available"],
            )
            return reply(types.HOLD_DECLINED, declined, subject=cmd.account_id)
        authorized = HoldAuthorized(
            hold_id=r["hold_id"],
            account_id=cmd.account_id,
            amount=r["amount"],
            expires_at=datetime.fromtimestamp(r["expires_at"], UTC),
            available=r.get("available"),
            lease=LeaseState(**r["lease"]) if "lease" in r else None,
        )
        return reply(types.HOLD_AUTHORIZED, authorized, subject=cmd.account_id)

    def settle(self, event: Incoming) -> Reply:
        cmd = validate(HoldSettle, event.data, f"{event.type} data")
        args: dict[str, Any] = {"hold_id": cmd.hold_id, "amount": cmd.amount}
        return self._settled(self._run(event, account_of(cmd.hold_id), "settle", args))

    def completed(self, event: Incoming) -> Reply | None:
        done = validate(InferenceCompleted, event.data, f"{event.type} data")
        return self._complete(event, done)

    def usage(self, event: Incoming) -> None:
        """Each report of the batch as its own ``inference.completed`` (see the module's doc).
        Answers nothing: what each report did is in the journal (and a reply per report would be
        the per-request traffic the batch exists to save)."""
        batch = validate(InferenceUsage, event.data, f"{event.type} data")
        for report, sent in zip(batch.reports, event.data["reports"], strict=True):
            single = replace(
                event,
                type=types.INFERENCE_COMPLETED,
                id=report.id,
                subject=None,
                data=sent["data"],  # as sent: the dedupe compares it with a single's data
                extensions={},
            )
            try:
                self._complete(single, report.data)
            except FunctionError as exc:
                if exc.status >= 500:
                    raise  # transient: the whole batch is retried; what was done dedupes
                self._refused(event, single, exc)
                continue
            USAGE_REPORTS.labels("taken").inc()

    def _refused(self, batch: Incoming, report: Incoming, exc: FunctionError) -> None:
        """A report refused for good: kept as the broker keeps a refused event (its dead letters,
        with Knative's error extensions), logged and counted."""
        USAGE_REPORTS.labels("refused").inc()
        log.error(
            "usage report %s of %s (batch %s) refused (%d), kept as a dead letter: %s",
            report.id,
            report.source,
            batch.id,
            exc.status,
            exc.message,
        )
        body = json.dumps(exc.body()).encode()
        self.dead_letters.keep(
            replace(
                report,
                extensions={
                    "knativeerrordest": self.source,
                    "knativeerrorcode": str(exc.status),
                    "knativeerrordata": base64.b64encode(body).decode("ascii"),
                    "tollgatebatch": batch.id,
                },
            )
        )

    def _complete(self, event: Incoming, done: InferenceCompleted) -> Reply | None:
        capability = self._vouched(done)
        account_id = self._owner(done.hold_id, done.account_id)
        if capability.credits is not None:  # one request of a lease: a second report of it
            args = {**usage_args(done), **_lease_request(capability)}  # gets the first result
            return self._settled(self._run(event, account_id, "capture", args))
        try:
            return self._settled(self._run(event, account_id, "settle", usage_args(done)))
        except Conflict:
            if not done.stand_in or done.hold_id in self.ledger.state(account_id).holds:
                raise
            # Infer's own metering settled it first, as it should: the stand-in is not needed.
            log.info("stand-in metering of hold %s: already settled", done.hold_id)
            return None

    def _settled(self, r: dict[str, Any]) -> Reply:
        settled = HoldSettled(
            hold_id=r["hold_id"],
            account_id=r["account_id"],
            captured=r["captured"],
            released=r["released"],
            late=r.get("late"),
            shortfall=r.get("shortfall", 0),
            waived=r.get("waived", 0),
        )
        return reply(types.HOLD_SETTLED, settled, subject=settled.account_id)

    def refund(self, event: Incoming) -> Reply:
        cmd = validate(HoldRefund, event.data, f"{event.type} data")
        account_id = account_of(cmd.hold_id)
        if cmd.request is not None:
            return self._void_request(event, account_id, cmd.hold_id, cmd.request)
        if cmd.lease_return is not None:
            args = {"hold_id": cmd.hold_id, **cmd.lease_return.model_dump()}
            return self._refunded(self._run(event, account_id, "return_lease", args))
        args = cmd.model_dump(exclude_none=True)
        return self._refunded(self._run(event, account_id, "refund", args))

    def _void_request(
        self, event: Incoming, account_id: str, hold_id: str, request: LeaseRequest
    ) -> Reply:
        """Void one request of a lease (its attempt put nothing in front of the client). If its
        capture came first, the capture comes back as a refund lot: a request failed over to
        another cluster is charged once, there."""
        args = {"hold_id": hold_id, "void": True, **request.model_dump()}
        voided = self._run(event, account_id, "capture", args)
        if not voided["captured"]:
            return self._refunded({**voided, "refunded": 0})
        back = {"hold_id": hold_id, "request": request.request, "amount": voided["captured"]}
        refunded = self.ledger.execute(account_id, "refund_capture", back)
        return self._refunded(refunded)

    def failed(self, event: Incoming) -> Reply:
        failure = validate(InferenceFailed, event.data, f"{event.type} data")
        capability = self._vouched(failure)
        account_id = self._owner(failure.hold_id, failure.account_id)
        if capability.credits is not None:  # a lease request: charged by its output, or void
            args = {**usage_args(failure), **_lease_request(capability)}
            if not charges_output(failure):
                args["void"] = True
            return self._settled(self._run(event, account_id, "capture", args))
        if charges_output(failure):
            return self._settled(self._run(event, account_id, "settle", usage_args(failure)))
        # Without output a failure report voids an open hold, and never refunds a settled one.
        args = {"hold_id": failure.hold_id, "void_only": True}
        return self._refunded(self._run(event, account_id, "refund", args))

    def _refunded(self, r: dict[str, Any]) -> Reply:
        refunded = HoldRefunded(
            hold_id=r["hold_id"], account_id=r["account_id"], refunded=r["refunded"]
        )
        return reply(types.HOLD_REFUNDED, refunded, subject=refunded.account_id)

    def sweep(self, event: Incoming) -> Reply:
        validate(HoldsSweep, event.data, f"{event.type} data")
        swept = self.ledger.sweep()
        for result in swept.pop("expired"):
            expired = HoldExpired(**result)
            self.emitter.emit(
                types.HOLD_EXPIRED,
                self.source,
                expired.model_dump(mode="json"),
                caused_by=f"expire#{expired.hold_id}",
            )
        return reply(types.HOLDS_SWEPT, HoldsSwept(**swept))

    def _vouched(self, outcome: InferenceOutcome) -> Capability:
        """An inference outcome moves credits only for the hold, account and cluster the
        ingress's capability for that attempt names (its signature checked; not its deadline:
        a metering event may arrive long after the attempt)."""
        if self.capability_keys is None:
            raise Unavailable("this function has no capability keys to check inference outcomes")
        try:
            capability = verify(
                outcome.capability, self.capability_keys.get(), audience=None, check_deadline=False
            )
        except CapabilityError as exc:
            raise Forbidden(f"the outcome's capability is not valid: {exc}") from exc
        named = (capability.hold_id, capability.account_id)
        if named != (outcome.hold_id, outcome.account_id):
            raise Forbidden(
                f"the capability is for hold {capability.hold_id} of {capability.account_id}, "
                f"not hold {outcome.hold_id} of {outcome.account_id}"
            )
        if outcome.cluster is not None and outcome.cluster != capability.cluster:
            raise Forbidden(
                f"the capability is for cluster {capability.cluster}, not {outcome.cluster}"
            )
        return capability

    @staticmethod
    def _owner(hold_id: str, account_id: str) -> str:
        owner = account_of(hold_id)
        if owner != account_id:
            raise BadRequest(f"hold {hold_id} belongs to account {owner}, not {account_id}")
        return owner

    def routes(self) -> dict[str, dict[str, Handler]]:
        """Event types per deployable ledger function (names as in template.yaml)."""
        return {
            "grant": {
                types.CREDITS_GRANT: self.grant,
                SLICE_BOOKED: self.slice_booked,
                types.PLANS_RENEW: self.renew,
                types.PLANS_RENEW_ACCOUNT: self.renew_account,
            },
            "authorize": {types.HOLD_AUTHORIZE: self.authorize},
            "settle": {
                types.HOLD_SETTLE: self.settle,
                types.INFERENCE_COMPLETED: self.completed,
                types.INFERENCE_USAGE: self.usage,
            },
            "refund": {types.HOLD_REFUND: self.refund, types.INFERENCE_FAILED: self.failed},
            "sweep": {types.HOLDS_SWEEP: self.sweep},
        }


def usage_args(outcome: InferenceOutcome) -> dict[str, Any]:
    """A settle by metered usage, priced by the hold's own quote."""
    return {
        "hold_id": outcome.hold_id,
        "usage": outcome.usage.model_dump(),
        "engine_ms": outcome.timings.engine_ms,
    }


def _lease_request(capability: Capability) -> dict[str, Any]:
    """The request reference and bound a lease attempt's capture is taken under."""
    assert capability.credits is not None
    return {"request": capability.attempt, "bound": capability.credits}


def charges_output(failure: InferenceFailed) -> bool:
    """An engine that failed after producing output failed the client part-way: what it
    produced reached the client and is charged; with no output the hold is voided."""
    return failure.usage.completion_tokens > 0


def handlers_for(table: dict[str, dict[str, Handler]], names: list[str]) -> dict[str, Handler]:
    merged: dict[str, Handler] = {}
    for name in names:
        merged.update(table[name])
    return merged
