"""The ingress's synchronous calls to the ledger: authorize a hold, and void the hold of an
attempt that put nothing in front of the client.

Both are CloudEvents over HTTP, exactly what a Knative Trigger would deliver, answered with the
ledger's reply event. Ids are derived from the hold or request, so a retried call is a
redelivery the ledger dedupes: an authorize whose answer was lost is found again by sending it
once more under the same id."""

from __future__ import annotations

import json
from typing import TypeVar

import urllib3
from pydantic import ValidationError

from events import types
from events.fields import EventData
from events.ledger import (
    HoldAuthorize,
    HoldAuthorized,
    HoldDeclined,
    HoldRefund,
    LeaseRequest,
)
from events.quote import Quote
from functions.auth.tokens import TokenFile, TokenMissing
from functions.cloudevent import Incoming, make_event, parse_http, to_binary
from functions.errors import (
    INVALID_REQUEST,
    FunctionError,
    NotFound,
    PaymentRequired,
    Unavailable,
)
from functions.validation import describe

SOURCE = "/tollgate/ingress"
M = TypeVar("M", bound=EventData)


class BadReply(Unavailable):
    """The ledger answered, but not with the reply the command has: asking again will not help."""


class LedgerClient:
    def __init__(
        self,
        authorize_url: str,
        refund_url: str | None,
        *,
        authorize_token: TokenFile,
        refund_token: TokenFile,
        timeout_s: float = 5.0,
    ) -> None:
        """The tokens are the ingress's identity for each function's audience."""
        self.authorize_url = authorize_url
        self.refund_url = refund_url or authorize_url
        # One process serving both (tollgate up's ledger) has one audience: either token does.
        self._tokens = {self.refund_url: refund_token, self.authorize_url: authorize_token}
        self.timeout_s = timeout_s
        # urllib3 itself, kept alive (as the ingress calls infer): a per-request hold's
        # authorize is on the request path, and requests' per-call preparation was about half
        # of sending one event. No retries here: the callers decide (an owed release, a void).
        self._pool = urllib3.PoolManager(
            maxsize=32, retries=False, timeout=urllib3.Timeout(timeout_s)
        )

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
    ) -> HoldAuthorized:
        """A hold, or PaymentRequired (402) with the ledger's reason when it declines."""
        command = HoldAuthorize(
            account_id=account_id,
            amount=amount,
            ttl_seconds=ttl_seconds,
            tier=tier,
            model=model,
            quote=quote,
        )
        return self.hold(request_id, command)

    def hold(self, event_id: str, command: HoldAuthorize) -> HoldAuthorized:
        """Send one authorize command under ``event_id`` (the same id finds the same hold)."""
        amount = command.amount
        reply = self._send(self.authorize_url, types.HOLD_AUTHORIZE, command, event_id)
        if reply.type == types.HOLD_DECLINED:
            declined = _parse(HoldDeclined, reply)
            raise PaymentRequired(
                f"not enough credits for this request: {declined.reason}. "
                "Top up, or lower max_tokens.",
                available=declined.available,
                needed=amount,
            )
        if reply.type != types.HOLD_AUTHORIZED:
            raise BadReply(f"the ledger answered authorize with {reply.type}")
        return _parse(HoldAuthorized, reply)

    def void(self, event_id: str, hold_id: str, request: LeaseRequest | None = None) -> None:
        """Void an open hold, or return a settled hold's whole capture: its attempt put nothing
        in front of the client, so it costs nothing (``io.tollgate.hold.refund.v1``). With
        ``request``: void that one request of a lease."""
        self.refund(event_id, HoldRefund(hold_id=hold_id, request=request))

    def refund(self, event_id: str, command: HoldRefund) -> None:
        """Send one refund command (a void, a lease request's void, a lease's return)."""
        self._send(self.refund_url, types.HOLD_REFUND, command, event_id)

    def send(self, event_type: str, data: EventData, event_id: str) -> Incoming:
        """Any command, answered with its reply event: refunds to the refund function, the rest
        to authorize (a site ingress's client: both to the home ingress's ledger relay)."""
        url = self.refund_url if event_type == types.HOLD_REFUND else self.authorize_url
        return self._send(url, event_type, data, event_id)

    def _send(self, url: str, event_type: str, data: EventData, event_id: str) -> Incoming:
        # Unset options stay off the wire: a ledger from before them takes the command too.
        payload = data.model_dump(mode="json", exclude_none=True)
        message = to_binary(make_event(event_type, SOURCE, payload, id=event_id))
        try:
            headers = {**message.headers, **self._tokens[url].bearer()}
            response = self._pool.request("POST", url, headers=headers, body=message.body)
        except TokenMissing as exc:
            raise Unavailable(f"the ingress has no token for the ledger at {url}: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable(f"the ledger at {url} is unreachable: {exc}") from exc
        if response.status == 200:
            return parse_http(dict(response.headers), response.data)
        message_text = _message(response.data)
        if response.status == 404:
            raise NotFound(message_text)
        if 400 <= response.status < 500:
            raise FunctionError(
                f"the ledger refused {event_type}: {message_text}",
                status=response.status,
                error_type=INVALID_REQUEST,
            )
        raise Unavailable(f"the ledger answered {response.status}: {message_text}")


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:300]


def _parse(model: type[M], reply: Incoming) -> M:
    try:
        return model.model_validate(reply.data)
    except ValidationError as exc:
        raise BadReply(f"the ledger answered an invalid {reply.type}: {describe(exc)}") from exc
