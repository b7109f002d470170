"""Tollgate as a CAMARA Carrier Billing API consumer (carrier-billing.yaml: 2-step payments;
carrier-billing-refund.yaml: refunds), over HTTP with a bearer access token.

Amounts travel as JSON numbers written from exact decimals (simplejson, ``use_decimal``) and are
read back as decimals: no float ever holds money. Every request carries an ``x-correlator``.
A 4xx answer with CAMARA's ErrorInfo is a definitive refusal (CarrierRefused); no answer, a 5xx
or a 429 leaves the outcome unknown (CarrierUnreachable): the caller must find out later (the
clientCorrelator lets a retried creation be recognised by the operator)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import requests
import simplejson

JSON = "application/json"


class CarrierRefused(Exception):
    """The operator answered with an error (CAMARA ErrorInfo): it will not do this."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class CarrierUnreachable(Exception):
    """No usable answer (timeout, connection error, 5xx, 429): the outcome is unknown."""


class CarrierClient:
    def __init__(
        self,
        api_root: str,
        refund_api_root: str,
        token: str | None,
        *,
        timeout_s: int = 10,
        session: requests.Session | None = None,
    ) -> None:
        self.api_root = api_root.rstrip("/")
        self.refund_api_root = refund_api_root.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self.session.trust_env = False

    def _call(
        self,
        method: str,
        url: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        correlator: str | None = None,
    ) -> tuple[int, Any]:
        headers = {"Accept": JSON, "x-correlator": correlator or str(uuid.uuid4())}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            headers["Content-Type"] = JSON
            data = simplejson.dumps(body, use_decimal=True)
        try:
            response = self.session.request(
                method, url, headers=headers, data=data, params=params, timeout=self.timeout_s
            )
        except requests.RequestException as exc:
            raise CarrierUnreachable(f"{method} {url}: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise CarrierUnreachable(f"{method} {url}: HTTP {response.status_code}")
        try:
            payload = (
                simplejson.loads(response.text, use_decimal=True)
                if response.content.strip()
                else None
            )
        except simplejson.JSONDecodeError as exc:
            raise CarrierUnreachable(f"{method} {url}: the answer is not JSON") from exc
        if response.status_code >= 400:
            info = payload if isinstance(payload, dict) else {}
            raise CarrierRefused(
                response.status_code,
                str(info.get("code", "UNKNOWN")),
                str(info.get("message", response.text[:200])),
            )
        return response.status_code, payload

    # -- carrier-billing ---------------------------------------------------------------------

    def prepare(
        self,
        *,
        phone_number: str,
        reference: str,
        amount: Decimal,
        currency: str,
        description: str,
        merchant_identifier: str | None,
        sink: str,
        sink_token: str,
        sink_expires: datetime,
    ) -> dict[str, Any]:
        """preparePayment: reserve ``amount`` on the line; confirm or cancel it later."""
        charging: dict[str, Any] = {
            "chargingInformation": {
                "amount": amount,
                "currency": currency,
                "description": description,
            }
        }
        if merchant_identifier:
            charging["chargingMetaData"] = {"merchantIdentifier": merchant_identifier}
        body = {
            "amountTransaction": {
                "phoneNumber": phone_number,
                "clientCorrelator": reference,
                "paymentAmount": charging,
                "referenceCode": reference,
            },
            "sink": sink,
            "sinkCredential": _credential(sink_token, sink_expires),
        }
        _, payment = self._call(
            "POST", f"{self.api_root}/payments/prepare", body=body, correlator=reference
        )
        return _object(payment, "preparePayment")

    def confirm(self, payment_id: str, phone_number: str) -> None:
        self._call(
            "POST",
            f"{self.api_root}/payments/{payment_id}/confirm",
            body={"phoneNumber": phone_number},
        )

    def cancel(self, payment_id: str, phone_number: str) -> None:
        self._call(
            "POST",
            f"{self.api_root}/payments/{payment_id}/cancel",
            body={"phoneNumber": phone_number},
        )

    def validate(self, payment_id: str, authorization_id: str, code: str) -> None:
        self._call(
            "POST",
            f"{self.api_root}/payments/{payment_id}/validate",
            body={"authorizationId": authorization_id, "code": code},
        )

    def payment(self, payment_id: str) -> dict[str, Any]:
        _, payment = self._call("GET", f"{self.api_root}/payments/{payment_id}")
        return _object(payment, "retrievePayment")

    def find_payment(self, reference: str, since: datetime) -> dict[str, Any] | None:
        """The payment created with ``reference`` (our referenceCode) since ``since``, if any:
        how a payment whose creation went unanswered is found."""
        params = {"paymentCreationDate.gte": since.isoformat().replace("+00:00", "Z")}
        _, payments = self._call("GET", f"{self.api_root}/payments", params=params)
        for payment in payments if isinstance(payments, list) else []:
            transaction = payment.get("amountTransaction", {}) if isinstance(payment, dict) else {}
            if transaction.get("referenceCode") == reference:
                return dict(payment)
        return None

    # -- carrier-billing-refund --------------------------------------------------------------

    def refund(
        self,
        payment_id: str,
        *,
        total: bool,
        amount: Decimal,
        currency: str,
        description: str,
        reference: str,
        reason: str | None,
        sink: str,
        sink_token: str,
        sink_expires: datetime,
    ) -> dict[str, Any]:
        """createRefund: ``total`` refunds the whole payment, else ``amount`` of it."""
        refund_amount: dict[str, Any] = (
            {}
            if total
            else {
                "chargingInformation": {
                    "amount": amount,
                    "currency": currency,
                    "description": description,
                }
            }
        )
        body: dict[str, Any] = {
            "type": "total" if total else "partial",
            "amountTransaction": {
                "clientCorrelator": reference,
                "refundAmount": refund_amount,
                "referenceCode": reference,
            },
            "sink": sink,
            "sinkCredential": _credential(sink_token, sink_expires),
        }
        if reason:
            body["reason"] = reason
        _, refund = self._call(
            "POST",
            f"{self.refund_api_root}/payments/{payment_id}/refunds",
            body=body,
            correlator=reference,
        )
        return _object(refund, "createRefund")

    def refund_status(self, payment_id: str, refund_id: str) -> dict[str, Any]:
        _, refund = self._call(
            "GET", f"{self.refund_api_root}/payments/{payment_id}/refunds/{refund_id}"
        )
        return _object(refund, "retrieveRefund")

    def find_refund(self, payment_id: str, reference: str) -> dict[str, Any] | None:
        _, refunds = self._call("GET", f"{self.refund_api_root}/payments/{payment_id}/refunds")
        for refund in refunds if isinstance(refunds, list) else []:
            transaction = refund.get("amountTransaction", {}) if isinstance(refund, dict) else {}
            if transaction.get("referenceCode") == reference:
                return dict(refund)
        return None


def _credential(token: str, expires: datetime) -> dict[str, Any]:
    return {
        "credentialType": "ACCESSTOKEN",
        "accessToken": token,
        "accessTokenExpiresUtc": expires.isoformat().replace("+00:00", "Z"),
        "accessTokenType": "bearer",
    }


def _object(payload: Any, operation: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise CarrierUnreachable(f"{operation} answered without a JSON object")
    return payload
