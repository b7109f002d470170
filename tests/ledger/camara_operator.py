"""A CAMARA Carrier Billing (and Refund) server for tests: the operator Tollgate buys top-ups from.

Real HTTP (Flask on a free port, tests.http_server). Every request Tollgate sends is checked
against carrier-billing.yaml / carrier-billing-refund.yaml (body schema, x-correlator, bearer),
and so is every answer this server gives and every notification it posts to the sink Tollgate
named; a breach is recorded in ``violations`` (tests assert there are none) and a bad request is
answered 400 INVALID_ARGUMENT as the documents say. Behaviour knobs make it refuse, deny, answer
late (after the client's timeout) or stay silent (no notification)."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import requests
import simplejson
import urllib3
from flask import Flask, Response, request

from tests import camara_schemas as specs

BILLING = "carrier-billing.yaml"
REFUNDS = "carrier-billing-refund.yaml"
TOKEN = "operator-issued-access-token"
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Behaviour:
    prepare_status: str = "reserved"  # or pending_validation, processing
    prepare_error: tuple[int, str, str] | None = None  # (status, code, message)
    confirm_outcome: str = "succeeded"  # or denied
    answer_delay_s: float = 0.0  # confirm/refund answered this late (client timeouts)
    notify: bool = True  # post notifications to the sink
    notify_twice: bool = False  # the same notification again (a duplicate delivery)
    refund_status: str = "succeeded"  # createRefund's answer: succeeded, processing, denied
    refund_outcome: str = "succeeded"  # a processing refund's end: succeeded or denied


@dataclass
class Operator:
    behaviour: Behaviour = field(default_factory=Behaviour)
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sinks: dict[str, tuple[str, str]] = field(default_factory=dict)  # payment → (sink, token)
    refund_sinks: dict[str, tuple[str, str]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    notified: list[tuple[str, int]] = field(default_factory=list)  # (event type, status)
    violations: list[str] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- checking ---------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Compile every schema this server checks against (a few hundred ms, once)."""
        for doc, path, method in (
            (BILLING, "/payments/prepare", "post"),
            (BILLING, "/payments/{paymentId}/confirm", "post"),
            (BILLING, "/payments/{paymentId}/validate", "post"),
            (REFUNDS, "/payments/{paymentId}/refunds", "post"),
        ):
            specs.request_errors(doc, path, method, {})
        for doc, path, method, status in (
            (BILLING, "/payments/prepare", "post", 201),
            (BILLING, "/payments/{paymentId}", "get", 200),
            (BILLING, "/payments", "get", 200),
            (REFUNDS, "/payments/{paymentId}/refunds", "post", 201),
            (REFUNDS, "/payments/{paymentId}/refunds", "get", 200),
            (REFUNDS, "/payments/{paymentId}/refunds/{refundId}", "get", 200),
        ):
            specs.response_errors(doc, path, method, status, {})

    def _check_request(self, doc: str, path: str, method: str, body: Any) -> Response | None:
        problems = []
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._error(doc, path, method, 401, "UNAUTHENTICATED", "bad access token")
        correlator = request.headers.get("x-correlator")
        if correlator is not None and not specs.CORRELATOR.match(correlator):
            problems.append(f"x-correlator {correlator!r} breaks its pattern")
        if body is not None:
            problems += specs.request_errors(doc, path, method, body)
        if problems:
            self.violations += [f"{method.upper()} {path}: {p}" for p in problems]
            return self._error(doc, path, method, 400, "INVALID_ARGUMENT", "; ".join(problems))
        return None

    def _answer(self, doc: str, path: str, method: str, status: int, body: Any) -> Response:
        problems = specs.response_errors(doc, path, method, status, body)
        self.violations += [f"answer to {method.upper()} {path}: {p}" for p in problems]
        headers = {"x-correlator": request.headers.get("x-correlator", "none")}
        if body is None:
            return Response(status=status, headers=headers)
        text = simplejson.dumps(body, use_decimal=True)
        return Response(text, status=status, headers=headers, mimetype="application/json")

    def _error(
        self, doc: str, path: str, method: str, status: int, code: str, message: str
    ) -> Response:
        return self._answer(
            doc, path, method, status, {"status": status, "code": code, "message": message}
        )

    def _body(self) -> Any:
        text = request.get_data(as_text=True)
        return simplejson.loads(text, use_decimal=True) if text else None

    # -- notifications ----------------------------------------------------------------------

    def _post(self, doc: str, sink: tuple[str, str], event_type: str, data: dict[str, Any]) -> None:
        url, token = sink
        event_id = f"ev-{next(self._ids)}"
        event: dict[str, Any] = {
            "id": event_id,
            "source": "https://operator.test/carrier-billing",
            "type": event_type,
            "specversion": "1.0",
            "datacontenttype": "application/json",
            "time": _now(),
            "data": data,
        }
        problems = specs.event_errors(doc, event)
        self.violations += [f"notification {event_type}: {p}" for p in problems]
        for _ in range(2 if self.behaviour.notify_twice else 1):
            # The sink is HTTPS (the documents require it) with a test certificate.
            response = requests.post(
                url,
                json=event,
                headers={"Authorization": f"Bearer {token}", "x-correlator": event_id},
                timeout=10,
                verify=False,
            )
            self.notified.append((event_type, response.status_code))

    def notify_payment(
        self, payment_id: str, name: str, extra: dict[str, Any] | None = None
    ) -> None:
        status = "failed" if name == "denied" else "succeeded"
        data = {"paymentId": payment_id, "status": status, "description": f"payment {name}"}
        self._post(
            BILLING,
            self.sinks[payment_id],
            f"org.camaraproject.carrier-billing.v0.payment-{name}",
            data | (extra or {}),
        )

    def notify_refund(self, payment_id: str, refund: dict[str, Any], name: str) -> None:
        data: dict[str, Any] = {
            "paymentId": payment_id,
            "refundId": refund["refundId"],
            "status": "succeeded" if name != "denied" else "failed",
            "description": f"refund {name}",
        }
        if name == "completed":
            data["refundDate"] = _now()
        if name == "denied":
            data["denialReason"] = "Refund window closed"
        self._post(
            REFUNDS,
            self.refund_sinks[refund["refundId"]],
            f"org.camaraproject.carrier-billing-refund.v0.refund-{name}",
            data,
        )

    def _later(self, action: Any) -> None:
        if self.behaviour.notify:
            threading.Thread(target=action, daemon=True).start()

    # -- the API ----------------------------------------------------------------------------

    def app(self) -> Flask:
        app = Flask("camara-operator")
        b = "/carrier-billing/v0"
        r = "/carrier-billing-refund/v0"

        @app.post(f"{b}/payments/prepare")
        def prepare() -> Response:
            path, body = "/payments/prepare", self._body()
            self.requests.append(("prepare", path, body))
            refused = self._check_request(BILLING, path, "post", body)
            if refused is not None:
                return refused
            if self.behaviour.prepare_error is not None:
                status, code, message = self.behaviour.prepare_error
                return self._error(BILLING, path, "post", status, code, message)
            payment_id = f"pay-{next(self._ids)}"
            transaction = body["amountTransaction"]
            payment = {
                "paymentId": payment_id,
                "amountTransaction": {
                    "phoneNumber": transaction["phoneNumber"],
                    "clientCorrelator": transaction["clientCorrelator"],
                    "paymentAmount": transaction["paymentAmount"],
                    "referenceCode": transaction["referenceCode"],
                    "serverReferenceCode": f"srv-{payment_id}",
                },
                "paymentStatus": self.behaviour.prepare_status,
                "paymentCreationDate": _now(),
                "sink": body["sink"],
            }
            if self.behaviour.prepare_status == "pending_validation":
                payment["validationInfo"] = {"action": "validate", "authorizationId": "auth-1"}
            with self._lock:
                self.payments[payment_id] = payment
                self.sinks[payment_id] = (body["sink"], body["sinkCredential"]["accessToken"])
            return self._answer(BILLING, path, "post", 201, payment)

        def second_step(payment_id: str, step: str) -> Response:
            path, body = f"/payments/{{paymentId}}/{step}", self._body()
            self.requests.append((step, path, body))
            refused = self._check_request(BILLING, path, "post", body)
            if refused is not None:
                return refused
            payment = self.payments.get(payment_id)
            if payment is None:
                return self._error(BILLING, path, "post", 404, "NOT_FOUND", "no such payment")
            if payment["paymentStatus"] == "succeeded":
                return self._error(
                    BILLING,
                    path,
                    "post",
                    409,
                    "CARRIER_BILLING.PAYMENT_CONFIRMED",
                    "Payment has been confirmed.",
                )
            if payment["paymentStatus"] == "cancelled":
                return self._error(
                    BILLING,
                    path,
                    "post",
                    409,
                    "CARRIER_BILLING.PAYMENT_CANCELLED",
                    "Payment has been cancelled.",
                )
            if step == "cancel":
                payment["paymentStatus"] = "cancelled"
                self._later(lambda: self.notify_payment(payment_id, "cancelled"))
                return self._answer(BILLING, path, "post", 202, None)
            outcome = self.behaviour.confirm_outcome
            payment["paymentStatus"] = outcome
            if outcome == "succeeded":
                payment["paymentDate"] = _now()
                self._later(
                    lambda: self.notify_payment(
                        payment_id, "completed", {"paymentDate": payment["paymentDate"]}
                    )
                )
            else:
                self._later(
                    lambda: self.notify_payment(
                        payment_id, "denied", {"denialReason": "User is blocked"}
                    )
                )
            time.sleep(self.behaviour.answer_delay_s)
            return self._answer(BILLING, path, "post", 202, None)

        @app.post(f"{b}/payments/<payment_id>/confirm")
        def confirm(payment_id: str) -> Response:
            return second_step(payment_id, "confirm")

        @app.post(f"{b}/payments/<payment_id>/cancel")
        def cancel(payment_id: str) -> Response:
            return second_step(payment_id, "cancel")

        @app.post(f"{b}/payments/<payment_id>/validate")
        def validate(payment_id: str) -> Response:
            path, body = "/payments/{paymentId}/validate", self._body()
            refused = self._check_request(BILLING, path, "post", body)
            if refused is not None:
                return refused
            if body["code"] != "352673":
                return self._error(
                    BILLING, path, "post", 400, "CARRIER_BILLING.INVALID_CODE", "Invalid code."
                )
            self.payments[payment_id]["paymentStatus"] = "reserved"
            return self._answer(BILLING, path, "post", 204, None)

        @app.get(f"{b}/payments/<payment_id>")
        def retrieve(payment_id: str) -> Response:
            path = "/payments/{paymentId}"
            self.requests.append(("retrieve", path, None))
            refused = self._check_request(BILLING, path, "get", None)
            if refused is not None:
                return refused
            payment = self.payments.get(payment_id)
            if payment is None:
                return self._error(BILLING, path, "get", 404, "NOT_FOUND", "no such payment")
            return self._answer(BILLING, path, "get", 200, payment)

        @app.get(f"{b}/payments")
        def retrieve_all() -> Response:
            refused = self._check_request(BILLING, "/payments", "get", None)
            if refused is not None:
                return refused
            self.requests.append(("list", "/payments", dict(request.args)))
            return self._answer(BILLING, "/payments", "get", 200, list(self.payments.values()))

        @app.post(f"{r}/payments/<payment_id>/refunds")
        def create_refund(payment_id: str) -> Response:
            path, body = "/payments/{paymentId}/refunds", self._body()
            self.requests.append(("refund", path, body))
            refused = self._check_request(REFUNDS, path, "post", body)
            if refused is not None:
                return refused
            refund = {
                "refundId": f"rf-{next(self._ids)}",
                "refundStatus": self.behaviour.refund_status,
                "type": body["type"],
                "refundCreationDate": _now(),
                "amountTransaction": body["amountTransaction"],
                "sink": body["sink"],
            }
            if refund["refundStatus"] == "succeeded":
                refund["refundDate"] = _now()
            with self._lock:
                self.refunds.setdefault(payment_id, []).append(refund)
                self.refund_sinks[refund["refundId"]] = (
                    body["sink"],
                    body["sinkCredential"]["accessToken"],
                )
            if refund["refundStatus"] == "processing":
                final = self.behaviour.refund_outcome
                stored = refund
                refund = dict(stored)  # answered as processing, settled later

                def settle() -> None:
                    stored["refundStatus"] = final
                    name = "completed" if final == "succeeded" else "denied"
                    self.notify_refund(payment_id, stored, name)

                self._later(settle)
            time.sleep(self.behaviour.answer_delay_s)
            return self._answer(REFUNDS, path, "post", 201, refund)

        @app.get(f"{r}/payments/<payment_id>/refunds")
        def list_refunds(payment_id: str) -> Response:
            path = "/payments/{paymentId}/refunds"
            refused = self._check_request(REFUNDS, path, "get", None)
            if refused is not None:
                return refused
            return self._answer(REFUNDS, path, "get", 200, self.refunds.get(payment_id, []))

        @app.get(f"{r}/payments/<payment_id>/refunds/<refund_id>")
        def get_refund(payment_id: str, refund_id: str) -> Response:
            path = "/payments/{paymentId}/refunds/{refundId}"
            refused = self._check_request(REFUNDS, path, "get", None)
            if refused is not None:
                return refused
            found = [x for x in self.refunds.get(payment_id, []) if x["refundId"] == refund_id]
            if not found:
                return self._error(REFUNDS, path, "get", 404, "NOT_FOUND", "no such refund")
            return self._answer(REFUNDS, path, "get", 200, found[0])

        return app

    def charged(self, payment_id: str) -> Decimal:
        amount: Decimal = self.payments[payment_id]["amountTransaction"]["paymentAmount"][
            "chargingInformation"
        ]["amount"]
        return amount
