"""What makes an ingress a site ingress (one at an edge or regional cluster, where applications
near it connect): everything it needs of the home cluster goes through the home ingress's ledger
relay (router_fn/ledger_relay.py), under the site cluster's own service-account identity.

- Ledger commands: an ordinary ``LedgerClient`` whose authorize and refund URL is the relay, so
  holds, credit leases (opened, renewed, returned) and voids are the home ledger's, exactly as
  the home ingress makes them; the site's leases are its own holds.
- Who a key is: ``RelayedCallers`` asks the relay by the key's SHA-256 (the site holds no table
  credentials); the ingress caches the answer as it caches its own lookups.

Metering needs no relay: infer reports usage to its own cluster's broker, or to the home
ingress's cluster-events endpoint, wherever the request was admitted."""

from __future__ import annotations

import uuid

from pydantic import ValidationError

from events import types
from events.sites import CallerFound, CallerLookup
from functions.apikeys import PREFIX, key_digest
from functions.errors import FunctionError, NotFound, Unauthorized, Unavailable
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
        return caller_of(self.topology, found.account_id, found.plan, countries)
