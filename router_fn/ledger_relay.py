"""The home ingress's ledger relay: how an ingress at an edge or regional site reaches the home
ledger, which stays cluster-local.

``POST /sites/ledger`` takes one CloudEvent, binary or structured, whose bearer is a
service-account token of a site cluster (checked against that cluster's issuer, template
``clusters[].serviceAccountIssuer``, for this endpoint's audience, exactly as the cluster-events
endpoint checks remote infer); the sink's event policy (infra/template/policies.py) lets only
the site ingresses' identity send, and only:

- ``hold.authorize`` (a hold, or a credit lease opened, topped up or extended): passed to the
  authorize function, its reply (``hold.authorized`` / ``hold.declined``) answered back;
- ``hold.refund`` as a void (a hold, one request of a lease, a lease's return): passed to the
  refund function; a refund of settled credits (``amount``, ``refund_id``) is an operator's act,
  refused here (403);
- ``caller.lookup``: an API key's account, plan and roaming countries from the home table, by the
  key's SHA-256 (the site holds no table credentials);
- ``sla.observed``: the latency-SLA observation of a request the site served, recorded in the
  home table with the home ingress's (put-if-absent by request id: a retry counts once);
- ``rates.hold``: a site replica's rate-limit share of a key, written in the home table's
  counters (functions/rateshares.py) as the home replicas' are, answered ``rates.held``.

The relay forwards under the home ingress's own identity, with the event's id, so a site's retry
is a redelivery the ledger dedupes. Answers the ledger's reply (200), or its refusal with the
ledger's status; 401 unknown sender; 403 not allowed; 400 malformed; nothing reaches the ledger
before the sender is known and allowed. Captures need no relay: infer reports usage through the
broker (its own cluster's, or the cluster-events endpoint), wherever the request was admitted."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from flask import Blueprint, Response, request

from events import types
from events.ledger import HoldAuthorize, HoldRefund
from events.sites import CallerFound, CallerLookup, RatesHeld, RatesHold, SlaObserved, SlaRecorded
from functions.accounts import read_profile, roaming_countries
from functions.apikeys import ApiKeys
from functions.auth.oidc import Identity
from functions.auth.policy import SenderPolicy
from functions.cloudevent import Incoming, make_event, to_binary
from functions.errors import Forbidden, NotFound, Unauthorized, Unavailable
from functions.rateshares import RUNNING_SK, RateShares
from functions.sla import Observation, record
from functions.store import Contended, Store, StoreUnavailable
from functions.validation import validate
from router_fn.ledger_client import SOURCE, LedgerClient
from router_fn.remote_senders import RemoteIssuer, remote_event

PATH = "/sites/ledger"
# A site's running slots are held at most this long per write (its replicas renew them sooner):
# a site cannot keep slots past its death by asking for a far ``until``.
MAX_RUNNING_HOLD_S = 60


def ledger_relay_blueprint(
    issuers: Sequence[RemoteIssuer],
    policy: SenderPolicy,
    ledger: LedgerClient,
    store: Store,
    *,
    clock: Callable[[], float] = time.time,
) -> Blueprint:
    """``issuers``: those of the clusters that run a site ingress (no other cluster's workloads
    may reach the ledger); ``ledger``: the home ingress's own client of it."""
    blueprint = Blueprint("ledger_relay", __name__)
    keys = ApiKeys(store)

    def lookup(event: Incoming) -> CallerFound:
        asked = validate(CallerLookup, event.data)
        try:
            key = keys.resolve_digest(asked.key_sha256)
        except Unauthorized as exc:  # the site answers its client 401; to the site it is 404
            raise NotFound(exc.message) from exc
        profile = read_profile(store, key.account_id) or {}
        plan = profile.get("plan")
        countries = roaming_countries(store, key.account_id)
        return CallerFound(
            account_id=key.account_id,
            key_id=key.key_id,
            plan=None if plan is None else str(plan)[:256],
            roaming_countries=None if countries is None else tuple(sorted(countries)),
            rate_limits=key.rate_limits,
        )

    def observe(event: Incoming) -> bool:
        seen = validate(SlaObserved, event.data)
        observation = Observation(
            request_id=seen.request_id,
            budget_ms=seen.budget_ms,
            ttft_ms=seen.ttft_ms,
            cluster=seen.cluster,
            model=seen.model,
            at=seen.at,
        )
        return record(store, seen.account_id, seen.period, observation)

    def hold_rates(identity: Identity, event: Incoming) -> RatesHeld:
        """Write the site replica's share as ``site:<issuer>:<subject>:<replica>`` (the verified
        sender's, so no site can overwrite another's entries or the home replicas' uuids).

        Limits are the site's (what it learned of the key through ``caller.lookup``), checked
        in shape and size by ``RatesHold``, not looked up again: the hold names only the key id,
        and the key's override is filed under its account, so a lookup here would need the
        account and the plans on every write. What home does enforce is what a site could
        otherwise abuse without knowing any key: its entry is its own, a window share ends
        with its window (``until`` clamped to the window the ``sk`` names) and running slots
        within ``MAX_RUNNING_HOLD_S``. A site that lied about a limit is an authenticated,
        allow-listed cluster of ours: its shares stay within the limit it states minus the
        other holders', and its entries are named after it in the table."""
        asked = validate(RatesHold, event.data)
        now = clock()
        if asked.sk == RUNNING_SK:
            until = min(asked.until, now + MAX_RUNNING_HOLD_S)
        else:
            _, length, index = asked.sk.split("#")
            until = min(asked.until, (int(index) + 1) * int(length))
        replica = f"site:{identity.issuer}:{identity.subject}:{asked.replica}"
        shares = RateShares(store, replica, clock=clock)
        try:
            held = shares.hold(asked.subject, asked.sk, asked.targets, asked.limits, until)
        except (Contended, StoreUnavailable) as exc:
            raise Unavailable(f"the rate-limit counters are not reachable: {exc}") from exc
        return RatesHeld.model_validate({"mine": dict(held.mine), "total": dict(held.total)})

    @blueprint.post(PATH)
    def relay() -> Response:
        identity, _, event = remote_event(
            issuers, policy, PATH, dict(request.headers), request.get_data()
        )
        if event.type == types.CALLER_LOOKUP:
            found = lookup(event)
            reply = make_event(types.CALLER_FOUND, SOURCE, found.model_dump(mode="json"))
        elif event.type == types.SLA_OBSERVED:
            recorded = SlaRecorded(recorded=observe(event))
            reply = make_event(types.SLA_RECORDED, SOURCE, recorded.model_dump(mode="json"))
        elif event.type == types.RATES_HOLD:
            held = hold_rates(identity, event)
            reply = make_event(types.RATES_HELD, SOURCE, held.model_dump(mode="json"))
        else:
            answered = ledger.send(event.type, _command(event), event.id)
            reply = make_event(answered.type, answered.source, answered.data, id=answered.id)
        message = to_binary(reply)
        return Response(message.body, status=200, headers=message.headers)

    return blueprint


def _command(event: Incoming) -> HoldAuthorize | HoldRefund:
    if event.type == types.HOLD_AUTHORIZE:
        return validate(HoldAuthorize, event.data)
    if event.type != types.HOLD_REFUND:  # the policy admits nothing else; never forward it
        raise Forbidden(f"{PATH} relays no {event.type}")
    command = validate(HoldRefund, event.data)
    if command.amount is not None or command.refund_id is not None:
        raise Forbidden(
            "a site ingress may void holds and return leases; refunding settled credits is an "
            "operator's act (ledger-admin)"
        )
    return command
