"""What makes an ingress a site ingress (one at an edge or regional cluster, where applications
near it connect): everything it needs of the home cluster goes through the home ingress's ledger
relay (router_fn/ledger_relay.py), under the site cluster's own service-account identity.

- Ledger commands: an ordinary ``LedgerClient`` whose authorize and refund URL is the relay, so
  holds, credit leases (opened, renewed, returned) and voids are the home ledger's, exactly as
  the home ingress makes them; the site's leases are its own holds.
- Who a key is: ``RelayedCallers`` asks the relay by the key's SHA-256 (the site holds no table
  credentials); the ingress caches the answer as it caches its own lookups.
- Latency-SLA observations of the requests it served: ``relayed_observation`` records them in
  the home table, where the monthly evaluation counts them with the home ingress's.
- Rate limits: ``RelayedShares`` takes the site's shares of a key's limits from the home table's
  counters, where the home replicas and every other site take theirs, so a limit is one limit
  however many sites there are (a pod-local counter would give each site the whole limit).

Metering needs no relay: infer reports usage to its own cluster's broker, or to the home
ingress's cluster-events endpoint, wherever the request was admitted."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping

from pydantic import ValidationError

from events import types
from events.sites import CallerFound, CallerLookup, RatesHeld, RatesHold, SlaObserved
from functions.apikeys import PREFIX, ApiKey, key_digest
from functions.errors import FunctionError, NotFound, Unauthorized, Unavailable
from functions.rateshares import Held
from functions.sla import Observation
from functions.store import StoreUnavailable
from functions.validation import describe
from router_fn.ingress import Caller, caller_of
from router_fn.ledger_client import LedgerClient
from router_fn.topology import Topology


class RelayedCallers:
    def __init__(self, relay: LedgerClient, topology: Topology) -> None:
        self.relay = relay
        self.topology = topology

    def __call__(self, key: str) -> Caller:
        """The key's caller; Unauthorized (401) for a key the home does not know or revoked,
        Unavailable (503) when the home cannot be asked."""
        if not key.startswith(PREFIX):
            raise Unauthorized("invalid API key: Tollgate keys start with tg_")
        asked = CallerLookup(key_sha256=key_digest(key))
        try:
            reply = self.relay.send(types.CALLER_LOOKUP, asked, f"lookup-{uuid.uuid4().hex}")
        except NotFound as exc:
            raise Unauthorized("invalid or revoked API key") from exc
        except Unavailable:
            raise
        except FunctionError as exc:  # the relay refused this site: not the client's fault
            raise Unavailable(f"this site cannot look up keys at home: {exc.message}") from exc
        try:
            found = CallerFound.model_validate(reply.data)
        except ValidationError as exc:
            raise Unavailable(f"the home answered an invalid caller: {describe(exc)}") from exc
        countries = None if found.roaming_countries is None else frozenset(found.roaming_countries)
        holder = ApiKey(found.account_id, found.key_id, found.rate_limits)
        return caller_of(self.topology, found.plan, countries, holder)


def relayed_observation(relay: LedgerClient) -> Callable[[str, str, Observation], object]:
    """Record an SLA observation in the home table through the relay (put-if-absent by request
    id there, so a retry counts once); StoreUnavailable while the home cannot take it."""

    def record(account_id: str, period: str, observation: Observation) -> object:
        command = SlaObserved(
            account_id=account_id,
            period=period,
            request_id=observation.request_id,
            budget_ms=observation.budget_ms,
            ttft_ms=observation.ttft_ms,
            cluster=observation.cluster,
            model=observation.model,
            at=observation.at,
        )
        try:
            return relay.send(types.SLA_OBSERVED, command, f"sla-{observation.request_id}")
        except Unavailable as exc:
            raise StoreUnavailable(exc.message) from exc

    return record


class RelayedShares:
    """A site replica's rate-limit counters (router_fn/ratelimit.py ``Counters``): the home
    table's, through the relay. Whatever keeps the home from answering (unreachable, refused,
    an invalid answer) is ``StoreUnavailable``, which the rate limiter fails open on, as it does
    when a home replica cannot reach the table."""

    def __init__(self, relay: LedgerClient, replica: str | None = None) -> None:
        self.relay = relay
        self.replica = replica or uuid.uuid4().hex

    def hold(
        self,
        subject: str,
        sk: str,
        targets: Mapping[str, int],
        limits: Mapping[str, int],
        until: float,
    ) -> Held:
        try:
            command = RatesHold.model_validate(
                {
                    "replica": self.replica,
                    "subject": subject,
                    "sk": sk,
                    "targets": dict(targets),
                    "limits": dict(limits),
                    "until": until,
                }
            )
            reply = self.relay.send(types.RATES_HOLD, command, f"rates-{uuid.uuid4().hex}")
            held = RatesHeld.model_validate(reply.data)
        except ValidationError as exc:
            raise StoreUnavailable(f"rate shares not relayed: {describe(exc)}") from exc
        except FunctionError as exc:
            raise StoreUnavailable(f"the home's rate-limit counters: {exc.message}") from exc
        return Held(held.mine, held.total)
