"""The ingress's synchronous calls to the ledger: authorize a hold, and refund a failed attempt.

Both are CloudEvents over HTTP, exactly what a Knative Trigger would deliver, answered with the
ledger's reply event. Ids are derived from the hold or request, so a retried call is a
redelivery the ledger dedupes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from events import types
from events.quote import Quote
from functions.cloudevent import make_event, parse_http, to_binary
from functions.errors import FunctionError, NotFound, PaymentRequired, Unavailable

SOURCE = "/tollgate/ingress"


@dataclass(frozen=True)
class Hold:
    hold_id: str
    amount: int
    available: int | None  # credits left after this hold, when the ledger says


class LedgerClient:
    def __init__(
        self, authorize_url: str, refund_url: str | None = None, *, timeout_s: float = 5.0
    ) -> None:
        self.authorize_url = authorize_url
        self.refund_url = refund_url or authorize_url
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy lookups from the environment per request

    def authorize(
        self,
        request_id: str,
        account_id: str,
        amount: int,
        *,
        ttl_seconds: int,
        tier: str,
        model: str,
        quote: Quote,
    ) -> Hold:
        """A hold, or PaymentRequired (402) with the ledger's reason when it declines."""
        data = {
            "account_id": account_id,
            "amount": amount,
            "ttl_seconds": ttl_seconds,
            "tier": tier,
            "model": model,
            "quote": quote.model_dump(),
        }
        kind, reply = self._send(self.authorize_url, types.HOLD_AUTHORIZE, data, request_id)
        if kind == types.HOLD_DECLINED:
            raise PaymentRequired(
                f"not enough credits for this request: {reply['reason']}. "
                "Top up, or lower max_tokens.",
                available=reply.get("available"),
                needed=amount,
            )
        if kind != types.HOLD_AUTHORIZED:
            raise Unavailable(f"the ledger answered authorize with {kind}")
        return Hold(reply["hold_id"], reply["amount"], reply.get("available"))

    def refund_failed(
        self, hold_id: str, account_id: str, model: str, tier: str, cluster: str, error: str
    ) -> None:
        """Return a hold whose attempt failed before any output (the attempt costs nothing)."""
        data = {
            "hold_id": hold_id,
            "account_id": account_id,
            "model": model,
            "tier": tier,
            "cluster": cluster,
            "error": {"type": "attempt_failed", "message": error[:4000]},
        }
        self._send(self.refund_url, types.INFERENCE_FAILED, data, f"{hold_id}#failed")

    def _send(
        self, url: str, event_type: str, data: dict[str, Any], event_id: str
    ) -> tuple[str, dict[str, Any]]:
        message = to_binary(make_event(event_type, SOURCE, data, id=event_id))
        try:
            response = self._session.post(
                url, headers=message.headers, data=message.body, timeout=self.timeout_s
            )
        except requests.RequestException as exc:
            raise Unavailable(f"the ledger at {url} is unreachable: {exc}") from exc
        if response.status_code == 200:
            reply = parse_http(dict(response.headers), response.content)
            return reply.type, reply.data
        message_text = _message(response)
        if response.status_code == 404:
            raise NotFound(message_text)
        if 400 <= response.status_code < 500:
            raise FunctionError(
                f"the ledger refused {event_type}: {message_text}", status=response.status_code
            )
        raise Unavailable(f"the ledger answered {response.status_code}: {message_text}")


def _message(response: requests.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]
