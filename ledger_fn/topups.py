"""Top-ups bought on the phone bill: a CAMARA Carrier Billing 2-step payment per top-up, its
credits granted exactly once when the operator says the payment succeeded, and refunds of the
top-up's unspent credits.

Lifecycle (``status``; the operator's paymentStatus where it has one):
  preparing ─ prepare answered ─> processing | pending_validation | reserved | denied
  reserved ─ confirm ─> confirming ─ payment-completed ─> succeeded (credits granted) | denied
  reserved | pending_validation ─ cancel ─> cancelled;  prepare never answered, payment never
  found ─> failed.
The operator's word settles it, from a notification (through the ingress) or, when none came
within ``poll_after_s``, from polling the payment. A payment that succeeded is granted even if
Tollgate had given up on it: the line was charged.

Money: a top-up's price is ``credits * 10**decimals / credits_per_unit`` minor units of the
currency, exact (the template check refuses top-ups that are not a whole number of minor units);
a refund takes back a whole number of minor units' worth of credits (``refund_step``), rounding
the credits refunded down.

Records: ``ACCT#<account>`` / ``TOPUP#<id>`` (the top-up, versioned) and ``TOPUPS`` /
``<account>#<id>`` (open top-ups, for the poller)."""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from events.topups import sink_subject
from functions import sink_tokens
from functions.accounts import account_pk
from functions.errors import BadRequest, Conflict, FunctionError, NotFound, Unavailable
from functions.store import Absent, ConditionFailed, Item, VersionIs
from ledger_fn.carrier_client import CarrierClient, CarrierRefused, CarrierUnreachable
from ledger_fn.ledger import Ledger
from ledger_fn.plans import Plans

log = logging.getLogger(__name__)

OPEN_INDEX = "TOPUPS"
FINAL = frozenset({"succeeded", "denied", "cancelled", "failed"})
REFUND_FINAL = frozenset({"succeeded", "denied", "failed"})
# The operator's paymentStatus values (carrier-billing.yaml) that say where a payment stands.
OPERATOR_STATUSES = frozenset(
    {"processing", "pending_validation", "reserved", "succeeded", "denied", "cancelled"}
)
MAX_ATTEMPTS = 50


class BadGateway(FunctionError):
    status = 502
    type = "api_error"
    code = "operator_refused"


class Refused(FunctionError):
    """The operator refused the payment or refund for a reason the person can act on."""

    status = 422
    type = "invalid_request_error"
    code = "payment_refused"


@dataclass(frozen=True)
class CarrierBilling:
    """The operator's Carrier Billing endpoint and how Tollgate prices top-ups on it (infra
    fills it from template.yaml ``carrierBilling`` and the secrets it names)."""

    api_root: str
    refund_api_root: str
    token: str | None  # the access token Tollgate presents to the operator
    sink_key: bytes | None  # signs the sink credentials (shared with the ingress)
    notify_url: str  # the public ingress: sinks are <notify_url>/events/carrier-billing/...
    currency: str
    decimals: int  # ISO 4217 minor unit of the currency
    credits_per_unit: int  # credits one currency unit buys
    description: str = "AI inference credits"
    merchant_identifier: str | None = None
    poll_after_s: int = 60
    give_up_after_s: int = 3600
    sink_ttl_s: int = 7 * 24 * 3600
    timeout_s: int = 10  # seconds the operator's API may take per call

    def price(self, credits: int) -> int:
        """Minor units of the currency ``credits`` cost; ValueError if not a whole number."""
        scale: int = 10**self.decimals
        units, rest = divmod(credits * scale, self.credits_per_unit)
        if rest:
            raise ValueError(
                f"{credits} credits is not a whole number of {self.currency} minor units at "
                f"{self.credits_per_unit} credits per {self.currency}"
            )
        return units

    @property
    def refund_step(self) -> int:
        """The fewest credits worth a whole minor unit."""
        scale: int = 10**self.decimals
        return self.credits_per_unit // math.gcd(self.credits_per_unit, scale)

    def amount(self, minor: int) -> Decimal:
        return Decimal(minor).scaleb(-self.decimals)


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class TopUps:
    def __init__(
        self,
        ledger: Ledger,
        plans: Plans,
        config: CarrierBilling,
        *,
        client: CarrierClient | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.ledger = ledger
        self.store = ledger.store
        self.plans = plans
        self.config = config
        self.client = client or CarrierClient(
            config.api_root, config.refund_api_root, config.token, timeout_s=config.timeout_s
        )
        self.clock = clock or ledger.clock

    # -- records -------------------------------------------------------------------------------

    def get(self, account_id: str, topup_id: str) -> dict[str, Any]:
        item = self.store.get(account_pk(account_id), f"TOPUP#{topup_id}")
        if item is None:
            raise NotFound(f"account {account_id} has no top-up {topup_id}")
        return dict(item.data)

    def list(self, account_id: str) -> list[dict[str, Any]]:
        self.ledger.meta(account_id)
        items = self.store.query(account_pk(account_id), "TOPUP#", limit=1000)
        return [dict(item.data) for item in items]

    def _update(
        self, account_id: str, topup_id: str, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        for _ in range(MAX_ATTEMPTS):
            item = self.store.get(account_pk(account_id), f"TOPUP#{topup_id}")
            if item is None:
                raise NotFound(f"account {account_id} has no top-up {topup_id}")
            data = dict(item.data)
            change(data)
            data["updated_at"] = int(self.clock())
            try:
                self.store.put(
                    Item(item.pk, item.sk, item.version + 1, data), VersionIs(item.version)
                )
            except ConditionFailed:
                continue
            self._index(data)
            return data
        raise Unavailable(f"top-up {topup_id} is contended; retry")

    def _index(self, topup: dict[str, Any]) -> None:
        """Keep the poller's list of open top-ups in step (a closed entry expires)."""
        open_ = topup["status"] not in FINAL or any(
            r["status"] not in REFUND_FINAL for r in topup["refunds"]
        )
        now = int(self.clock())
        item = Item(
            OPEN_INDEX,
            f"{topup['account_id']}#{topup['topup_id']}",
            now,
            {"open": open_},
            expires_at=None if open_ else now + 24 * 3600,
        )
        self.store.put(item)

    # -- buying ------------------------------------------------------------------------------

    def create(self, account_id: str, phone_number: str, credits: int) -> dict[str, Any]:
        """Prepare the payment of one of the plan's top-ups on ``phone_number``'s bill."""
        self.ledger.meta(account_id)
        plan = self.plans.plan_of(account_id)
        offered = plan.top_ups if plan is not None else ()
        if credits not in offered:
            raise BadRequest(
                f"{credits} credits is not a top-up of account {account_id}'s plan "
                f"({plan.name if plan else 'no plan'}); top-ups: "
                + (", ".join(str(c) for c in offered) or "none"),
                param="credits",
            )
        try:
            minor = self.config.price(credits)
        except ValueError as exc:
            raise BadRequest(str(exc), param="credits") from exc
        now = int(self.clock())
        topup_id = f"tu-{secrets.token_hex(10)}"
        topup: dict[str, Any] = {
            "topup_id": topup_id,
            "account_id": account_id,
            "credits": credits,
            "amount_minor": minor,
            "currency": self.config.currency,
            "decimals": self.config.decimals,
            "phone_number": phone_number,
            "status": "preparing",
            "payment_id": None,
            "validation": None,
            "lot_id": None,
            "error": None,
            "refunds": [],
            "created_at": now,
            "updated_at": now,
        }
        self.store.put(Item(account_pk(account_id), f"TOPUP#{topup_id}", 1, topup), Absent())
        self._index(topup)
        token, expires = self._sink_credential(account_id, topup_id)
        try:
            payment = self.client.prepare(
                phone_number=phone_number,
                reference=topup_id,
                amount=self.config.amount(minor),
                currency=self.config.currency,
                description=self.config.description,
                merchant_identifier=self.config.merchant_identifier,
                sink=self.sink(account_id, topup_id, "carrier-billing"),
                sink_token=token,
                sink_expires=expires,
            )
        except CarrierRefused as exc:
            self._update(account_id, topup_id, _failed(exc))
            raise _refusal(exc, "the payment") from exc
        except CarrierUnreachable as exc:
            log.warning("top-up %s: prepare unanswered (%s); will look it up", topup_id, exc)
            return self.get(account_id, topup_id)
        return self._adopt(account_id, topup_id, payment)

    def confirm(self, account_id: str, topup_id: str) -> dict[str, Any]:
        topup = self.get(account_id, topup_id)
        if topup["status"] != "reserved":
            raise Conflict(f"top-up {topup_id} is {topup['status']}; only a reserved one confirms")
        self._update(account_id, topup_id, lambda t: t.update(status="confirming"))
        try:
            self.client.confirm(topup["payment_id"], topup["phone_number"])
        except CarrierRefused as exc:
            if exc.code == "CARRIER_BILLING.PAYMENT_CONFIRMED":
                return self.get(account_id, topup_id)  # already confirmed: the outcome will come
            if exc.code == "CARRIER_BILLING.PAYMENT_CANCELLED":
                return self._settle(account_id, topup_id, "cancelled")
            final = "denied" if exc.code == "CARRIER_BILLING.PAYMENT_DENIED" else "reserved"
            error = _error(exc)
            self._update(account_id, topup_id, lambda t: t.update(status=final, error=error))
            raise _refusal(exc, "the confirmation") from exc
        except CarrierUnreachable as exc:
            log.warning("top-up %s: confirm unanswered (%s); will poll", topup_id, exc)
        return self.get(account_id, topup_id)

    def cancel(self, account_id: str, topup_id: str) -> dict[str, Any]:
        topup = self.get(account_id, topup_id)
        if topup["status"] not in ("reserved", "pending_validation"):
            raise Conflict(f"top-up {topup_id} is {topup['status']}; it cannot be cancelled")
        try:
            self.client.cancel(topup["payment_id"], topup["phone_number"])
        except CarrierRefused as exc:
            if exc.code == "CARRIER_BILLING.PAYMENT_CANCELLED":
                return self._settle(account_id, topup_id, "cancelled")
            raise _refusal(exc, "the cancellation") from exc
        except CarrierUnreachable as exc:
            raise Unavailable(f"the operator did not answer the cancellation: {exc}") from exc
        return self._settle(account_id, topup_id, "cancelled")

    def validate(self, account_id: str, topup_id: str, code: str) -> dict[str, Any]:
        """The OTP step some operators require (validationInfo action ``validate``)."""
        topup = self.get(account_id, topup_id)
        validation = topup.get("validation") or {}
        if topup["status"] != "pending_validation" or "authorizationId" not in validation:
            raise Conflict(f"top-up {topup_id} is {topup['status']}; it awaits no code")
        try:
            self.client.validate(topup["payment_id"], validation["authorizationId"], code)
        except CarrierRefused as exc:
            raise _refusal(exc, "the code") from exc
        except CarrierUnreachable as exc:
            raise Unavailable(f"the operator did not answer the validation: {exc}") from exc
        return self._settle(account_id, topup_id, "reserved")

    # -- the operator's word -----------------------------------------------------------------

    def on_payment(
        self, account_id: str, topup_id: str, payment_id: str, event: str, succeeded: bool
    ) -> dict[str, Any] | None:
        """A payment notification (already authenticated by the ingress). Returns the grant's
        result when this one granted the credits."""
        topup = self.get(account_id, topup_id)
        if topup["payment_id"] not in (None, payment_id):
            raise BadRequest(
                f"top-up {topup_id} is payment {topup['payment_id']}, not {payment_id}"
            )
        if topup["payment_id"] is None:
            self._update(account_id, topup_id, lambda t: t.update(payment_id=payment_id))
        status = {
            "pending-validation": "pending_validation",
            "reserved": "reserved",
            "completed": "succeeded" if succeeded else "denied",
            "cancelled": "cancelled",
            "denied": "denied",
        }[event]
        if not succeeded and event in ("pending-validation", "reserved"):
            status = "denied"
        return self._grant_if_paid(account_id, topup_id, status)

    def _grant_if_paid(self, account_id: str, topup_id: str, status: str) -> dict[str, Any] | None:
        if status != "succeeded":
            self._settle(account_id, topup_id, status)
            return None
        topup = self.get(account_id, topup_id)
        # The top-up id is the grant's business reference: granted once, however often the
        # operator's word arrives (notification, poll, both).
        args = {"amount": topup["credits"], "origin": "top-up", "reference": topup_id}
        result = self.ledger.execute(account_id, "grant", args, key=f"topup#{topup_id}")
        lot_id = result["lot_id"]
        self._update(
            account_id, topup_id, lambda t: t.update(status="succeeded", lot_id=lot_id, error=None)
        )
        return result

    def _settle(self, account_id: str, topup_id: str, status: str) -> dict[str, Any]:
        """Move to ``status`` unless the top-up is already final (or confirming and the
        operator still says reserved)."""

        def change(topup: dict[str, Any]) -> None:
            current = topup["status"]
            if current in FINAL or (current == "confirming" and status == "reserved"):
                return
            topup["status"] = status

        return self._update(account_id, topup_id, change)

    def _adopt(self, account_id: str, topup_id: str, payment: dict[str, Any]) -> dict[str, Any]:
        """What the operator says of a payment (prepare's answer, or a poll)."""
        status = payment.get("paymentStatus")
        if status not in OPERATOR_STATUSES:
            raise BadGateway(f"the operator answered an unknown paymentStatus {status!r}")
        validation = payment.get("validationInfo")

        def record(topup: dict[str, Any]) -> None:
            topup["payment_id"] = topup["payment_id"] or payment.get("paymentId")
            if validation:
                topup["validation"] = validation

        self._update(account_id, topup_id, record)
        self._grant_if_paid(account_id, topup_id, status)
        return self.get(account_id, topup_id)

    # -- refunds -----------------------------------------------------------------------------

    def refund(
        self, account_id: str, topup_id: str, credits: int | None, reason: str | None
    ) -> dict[str, Any]:
        """Refund unspent credits of a top-up: they leave the account first (so they cannot be
        spent meanwhile), then the operator refunds their price; a denied refund restores them."""
        topup = self.get(account_id, topup_id)
        if topup["status"] != "succeeded" or topup["lot_id"] is None:
            raise Conflict(f"top-up {topup_id} is {topup['status']}; only a paid one refunds")
        if any(r["status"] not in REFUND_FINAL for r in topup["refunds"]):
            raise Conflict(f"top-up {topup_id} has a refund in progress; wait for it")
        lot = self.ledger.state(account_id).lots.get(topup["lot_id"])
        unspent = lot.remaining if lot is not None else 0
        step = self.config.refund_step
        if credits is None:
            credits = unspent - unspent % step
        elif credits % step:
            raise BadRequest(
                f"refunds are in whole {self.config.currency} minor units: "
                f"a multiple of {step} credits",
                param="credits",
            )
        if credits > unspent or credits == 0:
            raise Conflict(
                f"top-up {topup_id} has {unspent} unspent credits "
                f"({unspent - unspent % step} refundable), asked {credits or 'all'}"
            )
        reference = f"{topup_id}-r{len(topup['refunds']) + 1}"
        minor = credits * 10**self.config.decimals // self.config.credits_per_unit
        entry = {
            "reference": reference,
            "refund_id": None,
            "credits": credits,
            "amount_minor": minor,
            "reason": reason,
            "status": "revoking",  # the credits leave the account before any refund is asked
            "error": None,
            "created_at": int(self.clock()),
        }
        self._update(account_id, topup_id, lambda t: t["refunds"].append(entry))
        if not self._revoke(account_id, topup_id, reference):
            raise Conflict(f"the {credits} credits were spent meanwhile; nothing was refunded")
        self._request_refund(account_id, topup_id, reference)
        return self.get(account_id, topup_id)

    def _revoke(self, account_id: str, topup_id: str, reference: str) -> bool:
        """Take the refund's credits back (once); False if they are no longer there."""
        topup = self.get(account_id, topup_id)
        entry = next(r for r in topup["refunds"] if r["reference"] == reference)
        if reference not in self.ledger.state(account_id).revocations:
            try:
                self.ledger.execute(
                    account_id,
                    "revoke",
                    {"lot_id": topup["lot_id"], "amount": entry["credits"], "reference": reference},
                    key=f"revoke#{reference}",
                )
            except Conflict:
                self._refund_changed(account_id, topup_id, reference, "failed", restore=False)
                return False

        def requesting(t: dict[str, Any]) -> None:
            for r in t["refunds"]:
                if r["reference"] == reference and r["status"] == "revoking":
                    r["status"] = "requesting"

        self._update(account_id, topup_id, requesting)
        return True

    def _request_refund(self, account_id: str, topup_id: str, reference: str) -> None:
        topup = self.get(account_id, topup_id)
        entry = next(r for r in topup["refunds"] if r["reference"] == reference)
        token, expires = self._sink_credential(account_id, topup_id)
        try:
            refund = self.client.refund(
                topup["payment_id"],
                total=entry["credits"] == topup["credits"],
                amount=self.config.amount(entry["amount_minor"]),
                currency=topup["currency"],
                description=self.config.description,
                reference=reference,
                reason=entry["reason"],
                sink=self.sink(account_id, topup_id, "carrier-billing-refund"),
                sink_token=token,
                sink_expires=expires,
            )
        except CarrierRefused as exc:
            self._refund_changed(account_id, topup_id, reference, "failed", error=_error(exc))
            raise _refusal(exc, "the refund") from exc
        except CarrierUnreachable as exc:
            log.warning("refund %s unanswered (%s); will look it up", reference, exc)
            return
        self._adopt_refund(account_id, topup_id, reference, refund)

    def _adopt_refund(
        self, account_id: str, topup_id: str, reference: str, refund: dict[str, Any]
    ) -> None:
        status = refund.get("refundStatus")
        refund_id = refund.get("refundId")
        if status == "succeeded":
            self._refund_changed(account_id, topup_id, reference, "succeeded", refund_id=refund_id)
        elif status == "denied":
            self._refund_changed(account_id, topup_id, reference, "denied", refund_id=refund_id)
        else:
            self._refund_changed(account_id, topup_id, reference, "processing", refund_id=refund_id)

    def on_refund(
        self, account_id: str, topup_id: str, refund_id: str, event: str, succeeded: bool
    ) -> None:
        topup = self.get(account_id, topup_id)
        entry = next((r for r in topup["refunds"] if r["refund_id"] == refund_id), None) or next(
            (r for r in topup["refunds"] if r["status"] == "requesting"), None
        )
        if entry is None:
            raise BadRequest(f"top-up {topup_id} has no refund {refund_id}")
        ok = succeeded and event in ("completed", "in-bill")
        status = "succeeded" if ok else "denied"
        self._refund_changed(account_id, topup_id, entry["reference"], status, refund_id=refund_id)

    def _refund_changed(
        self,
        account_id: str,
        topup_id: str,
        reference: str,
        status: str,
        *,
        refund_id: str | None = None,
        error: dict[str, Any] | None = None,
        restore: bool = True,
    ) -> None:
        """A refund reached ``status``; a denied or failed one gives its credits back, once."""
        if status in ("denied", "failed") and restore:
            # Conflict/NotFound: restored already, or the credits were never taken.
            with contextlib.suppress(Conflict, NotFound):
                self.ledger.execute(
                    account_id, "restore", {"reference": reference}, key=f"restore#{reference}"
                )

        def change(topup: dict[str, Any]) -> None:
            for entry in topup["refunds"]:
                if entry["reference"] == reference and entry["status"] not in REFUND_FINAL:
                    entry["status"] = status
                    entry["refund_id"] = entry["refund_id"] or refund_id
                    entry["error"] = error

        self._update(account_id, topup_id, change)

    # -- polling -----------------------------------------------------------------------------

    def poll(self) -> dict[str, int]:
        """Ask the operator about every open top-up no notification settled in time."""
        checked = granted = settled = 0
        now = int(self.clock())  # whole seconds, as every stored time
        for item in self.store.query(OPEN_INDEX, limit=1000):
            if not item.data.get("open"):
                continue
            account_id, _, topup_id = item.sk.partition("#")
            try:
                topup = self.get(account_id, topup_id)
            except NotFound:
                continue
            if now - topup["updated_at"] < self.config.poll_after_s:
                continue
            checked += 1
            try:
                before = topup["status"]
                after = self._poll_one(topup, now)
                granted += before != "succeeded" and after["status"] == "succeeded"
                settled += before not in FINAL and after["status"] in FINAL
            except (CarrierUnreachable, Unavailable) as exc:
                log.warning("top-up %s: the operator is unreachable (%s)", topup_id, exc)
            except FunctionError as exc:
                log.warning("top-up %s: %s", topup_id, exc.message)
        return {"checked": checked, "granted": granted, "settled": settled}

    def _poll_one(self, topup: dict[str, Any], now: int) -> dict[str, Any]:
        account_id, topup_id = topup["account_id"], topup["topup_id"]
        if topup["status"] not in FINAL:
            if topup["payment_id"] is None:
                since = datetime.fromtimestamp(topup["created_at"] - 300, UTC)
                payment = self.client.find_payment(topup_id, since)
                if payment is None:
                    if now - topup["created_at"] >= self.config.give_up_after_s:
                        self._settle(account_id, topup_id, "failed")
                    return self.get(account_id, topup_id)
            else:
                payment = self.client.payment(topup["payment_id"])
            self._adopt(account_id, topup_id, payment)
        topup = self.get(account_id, topup_id)
        for entry in topup["refunds"]:
            if entry["status"] in REFUND_FINAL:
                continue
            if entry["status"] == "revoking":  # interrupted before the refund was asked
                if self._revoke(account_id, topup_id, entry["reference"]):
                    self._request_refund(account_id, topup_id, entry["reference"])
            elif entry["refund_id"] is None:
                found = self.client.find_refund(topup["payment_id"], entry["reference"])
                if found is None:
                    self._request_refund(account_id, topup_id, entry["reference"])
                else:
                    self._adopt_refund(account_id, topup_id, entry["reference"], found)
            else:
                refund = self.client.refund_status(topup["payment_id"], entry["refund_id"])
                self._adopt_refund(account_id, topup_id, entry["reference"], refund)
        return self.get(account_id, topup_id)

    # -- sinks -------------------------------------------------------------------------------

    def sink(self, account_id: str, topup_id: str, api: str) -> str:
        return f"{self.config.notify_url.rstrip('/')}/events/{api}/{account_id}/{topup_id}"

    def _sink_credential(self, account_id: str, topup_id: str) -> tuple[str, datetime]:
        if self.config.sink_key is None:
            raise Unavailable("carrier billing needs its sink key (the secret its template names)")
        expires = int(self.clock()) + self.config.sink_ttl_s
        token = sink_tokens.issue(self.config.sink_key, sink_subject(account_id, topup_id), expires)
        return token, datetime.fromtimestamp(expires, UTC)


def view(topup: dict[str, Any]) -> dict[str, Any]:
    """A top-up as the admin API shows it: amounts as exact decimal strings, times in RFC 3339."""
    scale = topup["decimals"]
    return {
        **topup,
        "amount": str(Decimal(topup["amount_minor"]).scaleb(-scale)),
        "refunds": [
            {
                **r,
                "amount": str(Decimal(r["amount_minor"]).scaleb(-scale)),
                "created_at": _iso(r["created_at"]),
            }
            for r in topup["refunds"]
        ],
        "created_at": _iso(topup["created_at"]),
        "updated_at": _iso(topup["updated_at"]),
    }


def _error(exc: CarrierRefused) -> dict[str, Any]:
    return {"status": exc.status, "code": exc.code, "message": exc.message}


def _failed(exc: CarrierRefused) -> Callable[[dict[str, Any]], None]:
    def change(topup: dict[str, Any]) -> None:
        topup.update(status="failed", error=_error(exc))

    return change


def _refusal(exc: CarrierRefused, what: str) -> FunctionError:
    """Tollgate's own credential or request refused: ops must act (502); anything else is the
    operator's business answer about this line or amount, which the person can act on (422)."""
    if exc.status == 401 or exc.code in ("INVALID_ARGUMENT", "PERMISSION_DENIED"):
        return BadGateway(f"the operator refused {what}: {exc.code}: {exc.message}")
    return Refused(f"the operator refused {what}: {exc.code}: {exc.message}")


__all__ = ["CarrierBilling", "TopUps", "view"]
